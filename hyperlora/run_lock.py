"""One process per output folder: an advisory lock that names its holder.

Two trainings writing into one ``out_dir`` would interleave their metrics and prune each
other's checkpoints. ``RunLock(out_dir)`` takes an exclusive ``flock`` on ``out_dir/.lock``
for as long as it is held and writes who holds it (pid, host, start time) into the file,
so a second process gets one line that names the holder. The operating system drops the
lock when its process dies, so a killed run never leaves a stale lock behind; the file
itself stays and is harmless.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

__all__ = ["RunLock", "LockedError", "LOCK_NAME"]

LOCK_NAME = ".lock"


class LockedError(RuntimeError):
    """The folder is held by another live process."""


class RunLock:
    """``with RunLock(out_dir): ...``: raises ``LockedError`` naming the holder if another process has it."""

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise LockedError(
                f"{self.path.parent} is in use by another hyperlora process ({holder}); wait for it to finish "
                "or choose another trainer.out_dir."
            ) from None
        os.ftruncate(fd, 0)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {info['pid']} on {info['host']}, since {info['since']}"
    except (ValueError, KeyError, UnicodeDecodeError):
        return "holder unknown"
