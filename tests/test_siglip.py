"""The sigmoid loss: a direct formula, open_clip's SigLipLoss, matching by attribute keys, and two gloo ranks."""

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from open_clip.loss import SigLipLoss

from dualtoken_lite.losses.siglip import INIT_LOGIT_BIAS, INIT_LOGIT_SCALE, SigmoidLoss, keys_match

WORLD, PER_RANK, DIM = 2, 5, 8
PROMPTED = torch.tensor([False, False, False, True, True] * WORLD)  # per rank: three captions, two keyed prompts


def features(n: int = 2 * PER_RANK, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(n, DIM, generator=g), dim=-1)
    y = F.normalize(torch.randn(n, DIM, generator=g), dim=-1)
    image_keys = torch.randint(0, 3, (n, 4), generator=g)
    text_keys = torch.where(torch.rand(n, 4, generator=g) < 0.6, -1, image_keys)  # partial captions of each image
    return x, y, image_keys, text_keys


def direct(x, y, t, b, match, left_out=None) -> float:
    """-1/I sum_i sum_j log sigmoid(z_ij (t x_i.y_j + b)), written out pair by pair (skipping left-out pairs)."""
    total = 0.0
    for i in range(len(x)):
        for j in range(len(y)):
            if left_out is not None and left_out[i][j]:
                continue
            z = 1.0 if match[i][j] else -1.0
            logit = t * float(x[i] @ y[j]) + b
            total += math.log(1 / (1 + math.exp(-z * logit)))
    return -total / len(x)


def test_siglip_initialisation_is_the_papers():
    assert math.exp(INIT_LOGIT_SCALE) == pytest.approx(10.0) and INIT_LOGIT_BIAS == -10.0


@pytest.mark.parametrize("matches", [None, "positive", "ignore"])
def test_loss_equals_the_direct_formula(matches):
    x, y, ik, tk = features(6)
    t, b = torch.tensor(7.0), torch.tensor(-3.0)
    own = torch.eye(6, dtype=torch.bool)
    if matches is None:  # SigLIP: only the own caption is a positive
        want = direct(x, y, 7.0, -3.0, own.tolist())
        got = SigmoidLoss()(x, y, t, b)
    else:
        others = keys_match(ik, tk) & ~own
        assert others.any()  # the batch has captions true of images other than their own
        if matches == "positive":
            want = direct(x, y, 7.0, -3.0, (own | others).tolist())
        else:
            want = direct(x, y, 7.0, -3.0, own.tolist(), left_out=others.tolist())
        got = SigmoidLoss(matches=matches)(x, y, t, b, ik, tk)
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_without_keys_equals_open_clip_siglip_loss():
    x, y, _, _ = features(7)
    t, b = torch.tensor(math.log(10)).exp(), torch.tensor(-10.0)
    torch.testing.assert_close(SigmoidLoss()(x, y, t, b), SigLipLoss()(x, y, t, b))


def test_keyed_prompts_are_decided_by_the_keys_alone():
    x, y, ik, tk = features(6)
    t, b = torch.tensor(7.0), torch.tensor(-3.0)
    own = torch.eye(6, dtype=torch.bool)
    keyed = torch.tensor([False, False, False, False, True, True])  # texts 4 and 5: prompts, not captions
    true = keys_match(ik, tk)
    assert (true & ~own)[:, 4:].any() and (~true)[:, 4:].any()  # each kind of prompt pair occurs
    others = true & ~own & ~keyed  # captions true of other images: left out ("ignore")
    match = torch.where(keyed, true, own)  # a prompt: + where true of the image, - where false, its "owner" aside
    want = direct(x, y, 7.0, -3.0, match.tolist(), left_out=others.tolist())
    got = SigmoidLoss(matches="ignore")(x, y, t, b, ik, tk, keyed=keyed)
    assert got.item() == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError, match="keyed texts need"):
        SigmoidLoss()(x, y, t, b, keyed=keyed)


def test_keys_match_a_caption_to_every_image_it_is_true_of():
    images = torch.tensor([[4, 0, 1], [4, 2, 1], [3, 0, 1]])  # e.g. (shape, colour, fill)
    texts = torch.tensor([[4, -1, -1], [-1, 0, -1], [4, 2, 1]])  # "a star", "a red shape", the full second caption
    assert keys_match(images, texts).tolist() == [[True, True, False], [True, False, True], [False, True, False]]


def test_partial_captions_make_in_batch_positives_not_negatives():
    x, y, ik, tk = features(6)
    tk[:] = -1  # six captions that name nothing: each is true of every image
    t, b = torch.tensor(10.0), torch.tensor(-10.0)
    all_true = direct(x, y, 10.0, -10.0, [[True] * 6] * 6)
    assert SigmoidLoss()(x, y, t, b, ik, tk).item() == pytest.approx(all_true, rel=1e-5)


def worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        x, y, ik, tk = features()
        part = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        results = {}
        for name in ("diagonal", "keys", "ignore", "prompted", "open_clip"):
            xs, ys = x[part].clone().requires_grad_(), y[part].clone().requires_grad_()
            t, b = torch.tensor(10.0, requires_grad=True), torch.tensor(-10.0, requires_grad=True)
            if name == "open_clip":
                loss = SigLipLoss(rank=rank, world_size=WORLD)(xs, ys, t, b)
            else:
                keys = (ik[part], tk[part]) if name != "diagonal" else (None, None)
                keyed = PROMPTED[part] if name == "prompted" else None
                loss = SigmoidLoss(rank, WORLD, "positive" if name == "keys" else "ignore")(xs, ys, t, b, *keys,
                                                                                            keyed=keyed)
            loss.backward()
            results[name] = {"loss": loss.detach(), "x": xs.grad, "y": ys.grad, "t": t.grad, "b": b.grad}
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_give_the_single_process_loss_and_gradients(tmp_path):
    mp.spawn(worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    x, y, ik, tk = features()
    for name in ("diagonal", "keys", "ignore", "prompted", "open_clip"):
        xs, ys = x.clone().requires_grad_(), y.clone().requires_grad_()
        t, b = torch.tensor(10.0, requires_grad=True), torch.tensor(-10.0, requires_grad=True)
        keys = (ik, tk) if name in ("keys", "ignore", "prompted") else (None, None)
        keyed = PROMPTED if name == "prompted" else None
        single = SigmoidLoss(matches="positive" if name != "ignore" and name != "prompted" else "ignore")(
            xs, ys, t, b, *keys, keyed=keyed)
        (single * WORLD).backward()  # each rank's loss is over its own images: the ranks' losses sum to WORLD x this
        got = [r[name] for r in ranks]
        torch.testing.assert_close(sum(r["loss"] for r in got) / WORLD, single.detach())
        torch.testing.assert_close(torch.cat([r["x"] for r in got]), xs.grad)
        torch.testing.assert_close(torch.cat([r["y"] for r in got]), ys.grad)  # gradients came back around the ring
        torch.testing.assert_close(sum(r["t"] for r in got), t.grad)
        torch.testing.assert_close(sum(r["b"] for r in got), b.grad)
    for key in ("loss", "x", "y"):  # without keys, ours is open_clip's on every rank
        for r in ranks:
            torch.testing.assert_close(r["diagonal"][key], r["open_clip"][key])
