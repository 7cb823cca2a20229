"""The tiny world's teacher, a tiny SigLIP: the shipped weights reproduce their card, a random one is at chance,
loading is strict, training runs, and runs refuse to resume with another teacher."""

import dataclasses
import json
import os

import numpy as np
import pytest
import torch

from dualtoken_lite.evaluation.probes import measure_teacher
from dualtoken_lite.evaluation.zero_shot import attribute_accuracy, attribute_heads, attribute_labels
from dualtoken_lite.model.dualtoken import DualToken
from dualtoken_lite.tinyworld import teacher as T
from dualtoken_lite.tinyworld.captions import CLASSIFIED
from dualtoken_lite.tinyworld.drawing import make_samples, to_tensor
from dualtoken_lite.tinyworld.paths import SHAPE_CLASSIFIER_DIR
from dualtoken_lite.tools import teacher as TT
from dualtoken_lite.training.loop import TOKENIZER_RUNS
from dualtoken_lite.training.presets import preset
from dualtoken_lite.training.run_folder import RunFolder, RunFolderError
from dualtoken_lite.training.teacher_record import (
    TEACHER_RECORD,
    check_same_teacher,
    record_text,
    teacher_record,
)


@pytest.fixture(scope="module")
def card():
    with open(os.path.join(T.TEACHER_DIR, T.CARD_FILE)) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def measured():
    torch.set_num_threads(1)
    return measure_teacher()  # the shipped weights, eval images 0-511


def test_shipped_teacher_reproduces_its_card(card, measured):
    stated = card["figures"]
    for attribute in CLASSIFIED:  # zero-shot and the probe ceiling: a couple of images of fp noise at most
        assert measured["zero_shot"][attribute] == pytest.approx(stated["zero_shot"][attribute], abs=2 / 512)
        assert measured["probe"][attribute] == pytest.approx(stated["probe"][attribute], abs=3 / 512)
    assert measured["retrieval"]["r1"] == pytest.approx(stated["retrieval"]["r1"], abs=2 / 512)
    assert measured["retrieval"]["chance"] == pytest.approx(stated["retrieval"]["chance"], abs=1e-9)
    for layer, figures in stated["patch_probe"].items():
        assert measured["patch_probe"][layer]["chroma"] == pytest.approx(figures["chroma"], abs=0.02)
    assert T.teacher_fingerprint() == card["fingerprint"]


def test_shipped_teacher_meets_its_targets(card):
    stated = card["figures"]
    floors = {"shape": 0.95, "colour": 0.90, "fill": 0.80, "background": 0.85}
    for attribute, floor in floors.items():  # a floor gives way only below the probe's ceiling, within 3 points
        zero_shot, ceiling = stated["zero_shot"][attribute], stated["probe"][attribute]
        assert zero_shot >= floor or (ceiling < floor and zero_shot >= ceiling - 0.03), attribute
    assert stated["retrieval"]["r1"] > 10 * stated["retrieval"]["chance"]
    assert stated["patch_probe"]["2"]["chroma"] >= 35.2  # colour survives block 2 (an 8 x 8 thumbnail's chroma)


def test_a_random_teacher_is_near_chance():
    torch.manual_seed(0)
    model = T.TinySigLIP().eval()
    images, metas = make_samples(512, 256, "eval")
    with torch.no_grad():
        acc = attribute_accuracy(model.encode_image(to_tensor(images)), attribute_labels(metas), attribute_heads(model))
    for attribute, words in CLASSIFIED.items():  # chance 1/K, or the majority share if it guesses one class
        labels = attribute_labels(metas)[attribute]
        majority = np.bincount(labels, minlength=len(words)).max() / len(labels)
        assert acc[attribute] <= max(majority, 1 / len(words)) + 0.08, (attribute, acc[attribute])


def test_loaded_teacher_is_frozen_and_shaped():
    model = T.load_teacher()
    x = to_tensor(make_samples(0, 3, "eval")[0])
    from dualtoken_lite.tinyworld.vocabulary import VOCABULARY

    assert model.encode_image(x).shape == (3, 128) and model.encode_text(VOCABULARY(["a star"])).shape == (1, 128)
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_save_load_round_trip_and_strict_keys(tmp_path):
    torch.manual_seed(0)
    model = T.TinySigLIP().eval()
    fingerprint = T.save_teacher(model, {}, tmp_path)
    loaded = T.load_teacher(tmp_path)
    model.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})  # stored as float16
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(loaded.encode_image(x), model.encode_image(x))
    assert T.teacher_fingerprint(tmp_path) == fingerprint
    from safetensors.torch import load_file, save_file

    weights = load_file(str(tmp_path / T.WEIGHTS_FILE))
    weights.pop("logit_bias")
    save_file(weights, str(tmp_path / T.WEIGHTS_FILE))
    with pytest.raises(RuntimeError, match="logit_bias"):
        T.load_teacher(tmp_path)


def test_missing_or_text_less_teacher_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m dualtoken_lite teacher"):
        T.load_teacher(tmp_path)
    with pytest.raises(ValueError, match="without a text tower"):
        T.load_teacher(SHAPE_CLASSIFIER_DIR)


def test_a_resumed_run_refuses_another_teacher(tmp_path):
    torch.manual_seed(0)
    first, second = tmp_path / "t1", tmp_path / "t2"
    T.save_teacher(T.TinySigLIP(), {}, first)
    T.save_teacher(T.TinySigLIP(), {}, second)  # other random weights: another fingerprint
    run = tmp_path / "run"
    run.mkdir()
    (run / TEACHER_RECORD).write_text(json.dumps(teacher_record(str(first))))
    check_same_teacher(run, str(first))  # the same weights, under any folder name
    with pytest.raises(RunFolderError, match="was trained with teacher"):
        check_same_teacher(run, str(second))
    (run / TEACHER_RECORD).unlink()
    with pytest.raises(RunFolderError, match="does not say which teacher"):
        check_same_teacher(run, str(first))
    check_same_teacher(run, "backbone")  # a paper-scale teacher comes with the run's own config


def test_a_tokenizer_run_records_its_teacher_and_a_resume_with_other_weights_is_refused(tmp_path):
    """Through the tokenizer trainer's run-folder rules: teacher.json is written at begin (not before), and a resume
    whose --teacher folder now holds other weights is refused before anything is written, naming both."""
    torch.manual_seed(0)
    teacher, run = tmp_path / "teacher", tmp_path / "run"
    first = T.save_teacher(T.TinySigLIP(), {}, teacher)
    cfg = dataclasses.replace(preset("tiny"), out=str(run), teacher=str(teacher))
    with RunFolder(cfg, TOKENIZER_RUNS) as folder:
        assert not (run / TEACHER_RECORD).exists()  # nothing is written before begin
        folder.begin(record_text(cfg.teacher))
        assert json.loads((run / TEACHER_RECORD).read_text()) == {"teacher": str(teacher), "fingerprint": first}
        folder.save_checkpoint(1, DualToken(cfg.model), {}, keep=1)
    again = dataclasses.replace(cfg, resume="auto")
    with RunFolder(again, TOKENIZER_RUNS) as folder:
        assert folder.plan.action == "resume"  # the same weights: the run goes on
    second = T.save_teacher(T.TinySigLIP(), {}, teacher)  # the same folder now holds other weights
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(RunFolderError, match=f"trained with teacher {first} .* now holds teacher {second}"):
        with RunFolder(again, TOKENIZER_RUNS):
            pass
    assert sorted(p.name for p in run.iterdir()) == before


def test_dihedral_applies_the_symmetry_each_code_names():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    codes = torch.tensor([1, 6])
    out = TT.dihedral(x, codes)
    assert torch.equal(out[0], torch.rot90(x[0], 1, dims=(1, 2)))
    assert torch.equal(out[1], torch.rot90(x[1], 2, dims=(1, 2)).flip(2))


def test_bad_settings_and_the_shipped_folder_are_refused(tmp_path, capsys):
    assert TT.main(["--out", str(tmp_path / "r"), "--augment", "mirror"]) == 2
    assert "augment='mirror'" in capsys.readouterr().err
    assert TT.main(["--out", str(T.TEACHER_DIR)]) == 2
    assert "shipped teacher's folder" in capsys.readouterr().err


def test_a_few_training_steps_run_and_log_zero_shot_accuracy():
    images, metas = make_samples(0, 16, "train")
    check_images, check_metas = make_samples(512, 8, "eval")
    cfg = TT.TeacherConfig(steps=4, batch_size=8, warmup_steps=2, pool_size=16, eval_every=4)
    lines = []
    model = TT.train_teacher(cfg, TT.CaptionedPool(images, metas), check_images, attribute_labels(check_metas),
                             log=lines.append)
    assert not model.training and any("zero-shot" in line and "background" in line for line in lines)
    assert model.logit_bias.item() != -10.0  # t' and b learn
