"""The shipped tiny tokenizer (data/tokenizer/, what `make demo` writes) reproduces its card's and README's figures.

It distils the shipped tiny SigLIP teacher (data/teacher/), whose text tower scores its semantic codes zero-shot."""

import json
from pathlib import Path

import pytest
import torch

from dualtoken_lite import DualToken
from dualtoken_lite.evaluation.loop import evaluate_codes
from dualtoken_lite.evaluation.zero_shot import tinyworld_score
from dualtoken_lite.tinyworld import ensure_tinyworld, load_split, to_tensor
from dualtoken_lite.tinyworld.shards import sample_key
from dualtoken_lite.tinyworld.teacher import load_teacher, teacher_fingerprint

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "data" / "tokenizer"
ATTRIBUTES = ("shape", "colour", "fill", "background")


@pytest.fixture(scope="module")
def card() -> dict:
    return json.loads((TOKENIZER / "card.json").read_text())


@pytest.fixture(scope="module")
def figures() -> dict:
    torch.set_num_threads(1)
    model = DualToken.from_pretrained(TOKENIZER)
    images, _ = load_split(ensure_tinyworld(splits=("eval",))["eval"])
    x, keys = to_tensor(images[:512]), [sample_key("eval", i) for i in range(512)]
    batches = [{"image": x[i : i + 32], "key": keys[i : i + 32]} for i in range(0, 512, 32)]
    return evaluate_codes(model, batches, semantic=tinyworld_score(load_teacher()))


@pytest.mark.parametrize("key", ["psnr", "psnr_luma", "psnr_chroma", "ssim", "semantic_accuracy",
                                 "teacher_accuracy"])
def test_shipped_tokenizer_reproduces_its_card(card, figures, key):
    assert figures[key] == pytest.approx(card["eval"][key], abs=0.01), key


@pytest.mark.parametrize("attribute", ATTRIBUTES)
def test_shipped_tokenizer_reproduces_its_zero_shot(card, figures, attribute):
    for part in ("semantic", "teacher_semantic"):  # from the semantic codes; the teacher on the same images
        assert figures[part][attribute] == pytest.approx(card["eval"][part][attribute], abs=2 / 512), part
    assert figures["retrieval"]["r1"] == pytest.approx(card["eval"]["retrieval"]["r1"], abs=2 / 512)


def test_shipped_tokenizer_distils_the_shipped_teacher(card):
    assert card["teacher_fingerprint"] == teacher_fingerprint()


def test_readme_quotes_the_shipped_figures(card):
    readme = (ROOT / "README.md").read_text()
    for key in ("psnr", "psnr_luma", "psnr_chroma"):
        assert f"{card['eval'][key]:.2f} dB" in readme, key
    for attribute in ATTRIBUTES:
        assert f"{100 * card['eval']['semantic'][attribute]:.1f} %" in readme, attribute


def test_shipped_tokenizer_is_the_tiny_preset(card):
    from dualtoken_lite import preset
    from dualtoken_lite.model.pretrained import load_config

    assert load_config(TOKENIZER) == preset("tiny").model
    assert card["command"].startswith("python -m dualtoken_lite.train --preset tiny")
