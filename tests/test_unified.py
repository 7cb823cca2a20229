"""The tiny unified model: its data, both tasks, sampling in both directions, its commands and its run folder.

Small on purpose (tiny widths, a handful of images, a few steps): the whole file runs in well under a minute on one
CPU thread. The shipped tokenizer (data/tokenizer) makes the codes, as in the real runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dualtoken_lite.model.dualtoken import DualToken
from dualtoken_lite.model.pretrained import CheckpointError
from dualtoken_lite.model.token_layout import from_lm_sequence
from dualtoken_lite.settings import ConfigError, UserError, run_cli
from dualtoken_lite.tinyworld.captions import FIELDS, attribute_values, image_code, sample_captions
from dualtoken_lite.tinyworld.drawing import make_sample
from dualtoken_lite.tinyworld.drawing import to_tensor as images_to_tensor
from dualtoken_lite.tinyworld.paths import TOKENIZER_DIR
from dualtoken_lite.unified import caption, generate, trainer
from dualtoken_lite.unified.embedding import CodeStackEmbedding, slot_offsets, slot_sizes
from dualtoken_lite.unified.fit import LoopConfig
from dualtoken_lite.unified.model import UnifiedConfig, UnifiedModel, condition_inputs
from dualtoken_lite.unified.rotary import TEXT_CELL, cell_angles, rotate, token_cells, turns
from dualtoken_lite.unified.sampling import SamplingConfig, draw_stacks, full_stack, write_answers
from dualtoken_lite.unified.sequences import (
    ANSWER_IDS,
    CAPTION,
    PROMPT_LENGTH,
    QUESTION_IDS,
    TEXT_VOCABULARY,
    prompt_block,
    word_ids,
)
from dualtoken_lite.unified.token_cache import (
    HELD_OUT_PAIRS,
    cache_path,
    encode_split,
    held_out_combination,
    load_or_encode,
    read_token_set,
    training_rows,
)
from dualtoken_lite.unified.weights import load_model, save_model

TINY = dict(width=16, layers=1, depth_layers=1, heads=2, depth_positions=4)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    return DualToken.from_pretrained(TOKENIZER_DIR).eval()


@pytest.fixture(scope="module")
def cache(tmp_path_factory, tokenizer):
    """A tiny token cache folder: train 0..47 and eval 0..7."""
    folder = tmp_path_factory.mktemp("cache")
    load_or_encode(tokenizer, TOKENIZER_DIR, "train", 0, 48, folder, progress=False)
    load_or_encode(tokenizer, TOKENIZER_DIR, "eval", 0, 8, folder, progress=False)
    return folder


@pytest.fixture(scope="module")
def train_set(cache, tokenizer):
    return load_or_encode(tokenizer, TOKENIZER_DIR, "train", 0, 48, cache, progress=False)


def tiny_model(layout, variant="both", seed=0, rotary=False, context_depths=None) -> UnifiedModel:
    torch.manual_seed(seed)
    return UnifiedModel(UnifiedConfig(variant=variant, rotary=rotary, context_depths=context_depths, **TINY),
                        layout).eval()


def some_batch(data, rows, seed=0):
    cfg = trainer.UnifiedTrainConfig(model=UnifiedConfig(**TINY))
    return trainer.make_batch(data, torch.as_tensor(rows), cfg, torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------ data
def test_token_cache_equals_model_encode_and_holds_the_captions(tokenizer, tmp_path):
    made = load_or_encode(tokenizer, TOKENIZER_DIR, "eval", 3, 5, tmp_path, progress=False)
    again = load_or_encode(tokenizer, TOKENIZER_DIR, "eval", 3, 5, tmp_path, progress=False)  # read from the file
    assert cache_path(tmp_path, "eval", 3, 5).is_file()
    samples = [make_sample(i, "eval") for i in range(3, 8)]
    with torch.no_grad():
        pixel, semantic = tokenizer.encode(images_to_tensor(np.stack([s[0] for s in samples])))
    for data in (made, again):
        got_pixel, got_semantic = from_lm_sequence(data.stacks.flatten(1), data.layout)
        assert torch.equal(got_pixel, pixel) and torch.equal(got_semantic, semantic)
        assert data.attributes.tolist() == [image_code(attribute_values(s[1])).tolist() for s in samples]
        texts = [[TEXT_VOCABULARY.decode(c) for c in row] for row in data.captions]
        assert texts == [[" ".join(t.replace(",", "").split()) for t in sample_captions(s[1])] for s in samples]
        assert data.indices.tolist() == [3, 4, 5, 6, 7] and data.split == "eval"


def test_a_cache_from_another_tokenizer_is_encoded_again(tokenizer, tmp_path):
    from dualtoken_lite.unified.token_cache import save_token_set

    data = encode_split(tokenizer, "eval", 0, 2, progress=False)
    stale = data.stacks.clone()
    stale[:, 0, 0] = (stale[:, 0, 0] + 1) % 512
    save_token_set(type(data)(stale, data.captions, data.attributes, data.indices, "eval", data.layout),
                   cache_path(tmp_path, "eval", 0, 2), "another-tokenizer")
    assert torch.equal(load_or_encode(tokenizer, TOKENIZER_DIR, "eval", 0, 2, tmp_path, progress=False).stacks,
                       data.stacks)
    assert read_token_set(cache_path(tmp_path, "eval", 0, 2))[1]["tokenizer"] != "another-tokenizer"


def test_held_out_pairs_cover_every_shape_and_colour_once():
    shapes, colours = zip(*HELD_OUT_PAIRS)
    assert sorted(shapes) == list(range(8)) and set(colours) == set(range(7))


def test_held_out_combinations_never_reach_a_training_pair(train_set, cache, tmp_path, monkeypatch):
    """Every image the trainer pairs with text shows no held-out pair (the train images 0..47 hold some), and the
    trainer checks its whole training set before it starts."""
    shown = held_out_combination(train_set.attributes)
    assert shown.any() and not shown.all()
    assert set(training_rows(train_set).tolist()) == set(torch.nonzero(~shown)[:, 0].tolist())
    with pytest.raises(UserError, match="held-out"):
        trainer.check_training_rows(train_set, torch.arange(len(train_set)))
    drawn, make_batch = [], trainer.make_batch
    monkeypatch.setattr(trainer, "make_batch", lambda data, rows, cfg, rng: drawn.append(rows) or make_batch(
        data, rows, cfg, rng))
    trainer.run(trainer.UnifiedTrainConfig(out=str(tmp_path / "run"), cache_dir=str(cache), train_count=48,
                                             eval_count=8, model=UnifiedConfig(**TINY),
                                             loop=LoopConfig(steps=6, batch_size=8, warmup_steps=1, log_every=1)))
    assert len(drawn) == 6 and not shown[torch.cat(drawn)].any()


def test_a_batch_holds_both_tasks_in_their_layouts(train_set):
    rows = training_rows(train_set)[:6]
    batch = some_batch(train_set, rows)
    assert batch["prompt"].shape == (6, PROMPT_LENGTH) and batch["image_stacks"].shape == (6, 64, 12)
    for prompt in batch["prompt"]:  # left-padded: <pad>s, <start>, words, <end>
        ids = prompt.tolist()
        assert ids[-1] == 2 and 3 in ids and all(i == 0 for i in ids[: ids.index(3)])
    for row, answer, target in zip(rows, batch["answer"], batch["targets"]):
        scored = target[target >= 0].tolist()
        marker = int(answer[0])
        if marker == CAPTION:
            assert scored[-1] == 2 and scored[:-1] in [w.tolist()[: w.tolist().index(2)] for w in
                                                       train_set.captions[row]]
        else:
            q = next(q for q, i in QUESTION_IDS.items() if i == marker)
            assert scored == [ANSWER_IDS[q][int(train_set.attributes[row, FIELDS.index(q)])], 2]


def test_code_embeddings_sum_to_the_quantized_vector(tokenizer, train_set):
    """Started from the codebooks, a branch's slot embeddings sum to what its quantizer rebuilds from the codes."""
    embed = CodeStackEmbedding(train_set.layout, "pixel", 32, 32)
    embed.init_from_tokenizer(tokenizer)
    torch.nn.init.eye_(embed.pixel_proj.weight)
    stacks = train_set.stacks[:2]
    codes = (stacks[..., :8] - slot_offsets(train_set.layout)[:8]).reshape(2, 8, 8, 8)
    with torch.no_grad():
        want = tokenizer.pixel_quantizer.decode(codes).reshape(2, 64, 32)
        assert torch.allclose(embed(stacks), want, atol=1e-5)
    assert slot_sizes(train_set.layout) == [512] * 12


