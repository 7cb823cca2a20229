"""Careless or hostile input: nothing hangs, nothing is overwritten or mixed, two runs never share a folder, nothing
non-finite is saved, a link loop repeats no image, and every user error ends in one or two lines on stderr with exit
code 2 (a bug still shows its traceback). Stops by signal and full disks: tests/test_train.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from cli_helpers import same_tensors
from PIL import Image
from safetensors.torch import load_file, save_file

from dualtoken_lite.model.config import model_preset
from dualtoken_lite.model.dualtoken import DualToken
from dualtoken_lite.model.pretrained import CheckpointError
from dualtoken_lite.settings import ConfigError, UserError, run_cli
from dualtoken_lite.tinyworld.drawing import make_sample
from dualtoken_lite.tinyworld.shards import encode_png
from dualtoken_lite.training.arguments import parse_args

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--preset", "tiny", "--teacher", "backbone", "--batch_size", "4", "--threads", "1",
        "--model.pixel_quantizer.codebook_size", "64", "--model.semantic_quantizer.codebook_size", "64",
        "--log_every", "1", "--image_every", "0", "--eval_every", "0", "--eval-data", "none"]


def shard(path: Path, good: int, bad: int = 0, split: str = "train") -> str:
    """A WebDataset shard of ``good`` decodable samples followed by ``bad`` corrupt ones."""
    with wds.TarWriter(str(path)) as sink:
        for i in range(good + bad):
            image, meta = make_sample(i, split)
            png = encode_png(image) if i < good else b"not a png"
            sink.write({"__key__": f"{split}-{i:05d}", "png": png, "cls": str(meta["label"]).encode()})
    return str(path)


def quiet_env(**extra: str) -> dict:
    """One thread, offline, user errors without tracebacks."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **extra}
    env.pop("DUALTOKEN_LITE_TRACEBACK", None)
    return env


def cli(*args: str, command: str = "train", timeout: int = 240) -> subprocess.CompletedProcess:
    """``python -m dualtoken_lite COMMAND ARGS`` in a fresh process, one thread, offline."""
    return subprocess.run([sys.executable, "-m", "dualtoken_lite", command, *args], cwd=ROOT, env=quiet_env(),
                          capture_output=True, text=True, timeout=timeout)


def user_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """The run ended as a user error: exit 2, no traceback, a message holding every fragment."""
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr[-2000:])
    return result.stderr


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("robust")
    empty = root / "empty.tar"
    with wds.TarWriter(str(empty)):
        pass
    return {"good": shard(root / "good.tar", 16), "few": shard(root / "few.tar", 3),
            "bad": shard(root / "bad.tar", 0, 12),
            "empty": str(empty)}


# ------------------------------------------------------------------------------------------ 1. no hang on data
@pytest.mark.parametrize("kind, fragments", [
    ("few", ["3 samples", "needs 4 good"]),
    ("empty", ["0 samples"]),
    ("bad", ["12 samples", "12 of them skipped", "needs 4 good"]),
])
def test_data_that_cannot_fill_a_batch_is_an_error_not_a_hang(data, tmp_path, kind, fragments):
    result = cli(*FAST, "--train-data", data[kind], "--max_steps", "3", "--out", str(tmp_path / "run"), timeout=120)
    err = user_error(result, data[kind], *fragments)
    assert err.count("skipping sample") <= 10  # warnings stay few
    assert not (tmp_path / "run").exists()  # nothing written: the corrected retry is a new run, not "already a run"


