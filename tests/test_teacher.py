"""The tiny world's teacher, a tiny SigLIP: the shipped weights reproduce their card, a random one is at chance,
loading is strict, training runs, and runs refuse to resume with another teacher."""

import dataclasses
import json
import os

import numpy as np
import pytest
import torch
from cli_helpers import same_tensors

from dualtoken_lite.evaluation.probes import measure_teacher
from dualtoken_lite.evaluation.zero_shot import attribute_accuracy, attribute_heads, attribute_labels
from dualtoken_lite.model.dualtoken import DualToken
from dualtoken_lite.settings import run_cli
from dualtoken_lite.tinyworld import caption_batches as CB
from dualtoken_lite.tinyworld import teacher as T
from dualtoken_lite.tinyworld.captions import CLASSIFIED
from dualtoken_lite.tinyworld.drawing import make_samples, to_tensor
from dualtoken_lite.tinyworld.paths import SHAPE_CLASSIFIER_DIR
from dualtoken_lite.tools import teacher as TT
from dualtoken_lite.training.loop import TOKENIZER_RUNS
from dualtoken_lite.training.presets import preset
from dualtoken_lite.training.run_folder import RunFolder, RunFolderError
from dualtoken_lite.training.run_plan import CONTROL
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


def test_the_shipped_teacher_is_the_default_recipe(card):
    # every setting the command has today is the one the shipped run used, so `teacher --out RUN` remakes it
    # (threads and the logging / saving cadence change the wall time, not the weights' recipe)
    cadence = ("threads", "eval_every", "eval_count", "save_every", "keep_checkpoints")
    for name, value in dataclasses.asdict(TT.TeacherConfig()).items():
        if name not in CONTROL and name not in cadence:
            assert card["recipe"][name] == (list(value) if isinstance(value, tuple) else value), name


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
    out = CB.dihedral(x, codes)
    assert torch.equal(out[0], torch.rot90(x[0], 1, dims=(1, 2)))
    assert torch.equal(out[1], torch.rot90(x[1], 2, dims=(1, 2)).flip(2))


def test_bad_settings_and_the_shipped_folder_are_refused_before_anything_is_written(tmp_path, capsys):
    shipped = sorted(T.TEACHER_DIR.rglob("*")) if T.TEACHER_DIR.exists() else None
    for args, fragment in [(["--augment", "mirror"], "augment='mirror'"),
                           (["--batch-size", "32", "--pool-size", "16"], "batch_size=32 exceeds pool_size=16"),
                           (["--peak-lr", "inf"], "peak_lr"),
                           (["--save-every", "-1"], "save_every=-1 must be >= 0"),
                           (["--prompts", "true", "--positives", "diagonal"], "prompts=True needs attribute keys")]:
        assert run_cli(TT.main, ["--out", str(tmp_path / "r"), *args]) == 2
        err = capsys.readouterr().err
        assert fragment in err and "Traceback" not in err, err
        assert not (tmp_path / "r").exists()
    for args in (["--out", str(T.TEACHER_DIR)], ["--out", str(T.TEACHER_DIR / "run")], ["--resume", str(T.TEACHER_DIR)]):
        assert run_cli(TT.main, args) == 2
        assert "shipped teacher's folder" in capsys.readouterr().err
    assert (sorted(T.TEACHER_DIR.rglob("*")) if T.TEACHER_DIR.exists() else None) == shipped  # not even a lock


def test_a_batch_marks_its_prompts_as_keyed():
    images, metas = make_samples(0, 8, "train")
    g = torch.Generator().manual_seed(0)
    batch = CB.CaptionedPool(images, metas).batch(torch.arange(8), g, True, prompts=True)
    n_prompts = sum(len(words) for words in CLASSIFIED.values())
    assert batch["keyed"].tolist() == [False] * (len(batch["texts"]) - n_prompts) + [True] * n_prompts
    assert (batch["owners"][batch["keyed"]] == -1).all()


def test_a_few_training_steps_run_and_log_zero_shot_accuracy():
    images, metas = make_samples(0, 16, "train")
    check_images, check_metas = make_samples(512, 8, "eval")
    cfg = TT.TeacherConfig(steps=4, batch_size=8, warmup_steps=2, pool_size=16, eval_every=4)
    lines = []
    model = TT.train_teacher(cfg, CB.CaptionedPool(images, metas), check_images, attribute_labels(check_metas),
                             log=lines.append)
    assert not model.training and any("zero-shot" in line and "background" in line for line in lines)
    assert model.logit_bias.item() != -10.0  # t' and b learn


# ------------------------------------------------------------------------------------------ the teacher's run folder
TINY = ["--steps", "4", "--batch-size", "8", "--pool-size", "16", "--warmup-steps", "2", "--eval-every", "2",
        "--eval-count", "8", "--save-every", "2", "--threads", "1"]  # seconds, not minutes


@pytest.fixture
def quick_card(monkeypatch):
    """The card's figures as zero-shot accuracy on 16 eval images: measure_teacher's probes read 4,096 training
    images (about a minute), and these tests are about the run folder, not the figures."""
    def zero_shot_only(folder):
        model = T.load_teacher(folder)
        images, metas = make_samples(0, 16, "eval")
        with torch.no_grad():
            pooled = model.encode_image(to_tensor(images))
        return {"zero_shot": attribute_accuracy(pooled, attribute_labels(metas), attribute_heads(model))}

    monkeypatch.setattr(TT, "measure_teacher", zero_shot_only)


def test_a_stopped_teacher_run_continues_bit_identically_with_the_command_it_prints(tmp_path, capsys, monkeypatch,
                                                                                    quick_card):
    import signal

    from safetensors.torch import load_file

    solo, stop = tmp_path / "solo", tmp_path / "stop"
    assert run_cli(TT.main, [*TINY, "--out", str(solo)]) == 0
    capsys.readouterr()
    batch, calls = CB.CaptionedPool.batch, {"n": 0}

    def stopped_in_step_3(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-step, as a scheduler's would
        return batch(self, *args, **kwargs)

    monkeypatch.setattr(CB.CaptionedPool, "batch", stopped_in_step_3)
    assert run_cli(TT.main, [*TINY, "--out", str(stop)]) == 4
    err = capsys.readouterr().err
    assert (f"stopped by SIGTERM after step 3: checkpoint {stop / 'checkpoints' / 'step_00000003'}; continue the run "
            f"with: python -m dualtoken_lite teacher --out {stop} --resume auto") in err
    assert not (stop / "model").exists() and not (stop / "summary.json").exists()
    monkeypatch.setattr(CB.CaptionedPool, "batch", batch)
    assert run_cli(TT.main, ["--out", str(stop), "--resume", "auto"]) == 0  # that command: the rest comes from config.json
    assert "resumed" in capsys.readouterr().out

    for run in (solo, stop):  # a teacher folder the tokenizer trainer takes as --teacher RUN/model
        assert T.load_teacher(run / "model").encode_image(torch.zeros(1, 3, 64, 64)).shape == (1, 128)
    assert same_tensors(load_file(str(solo / "model" / T.WEIGHTS_FILE)), load_file(str(stop / "model" / T.WEIGHTS_FILE)))
    for step in ("step_00000004",):  # the last checkpoint: float32 weights and the whole training state
        a, b = (solo / "checkpoints" / step, stop / "checkpoints" / step)
        assert same_tensors(load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors")))
        assert same_tensors(*(torch.load(r / "training_state.pt", weights_only=True) for r in (a, b)))
    metrics = [[{k: v for k, v in json.loads(line).items()} for line in (r / "metrics.jsonl").read_text().splitlines()]
               for r in (solo, stop)]
    assert metrics[0] == metrics[1] and [m["step"] for m in metrics[0]] == [2, 4]
    summaries = [json.loads((r / "summary.json").read_text()) for r in (solo, stop)]
    assert summaries[0]["fingerprint"] == summaries[1]["fingerprint"] == T.teacher_fingerprint(solo / "model")
    assert summaries[0]["step"] == 4 and summaries[0]["figures"] == summaries[1]["figures"]


def test_a_teacher_run_keeps_the_run_folder_promises(tmp_path, capsys, monkeypatch, quick_card):
    import signal

    from dualtoken_lite.training.run_lock import LOCK_NAME, RunLock

    run, held = tmp_path / "run", tmp_path / "held"
    lock = RunLock(held)  # another process training there (this one, as far as the lock can tell)
    lock.acquire("python -m dualtoken_lite teacher --out held")
    assert run_cli(TT.main, [*TINY, "--out", str(held)]) == 2
    assert f"in use by another run: PID {os.getpid()}" in capsys.readouterr().err
    assert [p.name for p in held.iterdir()] == [LOCK_NAME]  # the holder's folder is as it was
    lock.release()

    load_pool = TT.load_pool

    def interrupted(*args):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the pool is drawn, before training began
        return load_pool(*args)

    monkeypatch.setattr(TT, "load_pool", interrupted)
    assert run_cli(TT.main, [*TINY, "--out", str(run)]) == 130
    assert "before training began" in capsys.readouterr().err and not run.exists()  # nothing was written
    monkeypatch.setattr(TT, "load_pool", load_pool)

    assert run_cli(TT.main, [*TINY, "--out", str(run)]) == 0
    capsys.readouterr()
    assert run_cli(TT.main, [*TINY, "--out", str(run)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert run_cli(TT.main, ["--out", str(run), "--resume", "auto", "--peak-lr", "0.01"]) == 2
    assert "--peak-lr: the run has 0.001, the command line 0.01" in capsys.readouterr().err
    assert run_cli(TT.main, ["--out", str(run), "--resume", "auto"]) == 0
    assert "holds a finished teacher run" in capsys.readouterr().err
    assert run_cli(TT.main, ["--resume", str(run), "--steps", "5"]) == 0  # no --out: the run's own folder
    assert "steps changed from 4 to 5" in capsys.readouterr().err
    assert json.loads((run / "summary.json").read_text())["step"] == 5
    assert run_cli(TT.main, [*TINY, "--out", str(run), "--overwrite"]) == 0  # a bare --overwrite starts over
    assert json.loads((run / "summary.json").read_text())["step"] == 4