# ------------------------------------------------------------------------------------------------ model and sampling
@pytest.mark.parametrize("variant, rotary, context_depths",
                         [("pixel", False, None), ("both", False, None), ("both", True, None), ("both", False, 1)])
def test_cached_paths_equal_the_full_forward_pass(train_set, variant, rotary, context_depths):
    model = tiny_model(train_set.layout, variant, rotary=rotary, context_depths=context_depths)
    rows = training_rows(train_set)[:3]
    batch = some_batch(train_set, rows)
    with torch.no_grad():
        full = model.image_contexts(batch["prompt"], batch["image_stacks"])  # (B, N, C)
        cache = model.main.new_cache()
        x = torch.cat([model.embed_prompt(batch["prompt"]), model.boi(3)], 1)
        steps = [model.main.step(x, cache, model.turns(token_cells(PROMPT_LENGTH, 0)))[:, -1]]
        summary = model.prompt_summary(batch["prompt"])
        for n in range(63):
            x = condition_inputs(model.embed_image(batch["image_stacks"][:, n : n + 1], n, context=True), summary)
            steps.append(model.main.step(x, cache, model.turns(token_cells(0, 1, first=n, boi=False)))[:, -1])
        assert torch.allclose(torch.stack(steps, 1), full, atol=1e-5)
        logits = model.answer_logits(batch["text_stacks"], batch["answer"])  # (B, A, V)
        cache = model.main.new_cache()
        x = torch.cat([model.boi(3), model.embed_image(batch["text_stacks"]), model.embed_answer(batch["answer"][:, :1])], 1)
        got = [model.word_head(model.main.step(x, cache, model.turns(token_cells(0, 64, words_after=1))))[:, -1]]
        for j in range(1, 5):
            x = model.embed_answer(batch["answer"][:, j : j + 1], j)
            got.append(model.word_head(model.main.step(x, cache, model.turns(token_cells(1, 0, boi=False))))[:, -1])
        assert torch.allclose(torch.stack(got, 1), logits[:, :5], atol=1e-5)