# ---------------------------------------------------------------------------------- 2, 3. run folders, resume
# A short run, as `make demo` starts one (--resume auto); deterministic, so that two runs of it are bit-identical.
SHORT = [*FAST, "--max_steps", "4", "--save_every", "2", "--deterministic", "true", "--resume", "auto"]


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory) -> Path:
    """A finished run, trained alone: the reference of the two-trainer races."""
    out = tmp_path_factory.mktemp("finished") / "run"
    result = cli(*SHORT, "--train-data", data["good"], "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    return out


# ------------------------------------------------------------------------------------ 1. one owner per folder
@pytest.fixture
def trainers(tmp_path):
    """Start trainers in fresh processes with a fault of tests/train_with_fault.py (``wait-after-step:N`` holds one
    still after step N until the file ``go`` exists); whatever the test's outcome, none is left behind."""
    go, started = tmp_path / "go", []

    def start(args: list[str], fault: str) -> subprocess.Popen:
        started.append(subprocess.Popen([sys.executable, str(ROOT / "tests" / "train_with_fault.py"), fault, *args],
                                        cwd=ROOT, env=quiet_env(FAULT_GO=str(go)), stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True))
        return started[-1]

    yield start, go
    go.touch()
    for process in started:
        if process.poll() is None:
            process.kill()
            process.communicate()


def assert_same_run(run: Path, solo: Path) -> None:
    """``run`` holds what the solo run holds: weights, checkpoints (weights and training state), config.json (but
    its folder) and metrics (but their timing)."""
    for folder in ("model", *(f"checkpoints/{p.name}" for p in (solo / "checkpoints").glob("step_*"))):
        a, b = load_file(str(run / folder / "model.safetensors")), load_file(str(solo / folder / "model.safetensors"))
        assert same_tensors(a, b), f"{folder}: weights differ"
    steps = sorted(p.name for p in (solo / "checkpoints").glob("step_*"))
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == steps
    for step in steps:
        state = [torch.load(r / "checkpoints" / step / "training_state.pt", weights_only=True) for r in (run, solo)]
        assert same_tensors(*state), f"{step}: training state differs"
    configs = [json.loads((r / "config.json").read_text()) for r in (run, solo)]
    assert {**configs[0], "out": None} == {**configs[1], "out": None}
    metrics = [[{k: v for k, v in json.loads(line).items() if k != "images_per_s"}
                for line in (r / "metrics.jsonl").read_text().splitlines()] for r in (run, solo)]
    assert metrics[0] == metrics[1]
    assert json.loads((run / "summary.json").read_text()) == json.loads((solo / "summary.json").read_text())
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in solo.iterdir())  # no lock, no temporary


def holder_named(stderr: str, pid: int) -> None:
    assert f"in use by another run: PID {pid} on host {socket.gethostname()}" in stderr, stderr[-2000:]


def test_two_trainers_started_together_on_one_folder_one_trains(data, finished, tmp_path, trainers):
    (trainer, go), out = trainers, tmp_path / "run"
    args = [*SHORT, "--train-data", data["good"], "--out", str(out)]
    both = [trainer(args, "wait-after-step:1") for _ in range(2)]  # the winner waits after step 1 for `go`
    deadline = time.monotonic() + 240
    while all(p.poll() is None for p in both) and time.monotonic() < deadline:
        time.sleep(0.05)
    loser = next(p for p in both if p.poll() is not None)
    winner = next(p for p in both if p is not loser)
    _, err = loser.communicate()
    assert loser.returncode == 2 and "Traceback" not in err, err[-2000:]
    holder_named(err, winner.pid)
    go.touch()
    _, err = winner.communicate(timeout=240)
    assert winner.returncode == 0, err[-2000:]
    assert_same_run(out, finished)


def test_a_trainer_started_while_another_trains_is_refused_and_changes_nothing(data, finished, tmp_path, trainers):
    (trainer, go), out = trainers, tmp_path / "run"
    args = [*SHORT, "--train-data", data["good"], "--out", str(out)]
    first = trainer(args, "wait-after-step:2")
    while not (out / "metrics.jsonl").is_file() and first.poll() is None:  # training: step 1 is logged
        time.sleep(0.05)
    second = cli(*args)  # what a second terminal typing `make demo` runs
    user_error(second, "in use by another run", "Wait for it to end")
    holder_named(second.stderr, first.pid)
    go.touch()
    _, err = first.communicate(timeout=240)
    assert first.returncode == 0, err[-2000:]
    assert_same_run(out, finished)


def snapshot(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in folder.rglob("*")}


def test_a_second_start_on_the_same_folder_is_refused_and_changes_nothing(data, finished):
    before = snapshot(finished)
    result = cli(*FAST, "--train-data", data["good"], "--max_steps", "4", "--out", str(finished))
    user_error(result, "already holds a run", "--resume", "--overwrite")
    assert snapshot(finished) == before


def test_resume_auto_on_a_finished_run_reports_it(data, finished):
    before = snapshot(finished)
    result = cli(*FAST, "--train-data", data["good"], "--max_steps", "4", "--out", str(finished), "--resume", "auto")
    assert result.returncode == 0 and "finished run" in result.stderr, result.stderr[-2000:]
    assert snapshot(finished) == before


