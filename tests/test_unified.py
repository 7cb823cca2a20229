"""The tiny unified model: token caches, the readers, the generator, prompts and resume.

Small on purpose (tiny widths, a handful of images, a few steps): the whole file runs in well under a minute on one
CPU thread. The shipped tokenizer (data/tokenizer) makes the codes, as in the real runs.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from dualtoken_lite.model.dualtoken import DualToken
from dualtoken_lite.model.pretrained import CheckpointError
from dualtoken_lite.model.token_layout import from_lm_sequence
from dualtoken_lite.settings import UserError, run_cli
from dualtoken_lite.tinyworld.drawing import (
    CLASSES,
    HUES,
    TinyWorldConfig,
    hue_bin,
    light_figure,
    make_sample,
)
from dualtoken_lite.tinyworld.drawing import to_tensor as images_to_tensor
from dualtoken_lite.tinyworld.paths import UNIFIED_TOKENIZER_DIR
from dualtoken_lite.unified import generator_training, prompts, reader_training
from dualtoken_lite.unified.ar_generator import ARGenerator, GeneratorConfig
from dualtoken_lite.unified.embedding import CodeStackEmbedding, slot_offsets, slot_sizes
from dualtoken_lite.unified.fit import LoopConfig
from dualtoken_lite.unified.questions import QUESTION_NAMES, describe
from dualtoken_lite.unified.reader import Reader, ReaderConfig
from dualtoken_lite.unified.rotary import generator_angles, grid_angles, rotate
from dualtoken_lite.unified.token_cache import cache_path, encode_split, load_or_encode, read_token_set
from dualtoken_lite.unified.weights import load_model, save_model

TINY_READER = dict(width=16, layers=1, heads=2, dropout=0.0)
TINY_GENERATOR = dict(width=16, spatial_layers=1, depth_layers=1, heads=2, depth_positions=4, pixel_depths=3,
                      semantic_depths=2)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    return DualToken.from_pretrained(UNIFIED_TOKENIZER_DIR).eval()


@pytest.fixture(scope="module")
def cache(tmp_path_factory, tokenizer):
    """A tiny token cache folder: train 0..15 and eval 0..7."""
    folder = tmp_path_factory.mktemp("cache")
    load_or_encode(tokenizer, UNIFIED_TOKENIZER_DIR, "train", 0, 16, folder, progress=False)
    load_or_encode(tokenizer, UNIFIED_TOKENIZER_DIR, "eval", 0, 8, folder, progress=False)
    return folder


# ------------------------------------------------------------------------------------------------ tokens and labels
def test_token_cache_equals_model_encode(tokenizer, tmp_path):
    """The cached ids are exactly model.encode's codes in the LM layout, and the labels are the descriptions'."""
    made = load_or_encode(tokenizer, UNIFIED_TOKENIZER_DIR, "eval", 3, 5, tmp_path, progress=False)
    again = load_or_encode(tokenizer, UNIFIED_TOKENIZER_DIR, "eval", 3, 5, tmp_path, progress=False)  # read from the file
    assert cache_path(tmp_path, "eval", 3, 5).is_file()
    samples = [make_sample(i, "eval") for i in range(3, 8)]
    with torch.no_grad():
        pixel, semantic = tokenizer.encode(images_to_tensor(np.stack([s[0] for s in samples])))
    for data in (made, again):
        got_pixel, got_semantic = from_lm_sequence(data.tokens, data.layout)
        assert torch.equal(got_pixel, pixel) and torch.equal(got_semantic, semantic)
        assert data.labels.tolist() == [describe(s[1]) for s in samples]
        assert data.indices.tolist() == [3, 4, 5, 6, 7] and data.split == "eval"
    assert data.stacks().shape == (5, 64, 12)


def test_a_cache_from_another_tokenizer_is_encoded_again(tokenizer, tmp_path):
    data = encode_split(tokenizer, "eval", 0, 2, progress=False)
    from dualtoken_lite.unified.token_cache import save_token_set

    stale = data.tokens.clone()
    stale[:, 0] = (stale[:, 0] + 1) % 512
    save_token_set(type(data)(stale, data.labels, data.indices, "eval", data.layout), cache_path(tmp_path, "eval", 0, 2),
                   "another-tokenizer")
    assert torch.equal(load_or_encode(tokenizer, UNIFIED_TOKENIZER_DIR, "eval", 0, 2, tmp_path, progress=False).tokens,
                       data.tokens)
    assert read_token_set(cache_path(tmp_path, "eval", 0, 2))[1]["tokenizer"] != "another-tokenizer"


@pytest.mark.parametrize("rgb, name", [((0.9, 0.1, 0.1), "red"), ((0.9, 0.85, 0.1), "yellow"),
                                       ((0.1, 0.8, 0.2), "green"), ((0.1, 0.8, 0.8), "cyan"),
                                       ((0.2, 0.2, 0.9), "blue"), ((0.8, 0.1, 0.8), "magenta"),
                                       ((0.5, 0.55, 0.5), "grey")])
def test_hue_bins_name_the_colour_and_survive_lightening(rgb, name):
    assert hue_bin(np.array(rgb)) == name
    ground, figure = light_figure(np.zeros(3), np.array(rgb), TinyWorldConfig())
    if name != "grey":  # lightening keeps the hue (it halves the chroma, so grey is judged before it)
        assert hue_bin(figure) == name


def test_descriptions_carry_every_answer():
    hues = {make_sample(i, "train")[1]["hue"] for i in range(300)}
    assert hues == set(HUES)
    assert len(describe(make_sample(0, "eval")[1])) == len(QUESTION_NAMES)


# ------------------------------------------------------------------------------------------------ embedding and reader
def test_code_embeddings_sum_to_the_quantized_vector(tokenizer, cache):
    """Started from the codebooks, a branch's slot embeddings sum to the tokenizer's quantized vector."""
    data, _ = read_token_set(cache_path(cache, "eval", 0, 8))
    embed = CodeStackEmbedding(data.layout, "both", 16, 32)
    embed.init_from_tokenizer(tokenizer)
    codes = embed.local_codes(data.stacks())  # (B, N, 12)
    vectors = embed.table(codes + embed.base)  # (B, N, 12, 32)
    pixel, semantic = from_lm_sequence(data.tokens, data.layout)
    torch.testing.assert_close(vectors[..., :8, :].sum(-2), tokenizer.pixel_quantizer.decode(pixel).flatten(1, 2))
    torch.testing.assert_close(vectors[..., 8:, :].sum(-2), tokenizer.semantic_quantizer.decode(semantic).flatten(1, 2))


@pytest.mark.parametrize("variant", ["semantic", "pixel", "both"])
def test_reader_answers_all_questions_as_it_answers_each_alone(cache, variant):
    data, _ = read_token_set(cache_path(cache, "eval", 0, 8))
    reader = Reader(ReaderConfig(variant=variant, **TINY_READER), data.layout).eval()
    together = reader(data.stacks())  # (B, Q, A)
    for q in range(len(QUESTION_NAMES)):
        torch.testing.assert_close(reader(data.stacks(), [q])[:, 0], together[:, q], rtol=1e-5, atol=1e-5)
    # a variant reads only its own codes: changing the other branch's ids changes nothing
    other = data.stacks().clone()
    if variant == "semantic":
        other[..., :8] = (other[..., :8] + 1) % 512
    elif variant == "pixel":
        other[..., 8:] = 512 + (other[..., 8:] - 512 + 1) % 512
    if variant != "both":
        torch.testing.assert_close(reader(other), together)


def test_reader_pipeline_never_mixes_train_and_eval(tokenizer, cache):
    cfg = reader_training.ReaderTrainConfig(cache_dir=str(cache), train_count=16, eval_count=8)
    train, held = reader_training.reader_data(cfg, tokenizer)
    assert train.split == "train" and held.split == "eval"
    assert train.indices.tolist() == list(range(16)) and held.indices.tolist() == list(range(8))
    with pytest.raises(UserError, match="eval split"):
        reader_training.check_disjoint(train, train)
    leaked = type(held)(torch.cat([held.tokens, train.tokens[:1]]), held.labels, held.indices, "eval", held.layout)
    with pytest.raises(UserError, match="overlap"):
        reader_training.check_disjoint(train, leaked)


# ------------------------------------------------------------------------------------------------ generator
@pytest.mark.parametrize("variant", ["pixel", "both"])
@pytest.mark.parametrize("top_k, guidance", [(None, 1.0), (3, 2.0)])
def test_sampling_is_deterministic_and_emits_only_valid_ids(cache, variant, top_k, guidance):
    data, _ = read_token_set(cache_path(cache, "eval", 0, 8))
    torch.manual_seed(0)
    gen = ARGenerator(GeneratorConfig(variant=variant, **TINY_GENERATOR), data.layout).eval()
    classes = torch.tensor([0, 4, 7])

    def draw(seed):
        return gen.sample(classes, temperature=1.0, top_k=top_k, guidance=guidance,
                          rng=torch.Generator().manual_seed(seed))

    a, b, c = draw(1), draw(1), draw(2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert gen.slots == ([0, 1, 2] if variant == "pixel" else [0, 1, 2, 8, 9])  # pixel depths 1-3 (+ semantic 1-2)
    assert a.shape == (3, 64, len(gen.slots))
    low = slot_offsets(data.layout)[gen.slots]
    size = torch.tensor([slot_sizes(data.layout)[s] for s in gen.slots])
    assert bool(((a >= low) & (a < low + size)).all()), "every id lies in its own slot's range"
    assert len(a[..., 0].unique()) > 1, "random weights spread over many codes: a real range check"
    prompts.stacks_to_pixel_codes(a, gen)  # the layout's own check of every id


@pytest.mark.parametrize("variant,rotary", [("pixel", False), ("both", False), ("both", True)])
def test_cached_sampling_agrees_with_the_full_forward_pass(cache, variant, rotary):
    """Greedy sampling with key/value caches picks, at every slot, the argmax of the teacher-forced full pass."""
    data, _ = read_token_set(cache_path(cache, "eval", 0, 8))
    torch.manual_seed(1)
    gen = ARGenerator(GeneratorConfig(variant=variant, rotary=rotary, **TINY_GENERATOR), data.layout).eval()
    classes = torch.tensor([2, 5])
    stacks = gen.sample(classes, temperature=0.0)  # (B, N, S)
    full = torch.zeros(2, 64, 12, dtype=torch.long)
    full[..., gen.slots] = stacks
    with torch.no_grad():
        h = gen.forward_spatial(full[:, :-1], classes)  # (B, N, C)
        codes = gen.embed.local_codes(full)  # (B, N, S)
        out = gen.forward_depth(h.flatten(0, 1), codes.flatten(0, 1)[:, :-1])  # (B N, S, C)
    greedy = torch.stack([logits.argmax(-1) for logits in gen.slot_logits(out)], 1)  # (B N, S)
    assert torch.equal(greedy, codes.flatten(0, 1))


def test_heldout_loss_is_the_exact_loss_over_every_code(cache):
    """generator_training.heldout_loss: every position, the class given (no dropout), the mean NLL of all modelled
    codes; the same twice, and the model's training flag is left as it was."""
    data, _ = read_token_set(cache_path(cache, "eval", 0, 8))
    torch.manual_seed(3)
    gen = ARGenerator(GeneratorConfig(variant="both", **{**TINY_GENERATOR, "class_dropout": 0.5}), data.layout)
    gen.train()
    first, second = generator_training.heldout_loss(gen, data), generator_training.heldout_loss(gen, data)
    assert gen.training and first == second
    stacks, classes = data.stacks(), data.labels[:, 0]
    with torch.no_grad():
        h = gen.forward_spatial(stacks[:, :-1], classes)  # (B, N, C)
        codes = gen.embed.local_codes(stacks).flatten(0, 1)  # (B N, S)
        logits = gen.slot_logits(gen.forward_depth(h.flatten(0, 1), codes[:, :-1]))  # S x (B N, K)
    by_hand = torch.stack([F.cross_entropy(z, codes[:, j]) for j, z in enumerate(logits)]).mean()
    assert first["loss"] == pytest.approx(float(by_hand), abs=1e-4)


def test_a_model_folder_lacking_a_config_field_is_refused(cache, tmp_path):
    """A unified model folder loads exactly as saved; a config.json missing a field names it instead of guessing."""
    data, _ = read_token_set(cache_path(cache, "eval", 0, 8))
    torch.manual_seed(0)
    gen = ARGenerator(GeneratorConfig(variant="both", **TINY_GENERATOR), data.layout).eval()
    save_model(gen, tmp_path / "m")
    stacks, classes = data.stacks(), data.labels[:, 0]
    assert torch.equal(gen.loss(stacks, classes)[0], load_model(tmp_path / "m", kind="generator").loss(stacks, classes)[0])
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    del config["config"]["rotary"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"lacks the field\(s\) \['config.rotary'\]"):
        load_model(tmp_path / "m", kind="generator")


def test_rotary_scores_depend_only_on_the_grid_offset():
    """A query turned for cell a and a key turned for cell b score the same as for cells a + d and b + d."""
    torch.manual_seed(0)
    q, k = torch.randn(16), torch.randn(16)

    def score(query_cell, key_cell):
        qa = grid_angles(torch.tensor([query_cell[0]]), torch.tensor([query_cell[1]]), 16)
        ka = grid_angles(torch.tensor([key_cell[0]]), torch.tensor([key_cell[1]]), 16)
        return float((rotate(q[None], qa) * rotate(k[None], ka)).sum())

    assert score((3, 4), (2, 4)) == pytest.approx(score((6, 1), (5, 1)), abs=1e-5)  # one row up, anywhere
    assert score((3, 4), (2, 4)) != pytest.approx(score((3, 4), (3, 3)), abs=1e-3)  # up differs from left
    query, key = generator_angles(8, 16)  # input t predicts cell t and holds cell t - 1
    assert torch.equal(key[1:], query[:-1]) and query.shape == (64, 8)
    assert torch.allclose(rotate(q[None], query[:1]), q[None])  # cell (0, 0): no turn


def test_a_briefly_trained_generator_learns_and_decodes_to_images(tokenizer, cache):
    data, _ = read_token_set(cache_path(cache, "train", 0, 16))
    torch.manual_seed(0)
    gen = ARGenerator(GeneratorConfig(variant="both", **TINY_GENERATOR), data.layout)
    gen.embed.init_from_tokenizer(tokenizer)
    optimizer = torch.optim.AdamW(gen.parameters(), lr=3e-3)
    stacks, classes, rng = data.stacks()[:4], data.labels[:4, 0], torch.Generator().manual_seed(0)
    losses = []
    for _ in range(12):
        loss, _ = gen.loss(stacks, classes, rng)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, f"the loss should fall on 4 images: {losses}"
    gen.eval()
    out, images = prompts.generate_images(gen, tokenizer, torch.tensor([1, 4]), prompts.SamplingConfig(top_k=8))
    assert out.shape == (2, 64, 5) and images.shape == (2, 64, 64, 3) and images.dtype == np.uint8


# ------------------------------------------------------------------------------------------------ commands
def test_unknown_prompt_is_a_clear_error(capsys, tmp_path):
    with pytest.raises(UserError, match="dragon.*" + ", ".join(CLASSES)):
        prompts.parse_prompt("dragon")
    assert prompts.parse_prompt(" Star ") == CLASSES.index("star")
    code = run_cli(prompts.main, [str(tmp_path / "nothing"), "--prompt", "dragon", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "unknown prompt 'dragon'" in err and "heart" in err and not (tmp_path / "o").exists()


def test_generator_run_resumes_and_its_model_draws_pngs(cache, tmp_path):
    """Trainer -> float16 model folder -> `generate` writes PNGs; a resumed run equals an unbroken one."""
    def config(out, steps, resume=None):
        return generator_training.GeneratorTrainConfig(
            out=str(tmp_path / out), cache_dir=str(cache), train_count=16, reference_count=8, eval_samples=8,
            resume=resume, model=GeneratorConfig(rotary=True, **TINY_GENERATOR),
            loop=LoopConfig(steps=steps, batch_size=4, warmup_steps=1, log_every=1, save_every=2, bf16=True))

    whole = generator_training.run(config("whole", 4))
    generator_training.run(config("broken", 4))
    broken = tmp_path / "broken"  # as a run killed after its step-2 checkpoint leaves it
    for name in ("checkpoints/step_00000004", "model", "summary.json"):
        shutil.rmtree(broken / name) if (broken / name).is_dir() else (broken / name).unlink()
    (broken / "checkpoints" / "latest").write_text("step_00000002\n")
    resumed = generator_training.run(config("broken", 4, resume="auto"))
    a = load_file(str(tmp_path / "whole/checkpoints/step_00000004/model.safetensors"))
    b = load_file(str(tmp_path / "broken/checkpoints/step_00000004/model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert whole["generation"]["count"] == 8 and resumed["step"] == 4
    assert 0 <= whole["generation"]["teacher_accuracy"] <= 1 and whole["generation"]["frechet"] > 0
    assert generator_training.run(config("broken", 4, resume="auto"))["step"] == 4  # a finished run is reported
    with pytest.raises(UserError, match="already holds a run"):
        generator_training.run(config("broken", 4))
    model = tmp_path / "whole" / "model"
    assert load_model(model).cfg.variant == "both"
    assert json.loads((model / "config.json").read_text())["kind"] == "generator"
    assert run_cli(prompts.main, [str(model), "--prompt", "star", "heart", "--num", "2", "--out",
                                  str(tmp_path / "png")]) == 0
    names = json.loads((tmp_path / "png" / "samples.json").read_text())["files"]
    assert names == ["star_000.png", "star_001.png", "heart_000.png", "heart_001.png"]
    assert all((tmp_path / "png" / n).is_file() for n in names) and (tmp_path / "png" / "grid.png").is_file()


def test_reader_run_scores_held_out_questions(cache, tmp_path):
    cfg = reader_training.ReaderTrainConfig(out=str(tmp_path / "r"), cache_dir=str(cache), train_count=16,
                                            eval_count=8, model=ReaderConfig(**TINY_READER),
                                            loop=LoopConfig(steps=3, batch_size=4, warmup_steps=1, log_every=1))
    summary = reader_training.run(cfg)
    assert set(summary["accuracy"]) == set(QUESTION_NAMES) and summary["eval_images"] == "eval 0..7"
    assert all(0 <= v <= 1 for v in summary["accuracy"].values())
    assert load_model(tmp_path / "r" / "model", kind="reader").cfg.variant == "both"


def test_results_keep_the_readers_when_only_the_generators_were_retrained(tmp_path):
    """unified_results --keep-readers takes the readers' rows from the old results.json and ships only generators."""
    from dualtoken_lite.unified import results

    runs, out = tmp_path / "runs", tmp_path / "out"
    old = {"readers": {"both": {"mean": {"shape": 0.9}}}, "majority_baseline": {"shape": 0.125}}
    out.mkdir()
    (out / "results.json").write_text(json.dumps(old))
    for variant in results.GENERATORS:
        for seed in results.SEEDS:
            run = runs / f"generator-{variant}-s{seed}"
            (run / "model").mkdir(parents=True)
            (run / "model" / "config.json").write_text("{}")
            row = {"generation": {"teacher_accuracy": 0.5 + seed / 10, "frechet": 2.0}, "command": "c",
                   "train_minutes": 1.0, "threads": 1, "load_average_1_5_15": [1, 1, 1], "parameters": 7,
                   "reference_images": "eval 0..1023"}
            (run / "summary.json").write_text(json.dumps(row))
    table = results.collect(runs, out, keep_readers=True)
    assert table["readers"] == old["readers"] and table["majority_baseline"] == old["majority_baseline"]
    assert table["generators"]["both"]["mean"]["teacher_accuracy"] == pytest.approx(0.55)
    assert (out / "generator-pixel" / "config.json").is_file() and not (out / "reader-both").exists()
    with pytest.raises(results.MissingFile, match="reader-semantic-s0"):
        results.collect(runs, tmp_path / "elsewhere")  # without the flag the reader runs are required


# ------------------------------------------------------------------------------------------------ run folders
def test_the_unified_trainers_keep_the_run_folder_promises(cache, tmp_path, capsys, monkeypatch):
    """The tokenizer trainer's promises (training/run_folder.py), through `train_reader`'s command line."""
    import os
    import signal

    flags = ["--cache_dir", str(cache), "--train_count", "16", "--eval_count", "8", "--model.width", "16",
             "--model.layers", "1", "--model.heads", "2", "--model.dropout", "0", "--steps", "2",
             "--batch_size", "4", "--warmup_steps", "1", "--log_every", "1", "--save_every", "1"]

    def reader(*args: str) -> tuple[int, str]:
        code = run_cli(reader_training.main, [*flags, *args])
        return code, capsys.readouterr().err

    run, other = tmp_path / "run", tmp_path / "other"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    assert reader("--out", str(run))[0] == 0  # a folder holding only unrelated files is not a run
    assert (run / "notes.txt").read_text() == "mine" and (run / "summary.json").is_file()
    assert reader("--out", str(other), "--loop.seed", "1")[0] == 0
    code, err = reader("--resume", str(other), "--out", str(run))  # OTHER's weights must not land in RUN
    assert code == 2 and f"--out {run} is not the folder of the run being resumed ({other})" in err
    code, err = reader("--resume", str(run), "--steps", "3")  # no --out: the run being resumed is the folder
    assert code == 0 and "loop.steps changed from 2 to 3" in err
    assert json.loads((run / "summary.json").read_text())["step"] == 3
    code, err = reader("--out", str(run))
    assert code == 2 and "already holds a run" in err and "--overwrite" in err
    assert reader("--out", str(run), "--overwrite")[0] == 0  # a bare --overwrite, as that message says
    assert (run / "notes.txt").is_file() and json.loads((run / "summary.json").read_text())["step"] == 2

    calls = {"n": 0}
    loss = Reader.loss

    def fails_at_step_2(self, stacks, labels):
        calls["n"] += 1
        value, logs = loss(self, stacks, labels)
        return (value * float("nan") if calls["n"] == 2 else value), logs

    monkeypatch.setattr(Reader, "loss", fails_at_step_2)
    code, err = reader("--out", str(tmp_path / "nan"))
    assert code == 3 and "non-finite loss at step 2" in err and "Traceback" not in err

    def stopped_in_step_1(self, stacks, labels):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-step, as a scheduler's would
        return loss(self, stacks, labels)

    monkeypatch.setattr(Reader, "loss", stopped_in_step_1)
    stop = tmp_path / "stop"
    code, err = reader("--out", str(stop))
    assert code == 4 and (f"stopped by SIGTERM after step 1: checkpoint {stop / 'checkpoints' / 'step_00000001'}; "
                          f"continue the run with: python -m dualtoken_lite train_reader --out {stop} --resume auto"
                          ) in err
    monkeypatch.setattr(Reader, "loss", loss)
    assert run_cli(reader_training.main, ["--out", str(stop), "--resume", "auto"]) == 0  # that command
    assert json.loads((stop / "summary.json").read_text())["step"] == 2


def test_generate_checks_out_before_sampling_and_keeps_what_was_drawn_when_stopped(tmp_path, capsys, monkeypatch):
    import os
    import signal

    model = "data/unified/generator-both"
    (tmp_path / "file").write_text("")
    code = run_cli(prompts.main, [model, "--prompt", "star", "--out", str(tmp_path / "file")])
    assert code == 2 and f"--out {tmp_path / 'file'} is a file" in capsys.readouterr().err

    def two_batches_then_ctrl_c(generator, tokenizer, classes, sampling):
        for start in (0, 2):
            yield None, np.full((2, 64, 64, 3), 40 * start, dtype=np.uint8)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the third batch is drawn
        yield None, np.zeros((2, 64, 64, 3), dtype=np.uint8)

    monkeypatch.setattr(prompts, "draw", two_batches_then_ctrl_c)
    out = tmp_path / "png"
    code = run_cli(prompts.main, [model, "--prompt", "star", "--num", "100000", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 130 and f"stopped by Ctrl-C: 4 of 100000 images written to {out}" in err
    names = json.loads((out / "samples.json").read_text())["files"]
    assert names == ["star_000.png", "star_001.png", "star_002.png", "star_003.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted([*names, "samples.json"])
