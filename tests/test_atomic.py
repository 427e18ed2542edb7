"""Atomic folder replace: a kill at any point leaves the old folder or the new one, and no leftovers once recovered."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hyperlora.atomic import atomic_directory, atomic_write_text, recover

# Kills itself (SIGKILL: no cleanup, no finally) at the Nth os.replace of a folder replace, or inside the writer.
KILLER = r"""
import os, signal, sys
from pathlib import Path
from hyperlora import atomic
target, kill_at = Path(sys.argv[1]), int(sys.argv[2])
calls = [0]
real_replace = os.replace
def replace(src, dst):
    calls[0] += 1
    if calls[0] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst)
atomic.os.replace = replace
with atomic.atomic_directory(target, overwrite=True) as tmp:
    (tmp / "value.txt").write_text("new")
    if kill_at == 0:
        os.kill(os.getpid(), signal.SIGKILL)
"""


def _folder(path: Path, value: str) -> Path:
    path.mkdir(parents=True)
    (path / "value.txt").write_text(value)
    return path


def _kill_during_replace(target: Path, kill_at: int) -> None:
    run = subprocess.run([sys.executable, "-c", KILLER, str(target), str(kill_at)], capture_output=True, text=True)
    assert run.returncode == -9, run.stderr


@pytest.mark.parametrize("kill_at, expected", [(0, "old"), (1, "old"), (2, "old"), (3, "new")])
def test_a_kill_at_any_step_recovers_to_the_old_or_the_new_folder(tmp_path: Path, kill_at: int, expected: str) -> None:
    # The kill comes before the given os.replace runs. 0: inside the writer; 1: before .tmp -> .done; 2: before
    # the old folder moves aside; 3: after it moved aside, before .done takes its place (the target is missing).
    target = _folder(tmp_path / "ckpt", "old")
    _kill_during_replace(target, kill_at)
    assert [p.name for p in tmp_path.iterdir() if p.name != "ckpt"], "the kill should leave the swap's folders"
    assert target.exists() == (kill_at != 3)
    recover(target)
    assert (target / "value.txt").read_text() == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no .tmp/.done/.old left


def test_the_next_replace_recovers_a_target_left_missing(tmp_path: Path) -> None:
    target = _folder(tmp_path / "ckpt", "old")
    _kill_during_replace(target, 3)
    assert not target.exists()
    with atomic_directory(target, overwrite=True) as tmp:
        assert (target / "value.txt").read_text() == "new"  # recovered before the new write starts
        (tmp / "value.txt").write_text("newer")
    assert (target / "value.txt").read_text() == "newer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_a_failing_writer_leaves_the_target_untouched(tmp_path: Path) -> None:
    target = _folder(tmp_path / "ckpt", "old")
    with pytest.raises(RuntimeError), atomic_directory(target, overwrite=True) as tmp:
        (tmp / "value.txt").write_text("half")
        raise RuntimeError("writer failed")
    assert (target / "value.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_a_folder_that_is_not_ours_is_refused_even_with_overwrite(tmp_path: Path) -> None:
    target = _folder(tmp_path / "src", "user data")
    with pytest.raises(FileExistsError, match="not a checkpoint written by hyperlora"):
        with atomic_directory(target, overwrite=True, replaceable=lambda p: (p / "ours").is_file(), what="checkpoint"):
            pytest.fail("the writer must not run")
    assert (target / "value.txt").read_text() == "user data"
    (target / "ours").write_text("")
    with atomic_directory(target, overwrite=True, replaceable=lambda p: (p / "ours").is_file()) as tmp:
        (tmp / "value.txt").write_text("ours now")
    assert (target / "value.txt").read_text() == "ours now"


def test_without_overwrite_a_non_empty_folder_is_refused_and_an_empty_one_is_filled(tmp_path: Path) -> None:
    full, empty = _folder(tmp_path / "full", "x"), tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileExistsError, match="pass --force"), atomic_directory(full):
        pass
    with atomic_directory(empty) as tmp:
        (tmp / "value.txt").write_text("y")
    assert (empty / "value.txt").read_text() == "y"


def test_recover_touches_only_names_of_its_own_shape(tmp_path: Path) -> None:
    target = _folder(tmp_path / "ckpt", "old")
    for name in (".ckpt.backup", ".ckpt.old", "ckpt.old", ".other.abcdefgh.tmp"):
        _folder(tmp_path / name, "user")
    recover(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ckpt", ".ckpt.backup", ".ckpt.old", "ckpt.old",
                                                                 ".other.abcdefgh.tmp"])


def test_atomic_write_text_keeps_ordinary_permissions(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    atomic_write_text(path, "hi")
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask
