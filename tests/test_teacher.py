"""The tiny world's teacher: the shipped weights keep their stated accuracy, the recipe's pieces behave, and its
trainer keeps every trainer's promises about its run folder (training/run_folder.py), tested at tiny size."""

import json
import os
import shlex
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_robustness import cli, holder_named, same_tensors, user_error

from dualtoken_lite import tinyworld as tw
from dualtoken_lite.settings import run_cli
from dualtoken_lite.tinyworld import teacher as T
from dualtoken_lite.tools import teacher as TT
from dualtoken_lite.training.optim import warmup_cosine
from dualtoken_lite.training.run_lock import LOCK_NAME, RunLock
from dualtoken_lite.training.setup import build_teacher

EVAL_SHARD = os.path.join(os.path.dirname(__file__), "..", "data", "tinyworld", "eval-0000.tar")


@pytest.fixture(scope="module")
def card():
    with open(os.path.join(T.TEACHER_DIR, T.CARD_FILE)) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def eval_split():
    return tw.load_split([EVAL_SHARD])


def test_shipped_teacher_reproduces_its_stated_accuracy(card, eval_split):
    torch.set_num_threads(1)
    trunk, head = T.load_teacher()
    images, labels = eval_split
    model = torch.nn.Sequential(trunk, head)
    acc = T.accuracy(model, images, labels)
    assert abs(acc - card["eval_shard_accuracy"]) <= 2 / len(labels)  # a couple of images, fp noise only
    assert card["eval_shard_accuracy"] >= 0.9  # the target for a useful teacher


def test_pixel_probe_reproduces_its_stated_figure_and_is_poor(card, eval_split):
    images, labels = eval_split
    probe = TT.pixel_probe_accuracy(card["pixel_probe"]["train_count"], images, labels)
    assert probe["ridge"] == card["pixel_probe"]["ridge"]
    assert abs(probe["eval_accuracy"] - card["pixel_probe"]["eval_accuracy"]) <= 2 / len(labels)
    assert probe["eval_accuracy"] < 0.35 < card["eval_shard_accuracy"] - 0.5  # shape, not pixels, is the class


def test_loaded_teacher_is_frozen_and_shaped():
    trunk, head = T.load_teacher()
    x = tw.to_tensor(tw.make_batch(0, 3, "eval")[0])
    emb = trunk(x)
    assert emb.shape == (3, 128) and head(emb).shape == (3, len(tw.CLASSES))
    assert not trunk.training and not head.training
    assert not any(p.requires_grad for p in [*trunk.parameters(), *head.parameters()])


def test_save_load_round_trip_and_strict_keys(tmp_path):
    torch.manual_seed(0)
    model = T.Teacher().eval()
    card = {"classes": list(tw.CLASSES), "backbone": TT.asdict(model.backbone)}
    TT.save_teacher(model, card, str(tmp_path))
    trunk, head = T.load_teacher(str(tmp_path))
    model.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})  # stored as float16
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(head(trunk(x)), model(x))
    from safetensors.torch import load_file, save_file

    weights = load_file(str(tmp_path / T.WEIGHTS_FILE))
    weights.pop("head.bias")
    save_file(weights, str(tmp_path / T.WEIGHTS_FILE))
    with pytest.raises(RuntimeError, match="head.bias"):
        T.load_teacher(str(tmp_path))


def test_missing_teacher_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m dualtoken_lite teacher"):
        T.load_teacher(str(tmp_path))


@pytest.mark.parametrize("warmup", [1, 10, 50])
def test_lr_schedule_warms_up_then_decays(warmup):
    cfg = TT.TeacherConfig(steps=200, warmup_steps=warmup, peak_lr=1e-3, final_lr_ratio=0.05)
    lrs = np.array([cfg.peak_lr * warmup_cosine(s, cfg.warmup_steps, cfg.steps, cfg.final_lr_ratio)
                    for s in range(cfg.steps + 1)])
    assert np.all(np.diff(lrs[:warmup]) > 0) and lrs[warmup - 1] == pytest.approx(1e-3)
    assert np.all(np.diff(lrs[warmup:]) <= 1e-12)
    assert lrs[-1] == pytest.approx(5e-5)


def test_dihedral_applies_one_of_the_eight_symmetries_per_image():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    views = [torch.rot90(x, k, dims=(2, 3)) for k in range(4)]
    views += [v.flip(3) for v in views]
    assert len({v[0].numpy().tobytes() for v in views}) == 8
    out = TT.dihedral(x, torch.Generator().manual_seed(0))
    for i in range(2):
        assert any(torch.equal(out[i], v[i]) for v in views)


def test_a_few_training_steps_run_and_log_held_out_accuracy():
    cfg = TT.TeacherConfig(steps=6, batch_size=8, warmup_steps=2, pool_size=16, eval_every=6, peak_lr=1e-3)
    images, labels = tw.make_batch(0, 8, "eval")
    lines = []
    model = TT.train_teacher(cfg, images, labels, log=lines.append)
    assert not model.training and any("eval acc" in line for line in lines)


# ------------------------------------------------------------------------------------------ the teacher's run folder
# Seconds, not minutes: 4 steps of 8 images from a pool of 16, a checkpoint every 2 steps, 16 held-out images.
TINY = ["--steps", "4", "--batch-size", "8", "--pool-size", "16", "--warmup-steps", "2", "--eval-every", "2",
        "--eval-count", "16", "--save-every", "2", "--threads", "1"]


def quick_figures(folder, eval_images, eval_labels) -> dict:
    """The card's figures as held-out accuracy on 16 images of the saved weights: measure_teacher's 8,192 images
    and pixel probe take a minute, and these tests are about the run folder, not the figures."""
    model = torch.nn.Sequential(*T.load_teacher(folder))
    return {"eval_shard_accuracy": T.accuracy(model, eval_images[:16], eval_labels[:16])}


@pytest.fixture
def quick_card(monkeypatch):
    monkeypatch.setattr(TT, "measure_teacher", quick_figures)


@pytest.fixture(scope="module")
def solo(tmp_path_factory) -> Path:
    """A finished tiny run, trained without interruption: the reference the other runs are compared with."""
    out = tmp_path_factory.mktemp("teacher") / "solo"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TT, "measure_teacher", quick_figures)
        assert run_cli(TT.main, [*TINY, "--out", str(out)]) == 0
    return out


def in_step(monkeypatch, step: int, fault) -> None:
    """Call ``fault(images)`` in the middle of step ``step``, where its batch is augmented (``dihedral``); what it
    returns is the augmented batch."""
    augment, calls = TT.dihedral, {"n": 0}

    def augment_with_fault(images, rng):
        calls["n"] += 1
        out = augment(images, rng)
        return fault(out) if calls["n"] == step else out

    monkeypatch.setattr(TT, "dihedral", augment_with_fault)


def send(signum: int):
    """A fault: ``signum`` to this process, as a scheduler's SIGTERM or a Ctrl-C arrives (at any moment)."""
    def fault(images):
        os.kill(os.getpid(), signum)
        return images

    return fault


def continue_as_printed(stderr: str) -> int:
    """Run the command a stop line prints (``... continue the run with: python -m dualtoken_lite teacher ...``)."""
    lines = [line for line in stderr.splitlines() if "continue the run with: " in line]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    argv = shlex.split(lines[0].split("continue the run with: ")[1])
    assert argv[:4] == ["python", "-m", "dualtoken_lite", "teacher"], argv
    return run_cli(TT.main, argv[4:])


def assert_same_run(run: Path, solo: Path) -> None:
    """``run`` holds what ``solo`` holds: the shipped teacher, the last checkpoint (float32 weights and the whole
    training state), config.json (but its folder), metrics.jsonl and the measured figures."""
    shipped = [load_file(str(r / "model" / T.WEIGHTS_FILE)) for r in (run, solo)]
    assert same_tensors(*shipped) and all(t.dtype == torch.float16 for t in shipped[0].values())
    last = [r / "checkpoints" / "step_00000004" for r in (run, solo)]
    weights = [load_file(str(c / "model.safetensors")) for c in last]
    assert same_tensors(*weights) and all(t.dtype == torch.float32 for t in weights[0].values())
    assert same_tensors(*(torch.load(c / "training_state.pt", weights_only=True) for c in last))
    configs = [json.loads((r / "config.json").read_text()) for r in (run, solo)]
    assert {**configs[0], "out": None} == {**configs[1], "out": None}
    metrics = [(r / "metrics.jsonl").read_text().splitlines() for r in (run, solo)]
    assert metrics[0] == metrics[1] and [json.loads(line)["step"] for line in metrics[0]] == [2, 4]
    summaries = [json.loads((r / "summary.json").read_text()) for r in (run, solo)]
    assert summaries[0]["step"] == 4 and summaries[0]["eval_shard_accuracy"] == summaries[1]["eval_shard_accuracy"]
    assert not (run / LOCK_NAME).exists()


def test_sigterm_mid_step_then_the_printed_command_equals_an_uninterrupted_run(solo, tmp_path, capsys,
                                                                               monkeypatch, quick_card):
    run, augment = tmp_path / "run", TT.dihedral
    in_step(monkeypatch, 3, send(signal.SIGTERM))
    assert run_cli(TT.main, [*TINY, "--out", str(run)]) == 4
    err = capsys.readouterr().err
    checkpoint = run / "checkpoints" / "step_00000003"  # step 3 is no save step: written for the stop
    assert (f"stopped by SIGTERM after step 3: checkpoint {checkpoint}; continue the run with: "
            f"python -m dualtoken_lite teacher --out {run} --resume auto") in err
    assert not (run / "model").exists() and not (run / "summary.json").exists() and not (run / LOCK_NAME).exists()
    monkeypatch.setattr(TT, "dihedral", augment)
    assert continue_as_printed(err) == 0  # the rest of the settings come from the run's config.json
    assert f"resumed {run} at step 3" in capsys.readouterr().err
    assert_same_run(run, solo)
    card = json.loads((run / "model" / T.CARD_FILE).read_text())
    assert card["resumed_from"] == str(checkpoint) and card["recipe"]["steps"] == 4


def test_the_run_s_model_folder_is_a_teacher_folder_for_the_tokenizer_trainer(solo):
    trunk, head = build_teacher(str(solo / "model"), None, tower_init="scratch")  # --teacher RUN/model
    x = tw.to_tensor(tw.make_batch(0, 2, "eval")[0])
    assert head(trunk(x)).shape == (2, len(tw.CLASSES))
    card = json.loads((solo / "model" / T.CARD_FILE).read_text())
    assert card["command"] == "OMP_NUM_THREADS=1 python -m dualtoken_lite teacher " + " ".join([*TINY, "--out", str(solo)])
    assert "out" not in card["recipe"] and card["recipe"]["pool_size"] == 16


def test_a_nan_loss_stops_with_exit_3_and_the_run_continues_from_its_last_good_checkpoint(solo, tmp_path, capsys,
                                                                                         monkeypatch, quick_card):
    run, augment = tmp_path / "run", TT.dihedral
    in_step(monkeypatch, 3, lambda images: images * float("nan"))
    assert run_cli(TT.main, [*TINY, "--out", str(run)]) == 3
    err = capsys.readouterr().err
    assert "non-finite loss at step 3" in err and "Traceback" not in err, err
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000002"
    assert not (run / "model").exists() and not (run / "summary.json").exists()
    monkeypatch.setattr(TT, "dihedral", augment)
    assert run_cli(TT.main, ["--out", str(run), "--resume", "auto"]) == 0
    assert_same_run(run, solo)


def test_a_second_start_on_a_folder_a_run_holds_is_refused_naming_it(tmp_path, capsys):
    held = tmp_path / "held"
    lock = RunLock(held)  # another run training there (this process, as far as the lock can tell)
    lock.acquire("python -m dualtoken_lite teacher --out held")
    try:
        for extra in ([], ["--resume", "auto"]):
            assert run_cli(TT.main, [*TINY, "--out", str(held), *extra]) == 2
            holder_named(capsys.readouterr().err, os.getpid())
            assert [p.name for p in held.iterdir()] == [LOCK_NAME]  # the holder's folder is as it was
    finally:
        lock.release()


def test_ctrl_c_while_the_pool_is_drawn_leaves_no_folder(tmp_path, capsys, monkeypatch):
    run, draw = tmp_path / "run", TT.generate_pool

    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C before training began: nothing to save, stop at once
        return draw(*args, **kwargs)

    monkeypatch.setattr(TT, "generate_pool", interrupted)
    assert run_cli(TT.main, [*TINY, "--out", str(run)]) == 130
    err = capsys.readouterr().err
    assert "stopped at once by Ctrl-C before training began" in err and "Traceback" not in err, err
    assert not run.exists()


