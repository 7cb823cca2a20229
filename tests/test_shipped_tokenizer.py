"""The shipped tiny tokenizer (data/tokenizer/, what `make demo` writes) reproduces its card's and README's figures."""

import json
from pathlib import Path

import pytest
import torch

from dualtoken_lite import DualToken
from dualtoken_lite.evaluation.loop import evaluate_codes
from dualtoken_lite.tinyworld import TEACHER_DIR, ensure_tinyworld, load_split, to_tensor
from dualtoken_lite.tinyworld.teacher import load_teacher

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "data" / "tokenizer"


@pytest.fixture(scope="module")
def card() -> dict:
    return json.loads((TOKENIZER / "card.json").read_text())


@pytest.fixture(scope="module")
def figures() -> dict:
    torch.set_num_threads(1)
    model = DualToken.from_pretrained(TOKENIZER)
    images, labels = load_split(ensure_tinyworld(splits=("eval",))["eval"])
    x, y = to_tensor(images[:512]), torch.as_tensor(labels[:512])
    trunk, head = load_teacher(TEACHER_DIR)
    batches = [{"image": x[i : i + 32], "label": y[i : i + 32]} for i in range(0, 512, 32)]
    return evaluate_codes(model, batches, head=head, teacher=trunk)


@pytest.mark.parametrize("key", ["psnr", "psnr_luma", "psnr_chroma", "ssim", "semantic_accuracy",
                                 "teacher_accuracy"])
def test_shipped_tokenizer_reproduces_its_card(card, figures, key):
    assert figures[key] == pytest.approx(card["eval"][key], abs=0.01), key


def test_readme_quotes_the_shipped_figures(card):
    readme = (ROOT / "README.md").read_text()
    for key in ("psnr", "psnr_luma", "psnr_chroma"):
        assert f"{card['eval'][key]:.2f} dB" in readme, key
    assert f"{100 * card['eval']['semantic_accuracy']:.1f} %" in readme


def test_shipped_tokenizer_is_the_tiny_preset(card):
    from dualtoken_lite import preset
    from dualtoken_lite.model.pretrained import load_config

    assert load_config(TOKENIZER) == preset("tiny").model  # a format-version-1 folder, read as it always was
    assert card["command"].startswith("python -m dualtoken_lite.train --preset tiny")
