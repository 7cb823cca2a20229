"""The run folder's parts, in one process: its lock, the temporary-file sweep, atomic folder writes on a full disk,
stop signals, and image folders with links (each real file once). The trainers' use of them, in separate processes,
is tests/test_robustness.py and tests/test_train.py."""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image

from dualtoken_lite.datasets.sources import list_folder, walk_files
from dualtoken_lite.settings import (
    WriteFailed,
    left_behind,
    os_error_of,
    remove_left_behind,
    temporary_sibling,
)
from dualtoken_lite.training import checkpoints
from dualtoken_lite.training.checkpoints import latest_checkpoint, save_checkpoint, write_folder
from dualtoken_lite.training.interrupts import Interrupted, StopSignals
from dualtoken_lite.training.run_folder import RunFolder, RunFolderError, RunRules
from dualtoken_lite.training.run_lock import LOCK_NAME, RunLock


def ended_pid() -> int:
    """The PID of a process that has ended (the kernel does not hand it out again at once)."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(child.stdout)


# ------------------------------------------------------------------------------------------------------- the lock
def test_a_second_lock_is_refused_naming_the_holder(tmp_path):
    first, second = RunLock(tmp_path / "run"), RunLock(tmp_path / "run")
    assert first.acquire("python -m dualtoken_lite.train --out run") is None
    with pytest.raises(RunFolderError, match=rf"in use by another run: PID {os.getpid()} on host "
                                             rf"{socket.gethostname()} .*--out run"):
        second.acquire("another")
    first.release()
    assert not (tmp_path / "run" / LOCK_NAME).exists()  # released: the file goes
    assert second.acquire("another") is None
    second.release()


def test_a_lock_left_by_a_dead_process_is_taken_over_with_a_note(tmp_path):
    dead = {"pid": ended_pid(), "host": socket.gethostname(), "started": "then", "command": "killed -9"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(dead))
    lock = RunLock(tmp_path)
    note = lock.acquire("me")
    assert note is not None and f"PID {dead['pid']}" in note and "has ended" in note
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()


def test_a_lock_file_of_another_host_is_refused_with_what_to_do(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 7, "host": "elsewhere", "started": "?", "command": "?"}))
    with pytest.raises(RunFolderError, match=r"host elsewhere.*cannot see.*delete"):
        RunLock(tmp_path).acquire("me")
    assert (tmp_path / LOCK_NAME).is_file()  # left for the user to judge


RULES = RunRules(command="python -m probe", files=("config.json", "checkpoints", "model", "summary.json"),
                 resumable=("steps",), load_config=lambda folder: None, total_steps=lambda cfg: None)


@dataclass
class ProbeConfig:
    """The three fields the run-folder code reads, and one setting (a stand-in for a trainer's config)."""

    out: str
    resume: str | None = None
    overwrite: bool = False
    steps: int = 3


def test_a_refused_start_leaves_no_folder_and_no_lock(tmp_path):
    with pytest.raises(RunFolderError, match="no checkpoint there"):
        with RunFolder(ProbeConfig(str(tmp_path / "new"), resume=str(tmp_path / "new")), RULES):
            pass
    assert not (tmp_path / "new").exists()


def test_a_folder_of_unrelated_files_is_not_a_run(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with RunFolder(ProbeConfig(str(tmp_path)), RULES) as folder:
        assert folder.plan.action == "new" and (tmp_path / LOCK_NAME).is_file()
        folder.begin()
    assert (tmp_path / "notes.txt").read_text() == "mine" and (tmp_path / "config.json").is_file()
    assert not (tmp_path / LOCK_NAME).exists()


# -------------------------------------------------------------------------------------------- temporaries
def test_the_sweep_removes_only_temporaries_of_this_process_or_dead_ones(tmp_path):
    host = socket.gethostname()
    mine = temporary_sibling(tmp_path / "step_1")
    dead = tmp_path / f".step_2.tmp-{host}-{ended_pid()}"
    alive = tmp_path / f".step_3.tmp-{host}-{os.getppid()}"  # the process that runs this test's runner: alive
    foreign = tmp_path / f".step_4.tmp-elsewhere-{ended_pid()}"
    for path in (mine, dead, alive, foreign):
        path.mkdir()
    assert [left_behind(p) for p in (mine, dead, alive, foreign)] == [True, True, False, False]
    assert sorted(remove_left_behind(tmp_path)) == sorted([mine, dead])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, foreign.name])