@pytest.mark.parametrize("variant, rotary, context_depths",
                         [("pixel", True, None), ("both", False, None), ("both", True, None), ("both", False, 1)])
def test_greedy_samples_are_the_full_forward_passs_most_likely_codes_and_words(train_set, variant, rotary,
                                                                              context_depths):
    """The sampler's own cached code (draw_stacks, write_answers) against the training forward pass: at temperature
    0 every drawn code is the argmax of the full pass's logits over the drawn image, every word of the answer's."""
    model = tiny_model(train_set.layout, variant, seed=3, rotary=rotary, context_depths=context_depths)
    prompt = prompt_block(["a red star", "a small blue disc on a photo"])
    stacks = draw_stacks(model, prompt, SamplingConfig(temperature=0, guidance=1.0))  # (2, N, S)
    full = full_stack(model, stacks)  # (2, N, S_all) the tokenizer's layout, as the training batches hold it
    with torch.no_grad():
        h = model.image_contexts(prompt, full).flatten(0, 1)  # (2 N, C)
        codes = model.image_embed.local_codes(full).flatten(0, 1)  # (2 N, S)
        logits = model.slot_logits(model.forward_depth(h, codes[:, :-1]))  # S x (2 N, K_s)
        assert torch.equal(torch.stack([lg.argmax(-1) for lg in logits], 1), codes)
        words = write_answers(model, full, torch.full((2,), CAPTION))
        for row, ids in enumerate(words):
            answer = torch.tensor([[CAPTION, *ids]])
            steps = model.answer_logits(full[row : row + 1], answer)[0].argmax(-1)  # (len + 1,)
            assert steps[: len(ids)].tolist() == ids


