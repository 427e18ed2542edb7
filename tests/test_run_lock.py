"""One process per output folder: a second one is refused with the holder's name; a dead holder frees it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hyperlora.run_lock import LockedError, RunLock

HOLD = "import sys, time; from hyperlora.run_lock import RunLock\nRunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)"


def _holder(folder: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    proc = _holder(tmp_path)
    try:
        with pytest.raises(LockedError, match=rf"in use by another hyperlora process \(pid {proc.pid} on "):
            RunLock(tmp_path).acquire()
    finally:
        proc.kill()
        proc.wait()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    proc = _holder(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with RunLock(tmp_path):
        pass


def test_release_lets_the_next_one_in_and_the_lock_is_exclusive_within_a_process(tmp_path: Path) -> None:
    first = RunLock(tmp_path).acquire()
    with pytest.raises(LockedError):  # flock on a second open file description conflicts, even in one process
        RunLock(tmp_path).acquire()
    first.release()
    with RunLock(tmp_path) as again:
        assert '"pid": %d' % os.getpid() in again.path.read_text()