# --------------------------------------------------------------------------------------------- a full disk
class Weights(torch.nn.Module):
    """The least a checkpoint needs: save_pretrained and state_dict."""

    def __init__(self, value: float):
        super().__init__()
        self.w = torch.nn.Parameter(torch.full((1000,), value))

    def save_pretrained(self, folder: Path) -> None:
        torch.save(self.state_dict(), folder / "w.pt")


def full_disk(room: int):
    """An ``open`` whose files take ``room`` bytes and then fail with ENOSPC."""
    class Full(io.RawIOBase):
        def __init__(self, path):
            self.left, self.name = room, str(path)

        def writable(self):
            return True

        def write(self, data):
            if len(data) > self.left:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.name)
            self.left -= len(data)
            return len(data)

    return lambda path, mode="r", *a, **k: Full(path)


def test_a_full_disk_leaves_the_last_checkpoint_and_no_temporary(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 1, Weights(1.0), {"x": torch.zeros(10)})
    monkeypatch.setattr(checkpoints, "open", full_disk(500), raising=False)  # the state file meets a full disk
    with pytest.raises(WriteFailed, match=r"step_00000002: No space left on device \(it needs about 8\.0 kB; "
                                          r"\d+\.\d [kMG]B free on that disk\)"):
        save_checkpoint(tmp_path, 2, Weights(2.0), {"x": torch.zeros(1000)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_00000001"]  # nothing partial left
    assert latest_checkpoint(tmp_path).name == "step_00000001"
    monkeypatch.undo()  # space again: the retry works
    save_checkpoint(tmp_path, 2, Weights(2.0), {"x": torch.zeros(1000)})
    assert latest_checkpoint(tmp_path).name == "step_00000002"


def test_a_failed_folder_write_keeps_the_folder_it_would_replace(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "old").write_text("kept")

    def write(folder):
        (folder / "half").write_text("x")
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    with pytest.raises(WriteFailed, match="model: Disk quota exceeded"):
        write_folder(tmp_path / "model", write, needed=2_000_000)
    assert [p.name for p in tmp_path.iterdir()] == ["model"] and (tmp_path / "model" / "old").read_text() == "kept"
    with pytest.raises(ZeroDivisionError):  # a bug is not a disk problem: it keeps its traceback
        write_folder(tmp_path / "model", lambda folder: 1 / 0)


@pytest.mark.parametrize("error", [RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 8 vs 4"),
                                   Exception("Error while serializing: I/O error: No space left on device "
                                             "(os error 28)")])
def test_the_os_error_behind_a_library_error_is_found(error):
    if isinstance(error, RuntimeError):
        error.__context__ = OSError(errno.ENOSPC, "No space left on device")  # how torch.save wraps it
    assert os_error_of(error).errno == errno.ENOSPC


# ------------------------------------------------------------------------------------------------- signals
def test_the_first_signal_asks_and_the_second_stops_at_once():
    before = signal.getsignal(signal.SIGINT)
    with StopSignals(announce=False) as signals:
        with pytest.raises(Interrupted) as stopped:  # before training: at once
            os.kill(os.getpid(), signal.SIGTERM)
        assert stopped.value.exit_code == 143
        signals.deferring = True
        os.kill(os.getpid(), signal.SIGINT)
        assert signals.requested() == signal.SIGINT
        with pytest.raises(Interrupted) as stopped:
            os.kill(os.getpid(), signal.SIGINT)
        assert stopped.value.exit_code == 130
    assert signal.getsignal(signal.SIGINT) is before  # the previous handler is back


# ------------------------------------------------------------------------------------------------ image folders
def picture(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(path)


def test_a_link_loop_lists_each_image_once(tmp_path):
    root = tmp_path / "photos"
    picture(root / "a.png")
    picture(root / "sub" / "b.png")
    (root / "sub" / "up").symlink_to("..")  # a loop: followed blindly, it repeats a.png and b.png 40 levels deep
    (root / "again.png").symlink_to("a.png")  # a second name for a.png inside the folder
    outside = tmp_path / "elsewhere"
    picture(outside / "c.png")
    (outside / "loop").symlink_to(outside)
    (root / "more").symlink_to(outside)  # a folder outside: followed, once
    (root / "c-again.png").symlink_to(outside / "c.png")
    files = walk_files(str(root))
    assert [os.path.relpath(f, root) for f in files] == ["a.png", "c-again.png", "sub/b.png"]
    assert len(list_folder(str(root)).units) == 3