def test_the_rotary_score_depends_on_the_offset_between_cells_only():
    head = 8
    q, k = torch.randn(head), torch.randn(head)
    cos, sin = turns(cell_angles(torch.tensor([0, 9, 27, 36, 63, TEXT_CELL]), 8, head))  # cells (0,0) (1,1) (3,3)
    #                                                                                    (4,4) (7,7), text (-1,-1)

    def score(i, j):
        return (rotate(q, cos[i], sin[i]) * rotate(k, cos[j], sin[j])).sum()

    assert torch.allclose(score(1, 0), score(3, 2), atol=1e-5)  # one step down-right, wherever it is taken
    assert torch.allclose(score(0, 5), score(1, 0), atol=1e-5)  # text sits one step before cell (0, 0)
    assert not torch.allclose(score(2, 0), score(1, 0), atol=1e-3)
    zero = turns(torch.zeros(1, head // 2))
    assert torch.equal(rotate(q, *zero), q[None])  # angle 0 leaves a vector as it is
    assert torch.allclose(rotate(q, cos[4], sin[4]).norm(), q.norm())  # a rotation keeps the length
    with pytest.raises(ValueError, match="divisible by 4"):
        cell_angles(torch.tensor([0]), 8, 6)


@pytest.mark.parametrize("variant", ["pixel", "both"])
def test_the_image_loss_scores_the_first_depth_everywhere_and_is_the_mean_over_codes(train_set, variant):
    from dualtoken_lite.unified.judge import slot_losses

    model = tiny_model(train_set.layout, variant)
    model.cfg.first_depth_share = None  # the plain mean over codes
    batch = some_batch(train_set, training_rows(train_set)[:3])
    prompt, stacks = batch["prompt"], batch["image_stacks"]
    with torch.no_grad():
        h = model.image_contexts(prompt, stacks).flatten(0, 1)  # (B N, C)
        codes = model.image_embed.local_codes(stacks).flatten(0, 1)
        slot0 = model.slot_logits(model.forward_depth(h, codes[:, :-1]))[0]  # the full stack's first output
        assert torch.allclose(model.first_depth_logits(h), slot0, atol=1e-5)
        per_slot = slot_losses(model, prompt, stacks)  # (S,) every position, the model in eval mode
        loss, parts = model.image_loss(prompt, stacks)
        assert torch.allclose(loss, per_slot.mean(), atol=1e-5)
        assert torch.allclose(parts["first"], per_slot[0], atol=1e-5)
        model.cfg.first_depth_share = 0.5
        half, _ = model.image_loss(prompt, stacks)
        assert torch.allclose(half, 0.5 * per_slot[0] + 0.5 * per_slot[1:].mean(), atol=1e-5)
    model.train()
    _, trained = model.image_loss(prompt, stacks, torch.Generator().manual_seed(0))  # deeper codes on 4 positions
    assert torch.allclose(trained["first"], per_slot[0], atol=1e-5)  # the first depth still on all 64


@pytest.mark.parametrize("variant", ["pixel", "both"])
@pytest.mark.parametrize("top_k, guidance", [(None, 1.0), (3, 2.0)])
def test_sampling_is_deterministic_and_emits_only_valid_ids(train_set, variant, top_k, guidance):
    model = tiny_model(train_set.layout, variant)
    prompt = prompt_block(["a red star", "a small blue disc on a photo"])
    sampling = SamplingConfig(top_k=top_k, guidance=guidance)
    a = draw_stacks(model, prompt, sampling, torch.Generator().manual_seed(5))
    b = draw_stacks(model, prompt, sampling, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.shape == (2, 64, len(model.slots))
    low = slot_offsets(train_set.layout)[model.slots]
    high = low + torch.tensor(model.sizes)
    assert bool(((a >= low) & (a < high)).all())
    own = dataclasses.replace(train_set.layout, semantic_depth=4 if variant == "both" else 0,
                              semantic_codebook_size=512 if variant == "both" else 0)
    pixel, _ = from_lm_sequence(a.flatten(1), own)  # the layout's own check of every id
    assert torch.equal(generate.pixel_codes(model, a), pixel)


def test_text_to_image_to_text_round_trip_on_a_few_step_model(tokenizer, cache, tmp_path):
    cfg = trainer.UnifiedTrainConfig(out=str(tmp_path / "run"), cache_dir=str(cache), train_count=48, eval_count=8,
                                      model=UnifiedConfig(**TINY),
                                      loop=LoopConfig(steps=3, batch_size=4, warmup_steps=1, log_every=1))
    summary = trainer.run(cfg)
    assert set(summary["answers"]) == {"shape", "colour", "fill", "background"}
    model = load_model(tmp_path / "run" / "model")
    _, images = generate.generate_images(model, tokenizer, ["a red star on a photo"] * 2, SamplingConfig(batch_size=2))
    assert images.shape == (2, 64, 64, 3) and images.dtype == np.uint8
    texts = caption.read_images(model, tokenizer, images_to_tensor(images))
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    answers = caption.read_images(model, tokenizer, images_to_tensor(images), question="colour")
    assert all(w in TEXT_VOCABULARY.ids for a in answers for w in a.split())
    from dualtoken_lite.unified import results
    from dualtoken_lite.unified.judge import prompt_information

    held = load_or_encode(tokenizer, TOKENIZER_DIR, "eval", 0, 8, cache, progress=False)
    points = results.curve([tmp_path / "run"], held)  # one point per kept checkpoint: here the last, step 3
    assert list(points) == ["run step_00000003"]
    info = prompt_information(load_model(tmp_path / "run" / "checkpoints" / "step_00000003"), held)
    assert points["run step_00000003"]["gain"] == round(info["gain"][0], 4)


def test_context_depths_hide_the_earlier_positions_deeper_codes_from_drawing_only(train_set):
    """With context_depths 1, an image being drawn sees its earlier positions' first pixel and first semantic codes
    only; the same image read for understanding is embedded whole."""
    model = tiny_model(train_set.layout, "both", context_depths=1)
    assert model.context_slots.tolist() == [True] + [False] * 7 + [True] + [False] * 3
    batch = some_batch(train_set, training_rows(train_set)[:2])
    stacks = batch["image_stacks"]
    other = stacks.clone()
    deep = [s for s in range(12) if s not in (0, 8)]
    other[..., deep] = stacks.flip(0)[..., deep]  # the other image's deeper codes
    with torch.no_grad():
        assert torch.equal(model.image_contexts(batch["prompt"], other), model.image_contexts(batch["prompt"], stacks))
        whole = tiny_model(train_set.layout, "both")
        assert not torch.allclose(whole.image_contexts(batch["prompt"], other),
                                  whole.image_contexts(batch["prompt"], stacks))
        assert not torch.allclose(model.answer_logits(other, batch["answer"]), model.answer_logits(stacks, batch["answer"]))
    with pytest.raises(ConfigError, match="context_depths"):
        UnifiedConfig(context_depths=0).validate()


def test_first_depth_share_must_be_a_fraction():
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ConfigError, match="first_depth_share"):
            UnifiedConfig(first_depth_share=bad).validate()
    assert UnifiedConfig(first_depth_share=None).validate().first_depth_share is None


def test_answers_stop_at_end_and_never_emit_pads(train_set):
    model = tiny_model(train_set.layout)
    answers = write_answers(model, train_set.stacks[:4], torch.full((4,), CAPTION))
    assert all(0 not in a and 2 not in a and len(a) <= 17 for a in answers)


# ------------------------------------------------------------------------------------------------ folders, commands
def test_a_model_folder_round_trips_and_old_folders_are_refused(train_set, tmp_path):
    model = tiny_model(train_set.layout)
    save_model(model, tmp_path / "m", half=True, tokenizer="abc")
    back = load_model(tmp_path / "m")
    assert back.cfg == model.cfg and back.tokenizer_id == "abc"
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    del config["config"]["depth_layers"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="lacks the field"):
        load_model(tmp_path / "m")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text(json.dumps({"format": "dualtoken_lite.unified",
                                                              "format_version": 1, "kind": "generator"}))
    with pytest.raises(CheckpointError, match="replaced by one model.*data/unified/both.*train_unified"):
        load_model(tmp_path / "old")


@pytest.mark.parametrize("prompt, fragment", [("a dragon on a photo", "unknown word(s) 'dragon'"),
                                              ("star", "is a class name; the unified model takes a caption: "
                                                       "write 'a star'"),
                                              ("!!", "has no words")])
def test_bad_prompts_are_refused_before_anything_loads(prompt, fragment, capsys, tmp_path):
    code = run_cli(generate.main, [str(tmp_path / "nothing"), "--prompt", prompt, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and not (tmp_path / "o").exists()
    if "dragon" in prompt:
        assert "crescent" in err and "striped" in err  # the vocabulary is named
    with pytest.raises(UserError):
        generate.check_prompt(prompt)
    assert word_ids("a small red star", 16) == [TEXT_VOCABULARY.ids[w] for w in "a small red star".split()]


def test_generate_refuses_an_old_folder_naming_the_replacement(train_set, tmp_path, capsys):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text(json.dumps({"format": "dualtoken_lite.unified",
                                                              "format_version": 1, "kind": "reader"}))
    code = run_cli(generate.main, [str(tmp_path / "old"), "--prompt", "a star", "--out", str(tmp_path / "o")])
    assert code == 2 and "data/unified/both" in capsys.readouterr().err


def test_generate_keeps_what_was_drawn_when_stopped(train_set, tmp_path, capsys, monkeypatch):
    model = tmp_path / "m"
    save_model(tiny_model(train_set.layout), model, half=True)
    (tmp_path / "file").write_text("")
    code = run_cli(generate.main, [str(model), "--prompt", "a star", "--out", str(tmp_path / "file")])
    assert code == 2 and f"--out {tmp_path / 'file'} is a file" in capsys.readouterr().err

    def two_batches_then_ctrl_c(model, tokenizer, prompts, sampling):
        for start in (0, 2):
            yield None, np.full((2, 64, 64, 3), 40 * start, dtype=np.uint8)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the third batch is drawn
        yield None, np.zeros((2, 64, 64, 3), dtype=np.uint8)

    monkeypatch.setattr(generate, "draw", two_batches_then_ctrl_c)
    out = tmp_path / "png"
    code = run_cli(generate.main, [str(model), "--prompt", "a star", "--num", "100000", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 130 and f"stopped by Ctrl-C: 4 of 100000 images written to {out}" in err
    names = json.loads((out / "samples.json").read_text())["files"]
    assert names == [f"00_a_star_{j:03d}.png" for j in range(4)]
    assert sorted(p.name for p in out.iterdir()) == sorted([*names, "samples.json"])


# ------------------------------------------------------------------------------------------------ run folder
def test_the_trainer_keeps_the_run_folder_promises_and_resumes_bit_exactly(cache, tmp_path, capsys, monkeypatch):
    """training/'s promises (run_folder.py) through `train_unified`'s command line."""
    flags = ["--cache_dir", str(cache), "--train_count", "48", "--eval_count", "8", "--model.width", "16",
             "--model.layers", "1", "--model.depth_layers", "1", "--model.heads", "2", "--model.depth_positions",
             "4", "--steps", "4", "--batch_size", "4", "--warmup_steps", "1", "--log_every", "1", "--save_every", "2"]

    def train(*args: str) -> tuple[int, str]:
        code = run_cli(trainer.main, [*flags, *args])
        return code, capsys.readouterr().err

    whole, broken = tmp_path / "whole", tmp_path / "broken"
    assert train("--out", str(whole))[0] == 0 and train("--out", str(broken))[0] == 0
    for name in ("checkpoints/step_00000004", "model", "summary.json"):  # as a run killed after step 2 leaves it
        shutil.rmtree(broken / name) if (broken / name).is_dir() else (broken / name).unlink()
    (broken / "checkpoints" / "latest").write_text("step_00000002\n")
    assert train("--out", str(broken), "--resume", "auto")[0] == 0
    a = load_file(str(whole / "checkpoints/step_00000004/model.safetensors"))
    b = load_file(str(broken / "checkpoints/step_00000004/model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    code, err = train("--out", str(whole))
    assert code == 2 and "already holds a run" in err and "--overwrite" in err

    loss = UnifiedModel.loss
    monkeypatch.setattr(UnifiedModel, "loss", lambda self, batch, rng=None: (
        loss(self, batch, rng)[0] * float("nan"), {}))
    code, err = train("--out", str(tmp_path / "nan"))
    assert code == 3 and "non-finite loss at step 1" in err and "Traceback" not in err

    def stopped_in_step_1(self, batch, rng=None):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-step, as a scheduler's would
        return loss(self, batch, rng)

    monkeypatch.setattr(UnifiedModel, "loss", stopped_in_step_1)
    stop = tmp_path / "stop"
    code, err = train("--out", str(stop))
    assert code == 4 and (f"stopped by SIGTERM after step 1: checkpoint {stop / 'checkpoints' / 'step_00000001'}; "
                          f"continue the run with: python -m dualtoken_lite train_unified --out {stop} --resume auto"
                          ) in err


def test_the_sweep_varies_only_the_guidance_and_keeps_temperature_and_top_k(tmp_path, monkeypatch):
    from dualtoken_lite.unified import results

    for name, seed in (("both-s0", 0), ("both-s1", 1)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps({"seed": seed}))
    used = []

    def fake_generate(model, tokenizer, prompts, sampling):
        used.append((model, sampling))
        return None, np.zeros((len(prompts), 64, 64, 3), np.uint8)

    def fake_judge(images, asked):
        return {"teacher": {"shape": 0.5, "colour": 0.25}, "frechet": 3.0}

    monkeypatch.setattr(results, "load_model", lambda folder: folder.parent.name)
    monkeypatch.setattr(results, "generate_images", fake_generate)
    out = results.sweep([tmp_path / "both-s0", tmp_path / "both-s1"], fake_judge, None, [1.0, 4.0],
                        SamplingConfig(temperature=0.7, top_k=5, guidance=2.0))
    assert [m for m, _ in used] == ["both-s0", "both-s0"]  # seed-0 runs only
    assert [(s.guidance, s.temperature, s.top_k) for _, s in used] == [(1.0, 0.7, 5), (4.0, 0.7, 5)]
    assert out["both-s0 guidance 4.0 temperature 0.7 top_k 5"] == {"shape": 0.5, "colour": 0.25, "frechet": 3.0}
