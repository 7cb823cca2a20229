"""One owner per run folder: an exclusive lock on ``RUN/run.lock``, held for the run's life.

    lock = RunLock(Path("runs/tiny"))
    note = lock.acquire("python -m dualtoken_lite.train ...")   # RunFolderError naming the holder if one runs
    ...                                                          # train
    lock.release()

The lock is ``fcntl.flock`` on ``RUN/run.lock``, a file that names its holder (PID, host, start time, command). The
kernel drops an flock when its process ends in any way (``kill -9`` included), so a lock file whose flock is free was
left by a process that is gone: on the same host it is taken over, with a note naming it. Processes a holder forked
(data-loader workers) hold the lock with it until they end too.

What it cannot see: a holder on another host. flock reaches other hosts only on file systems that forward it
(NFSv4, Lustre mounted with ``flock``, ...; not all do), so a lock file naming another host is refused even when its
flock is free here; when that run has ended without releasing it (killed), delete the file. A file system without
flock at all gets a warning and no lock. Under torchrun only rank 0 takes the lock (training.run_folder).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from dualtoken_lite.settings import UserError, process_alive

LOCK_NAME = "run.lock"  # the lock file inside a run folder
HOST = socket.gethostname()


class RunFolderError(UserError):
    """A start would overwrite, mix or misread a run folder; the message offers the flags that do what was meant."""


def describe_holder(holder: dict) -> str:
    """'PID 123 on host node7 (since 2026-12-06 16:50:01: python -m dualtoken_lite.train ...)'."""
    return (f"PID {holder.get('pid', '?')} on host {holder.get('host', '?')} (since {holder.get('started', '?')}: "
            f"{holder.get('command', '?')})")


class RunLock:
    """The exclusive lock of one run folder (``RUN/run.lock``); ``acquire`` creates the folder if needed."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.fd: int | None = None  # the open lock file while held
        self.created_folder = False  # whether acquire() made the folder (so a refused start can remove it)

    def acquire(self, command: str) -> str | None:
        """Take the lock, or raise RunFolderError naming its holder; return a note when a dead holder's lock file was
        taken over (None otherwise)."""
        if not self.folder.is_dir():
            self.folder.mkdir(parents=True, exist_ok=True)
            self.created_folder = True
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd, wait=True)
                os.close(fd)
                raise RunFolderError(self._busy(holder)) from None
            except OSError as err:
                if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                os.close(fd)
                print(f"warning: {self.folder}'s file system cannot lock files ({err.strerror}): make sure no other "
                      "run uses this folder", file=sys.stderr)
                return None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # the holder removed the file between our open and our lock: lock the new one
        previous = _read_holder(fd)
        if previous and previous.get("host") != HOST:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise RunFolderError(
                f"{self.path} names {describe_holder(previous)}: a run on another host, which this host cannot see. "
                f"If it has ended, delete {self.path} and start again; otherwise give another --out")
        self.fd = fd
        me = {"pid": os.getpid(), "host": HOST, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": command}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        if previous:
            return f"note: took over {self.path}, left by {describe_holder(previous)}, which has ended"
        return None

    def _busy(self, holder: dict) -> str:
        """The refusal when another process holds the lock."""
        who = describe_holder(holder) if holder else "another process (it has not written its name yet)"
        if holder.get("host") == HOST and isinstance(holder.get("pid"), int) and not process_alive(holder["pid"]):
            who += ", which has ended, though a process it started (a data-loader worker?) still holds the lock"
        return (f"--out {self.folder} is in use by another run: {who}. Wait for it to end (or stop it), or give "
                "another --out")

    def release(self) -> None:
        """Remove the lock file and drop the lock (nothing when not held)."""
        if self.fd is None:
            return
        try:
            if _same_file(self.fd, self.path):
                self.path.unlink()
        finally:
            os.close(self.fd)  # closing drops the flock
            self.fd = None


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the open file ``fd`` (a holder removes the file as it releases the lock)."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _read_holder(fd: int, wait: bool = False) -> dict:
    """The holder a lock file names ({} when empty or unreadable); ``wait``: give a holder that has just taken the lock
    a moment to write its name."""
    for _ in range(20 if wait else 1):
        text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        if text:
            try:
                holder = json.loads(text)
                return holder if isinstance(holder, dict) else {}
            except ValueError:
                return {}
        time.sleep(0.05)
    return {}