@pytest.mark.parametrize("flag, value", [("--lr", "0.01"), ("--batch_size", "2"), ("--seed", "3"),
                                         ("--train-data", "other.tar")])
def test_resume_with_a_changed_setting_is_refused_with_both_values(data, finished, flag, value):
    before = snapshot(finished)
    result = cli(*FAST, "--train-data", data["good"], "--out", str(finished), "--resume", str(finished), flag, value)
    user_error(result, "differ", value)
    assert snapshot(finished) == before


def test_resume_may_extend_max_steps_and_records_it(data, finished, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    result = cli(*FAST, "--train-data", data["good"], "--out", str(run), "--resume", str(run), "--max_steps", "6")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "max_steps changed from 4 to 6" in result.stderr
    assert json.loads((run / "config.json").read_text())["max_steps"] == 6
    assert json.loads((run / "summary.json").read_text())["step"] == 6


def test_overwrite_replaces_the_run_cleanly(data, finished, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    result = cli(*FAST, "--train-data", data["good"], "--out", str(run), "--max_steps", "2", "--save_every", "1",
                 "--overwrite", "true")
    assert result.returncode == 0, result.stderr[-2000:]
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and max(steps) == 2  # no line of the old run left
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_00000001", "step_00000002"]


def test_explicit_resume_of_a_run_without_checkpoint_says_what_to_do(data, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    result = cli(*FAST, "--train-data", data["good"], "--out", str(run), "--resume", str(run))
    user_error(result, "no checkpoint", "--resume auto")


def test_a_checkpoints_path_that_is_a_file_is_refused_before_work(data, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoints").write_text("")
    result = cli(*FAST, "--train-data", data["good"], "--out", str(run), "--overwrite", "true")
    user_error(result, "not a folder")


# ----------------------------------------------------------------------------------------- 4. non-finite
@pytest.mark.parametrize("flag, value", [("--lr", "inf"), ("--lr", "nan"), ("--beta1", "nan"),
                                         ("--loss.recon_weight", "inf")])
def test_non_finite_hyperparameters_are_refused_at_config_time(flag, value):
    with pytest.raises(ConfigError, match="finite"):
        parse_args([flag, value])


def test_non_finite_weights_are_never_saved(data, tmp_path):
    out = tmp_path / "run"
    script = ("import torch, sys\n"
              "from dualtoken_lite.settings import run_cli\n"
              "from dualtoken_lite.training.loop import RunHooks, main\n"
              "import dualtoken_lite.training.loop as L\n"
              "orig = L.build_trainer\n"
              "def build(cfg, world):\n"
              "    tr = orig(cfg, world)\n"
              "    def poison(step):\n"
              "        if step == 4:\n"
              "            with torch.no_grad(): tr.model.decoder.conv_out.weight.fill_(float('inf'))\n"
              "    hooks.after_step = poison\n"
              "    return tr\n"
              "L.build_trainer = build\n"
              "hooks = RunHooks()\n"
              "sys.exit(run_cli(lambda argv: main(argv, hooks), sys.argv[1:]))\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script, *FAST, "--train-data", data["good"], "--max_steps", "4",
                             "--save_every", "2", "--out", str(out)], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == 3 and "NaN or inf" in result.stderr, result.stderr[-2000:]
    assert not (out / "model").exists() and not (out / "summary.json").exists()
    assert [p.name for p in (out / "checkpoints").glob("step_*")] == ["step_00000002"]  # the last good one


# --------------------------------------------------------------------------------------- 5, 6. files
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    cfg = model_preset("tiny")
    cfg.pixel_quantizer.codebook_size = cfg.semantic_quantizer.codebook_size = 64
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("model") / "m"
    DualToken(cfg).eval().save_pretrained(folder)
    return folder


def codes_file(path: Path, pixel: torch.Tensor, names: list[str]) -> str:
    save_file({"pixel_codes": pixel}, str(path), metadata={"names": json.dumps(names)})
    return str(path)


@pytest.mark.parametrize("kind", ["short_names", "float", "bool"])
def test_tokens_decode_refuses_what_it_would_lose_or_invent(model_dir, tmp_path, kind):
    pixel = torch.randint(0, 64, (2, 8, 8, 8), dtype=torch.int32)
    names = ["a", "b"]
    if kind == "short_names":
        names = ["a"]
    elif kind == "float":
        pixel = pixel.float() + 0.5
    else:
        pixel = pixel > 3
    path = codes_file(tmp_path / "codes.safetensors", pixel, names)
    result = cli("decode", str(model_dir), path, "--out", str(tmp_path / "out"), command="tokens")
    fragments = {"short_names": ["1 names for 2 code maps"], "float": ["torch.float32"], "bool": ["torch.bool"]}
    user_error(result, *fragments[kind])
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_tokens_shard_without_its_json_member_is_named(model_dir, tmp_path):
    path = tmp_path / "codes.tar"
    with wds.TarWriter(str(path)) as sink:
        buffer = __import__("io").BytesIO()
        np.save(buffer, np.zeros((8, 8, 8), dtype=np.int32))
        sink.write({"__key__": "00000000", "pixel.npy": buffer.getvalue()})
    result = cli("decode", str(model_dir), str(path), "--out", str(tmp_path / "out"), command="tokens")
    user_error(result, "no json member")


@pytest.mark.parametrize("field, value, expected", [("image_size", "64", "expected int"),
                                                    ("patch_size", 8.0, "expected int"),
                                                    ("width", True, "expected int")])
def test_config_json_with_wrong_types_is_refused_with_the_field(model_dir, tmp_path, field, value, expected):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["model"]["backbone"][field] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=rf"backbone\.{field}={value!r}.*{expected}"):
        DualToken.from_pretrained(folder)


def test_pixel_layer_as_float_is_refused(model_dir, tmp_path):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["model"]["pixel_layer"] = 2.0
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="pixel_layer=2.0"):
        DualToken.from_pretrained(folder)


def test_float64_weights_are_cast_and_give_the_same_model(model_dir, tmp_path):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(model_dir, folder)
    state = load_file(str(folder / "model.safetensors"))
    save_file({k: v.double() if v.is_floating_point() else v for k, v in state.items()},
              str(folder / "model.safetensors"))
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        a = DualToken.from_pretrained(model_dir)(x).reconstruction
        b = DualToken.from_pretrained(folder)(x).reconstruction
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("content", [b"", b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":"])
def test_a_truncated_weights_file_is_named(model_dir, tmp_path, content):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(model_dir, folder)
    (folder / "model.safetensors").write_bytes(content)
    with pytest.raises(CheckpointError, match=str(folder / "model.safetensors")):
        DualToken.from_pretrained(folder)


# ------------------------------------------------------------------------------------------ links in folders
def test_a_link_loop_gives_each_tool_one_image(model_dir, tmp_path, capsys):
    """``sub/up -> ..`` beside one image: followed blindly it is 41 images (40 levels of links) to every tool."""
    from dualtoken_lite.tools import evaluate, reconstruct, tokens

    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(make_sample(0, "eval")[0]).save(folder / "a.png")
    (folder / "sub" / "up").symlink_to("..")
    assert run_cli(reconstruct.main, [str(model_dir), str(folder), str(folder / "a.png"), "--out",
                                      str(tmp_path / "rec"), "--device", "cpu"]) == 0
    assert [p.name for p in (tmp_path / "rec").glob("*_recon.png")] == ["a_recon.png"]
    assert "1 input path(s) led to a file already read" in capsys.readouterr().err  # a.png named twice
    assert run_cli(evaluate.main, [str(model_dir), "--data", str(folder), "--device", "cpu", "--teacher", "none",
                                   "--json", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["images"] == 1
    assert run_cli(tokens.main, ["encode", str(model_dir), str(folder), "--out", str(tmp_path / "c.safetensors"),
                                 "--device", "cpu"]) == 0
    assert json.loads(safe_open_names(tmp_path / "c.safetensors")) == [str(folder / "a.png")]


def safe_open_names(path: Path) -> str:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.metadata()["names"]


# ----------------------------------------------------------------------------------------- 7. small ones
@pytest.mark.parametrize("flag, value, fragment", [("--model.backbone.patch_size", "0", "patch_size=0"),
                                                   ("--threads", "0", "threads=0"),
                                                   ("--image-every", "-1", "image_every=-1")])
def test_small_bad_flags_are_refused(flag, value, fragment):
    with pytest.raises(ConfigError, match=fragment):
        parse_args([flag, value])


def test_skipped_samples_are_totalled_over_the_run(data, tmp_path):
    out = tmp_path / "run"
    mixed = shard(tmp_path / "mixed.tar", 8, 2)  # 10 samples, 2 bad, two epochs of two batches each
    result = cli(*FAST, "--train-data", mixed, "--max_steps", "4", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((out / "summary.json").read_text())["data_skipped"] == 4  # 2 per epoch, 2 epochs


def test_train_help_lists_the_flags():
    result = cli("--help")
    assert result.returncode == 0 and "--max_steps" in result.stdout and "--model.pixel_layer" in result.stdout


# --------------------------------------------------------------------------------------- errors speak
@pytest.mark.parametrize("argv, fragment", [
    ("evaluate {model} --data tinyworld-eval --max-images 0", "--max-images must be >= 1"),
    ("reconstruct {model} {tmp}/photos --out {tmp}/file", "--out {tmp}/file is a file"),
    ("reconstruct {model} {tmp}/photos --out {tmp}/r --batch-size 0", "--batch-size must be >= 1"),
    ("tokens encode {model} {tmp}/photos --out {tmp}/codes.xyz", "the file type must be"),
    ("tokens encode {model} {tmp}/photos --out {tmp}/file/codes.npy", "{tmp}/file is not a writable folder"),
    ("tokens decode {model} {tmp}/none.safetensors --out {tmp}/d", "none.safetensors does not exist"),
    ("tinyworld --out {tmp}/file/shards", "{tmp}/file is not a writable folder"),
    ("train --out {tmp}/file/run", "{tmp}/file is a file"),
    ("train_unified --loop.steps 0", "loop.steps=0 must be >= 1"),
    ("train_unified --out {tmp}/file", "{tmp}/file exists and is not a folder"),
    ("generate data/unified/both --prompt a-star --out {tmp}/g --tokenizer {tmp}/photos",
     "no model.safetensors there"),
    ("caption data/unified/both {tmp}/photos --question size", "invalid choice: 'size'"),
    ("unified_results --runs {tmp}/none --out {tmp}/u", "no finished unified run found"),
    ("ablation --nonsense 1", "has no field 'nonsense'"),
])
def test_every_command_says_a_user_error_in_one_line(model_dir, tmp_path, capsys, argv, fragment):
    """Before any work: one line (argparse's own errors: its usage, then one error line), exit 2, no traceback."""
    from dualtoken_lite.__main__ import run

    (tmp_path / "file").write_text("")
    (tmp_path / "photos").mkdir()
    Image.fromarray(make_sample(0, "eval")[0]).save(tmp_path / "photos" / "a.png")
    try:
        code = run(argv.format(model=model_dir, tmp=tmp_path).split())
    except SystemExit as stop:  # argparse's own errors
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2 and fragment.format(tmp=tmp_path) in err, err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 or (lines[0].startswith("usage:") and ": error: " in lines[-1]), err



def test_user_errors_are_one_line_and_bugs_keep_their_traceback(capsys, monkeypatch):
    def bad_flag(argv):
        raise ConfigError("lr=-1 must be > 0")

    assert run_cli(bad_flag) == 2 and capsys.readouterr().err.strip() == "error: lr=-1 must be > 0"

    def bug(argv):
        raise KeyError("an internal mistake")

    with pytest.raises(KeyError):
        run_cli(bug)
    monkeypatch.setenv("DUALTOKEN_LITE_TRACEBACK", "1")
    with pytest.raises(UserError):
        run_cli(bad_flag)


# ------------------------------------------------------------------------------------------- distributed
def test_a_rank_without_good_samples_stops_every_rank(data, tmp_path):
    pattern = str(tmp_path / "part-{0000..0001}.tar")
    shard(tmp_path / "part-0000.tar", 16)
    shard(tmp_path / "part-0001.tar", 0, 16)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "dualtoken_lite.train", *FAST, "--train-data", pattern, "--max_steps", "6", "--out", str(tmp_path / "r")]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode != 0
    assert "no batch" in result.stderr or "ran out of training data" in result.stderr, result.stderr[-3000:]