def snapshot(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_an_existing_run_is_refused_and_a_changed_setting_on_resume_names_both_values(solo, capsys):
    before = snapshot(solo)
    assert run_cli(TT.main, [*TINY, "--out", str(solo)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert run_cli(TT.main, ["--out", str(solo), "--resume", "auto", "--peak-lr", "0.01", "--seed", "3"]) == 2
    err = capsys.readouterr().err
    assert "--peak-lr: the run has 0.001, the command line 0.01" in err and "--seed: the run has 0, the command line 3" in err
    assert len(err.strip().splitlines()) == 1
    assert snapshot(solo) == before


def test_a_finished_run_is_reported_and_a_longer_one_continues_it(solo, tmp_path, capsys, quick_card):
    run = tmp_path / "run"
    shutil.copytree(solo, run)
    before = snapshot(run)
    assert run_cli(TT.main, ["--out", str(run), "--resume", "auto"]) == 0
    assert "holds a finished teacher run" in capsys.readouterr().err
    assert snapshot(run) == before
    assert run_cli(TT.main, ["--resume", str(run), "--steps", "5"]) == 0  # no --out: the run's own folder
    assert "steps changed from 4 to 5" in capsys.readouterr().err
    assert json.loads((run / "summary.json").read_text())["step"] == 5
    assert json.loads((run / "config.json").read_text())["steps"] == 5


def test_a_bare_overwrite_starts_over(solo, tmp_path, capsys, quick_card):
    run = tmp_path / "run"
    shutil.copytree(solo, run)
    (run / "notes.txt").write_text("mine")  # a file no run writes: kept
    assert run_cli(TT.main, [*TINY, "--steps", "2", "--out", str(run), "--overwrite"]) == 0
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [2]
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_00000002"]
    assert json.loads((run / "summary.json").read_text())["step"] == 2 and (run / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("args, fragment", [
    (["--steps", "0"], "steps=0 must be >= 1"),
    (["--peak-lr", "inf"], "peak_lr=inf is not a finite number"),
    (["--peak-lr", "-0.1"], "peak_lr=-0.1 must be > 0"),
    (["--label-smoothing", "1.0"], "label_smoothing=1.0 must lie in [0, 1)"),
    (["--save-every", "-1"], "save_every=-1 must be >= 0"),
    (["--resume", "nowhere"], "--resume nowhere: no checkpoint there"),
])
def test_bad_settings_are_one_line_and_exit_2_before_anything_is_written(tmp_path, capsys, args, fragment):
    assert run_cli(TT.main, [*TINY, "--out", str(tmp_path / "run"), *args]) == 2
    err = capsys.readouterr().err
    assert fragment in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_a_flag_of_the_wrong_type_is_refused_by_the_command_line():
    result = cli("--steps", "many", "--out", "/nonexistent/run", command="teacher", timeout=120)
    user_error(result, "--steps: invalid int value: 'many'")
    result = cli("--bf16", "maybe", "--out", "/nonexistent/run", command="teacher", timeout=120)
    user_error(result, "'maybe' is not a boolean")


def test_the_shipped_folder_is_refused_before_anything_is_written(capsys):
    before = snapshot(T.TEACHER_DIR)
    for args in (["--out", str(T.TEACHER_DIR)], ["--out", str(T.TEACHER_DIR / "run")],
                 ["--resume", str(T.TEACHER_DIR)], ["--resume", str(T.TEACHER_DIR / "checkpoints" / "step_00000004")]):
        assert run_cli(TT.main, [*TINY, *args]) == 2
        err = capsys.readouterr().err
        assert "is the shipped teacher's folder" in err and "copy RUN/model/teacher.* there" in err, err
        assert len(err.strip().splitlines()) == 1
    assert snapshot(T.TEACHER_DIR) == before  # not even a lock file
    result = cli("--out", "data/teacher", command="teacher", timeout=120)  # the real command line, from the repo
    user_error(result, "--out data/teacher is the shipped teacher's folder")
