"""Atomic folder replace: a kill at any point leaves the old folder or the new one, and no leftovers once recovered."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hyperlora import atomic
from hyperlora.atomic import atomic_directory, atomic_write_text, check_replaceable, recover, recover_all, remove_tree

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


@pytest.mark.parametrize("kill_at, expected", [(0, "old"), (1, "old"), (2, "old"), (3, "new")])
def test_recover_all_recovers_every_interrupted_replace_in_a_folder(tmp_path: Path, kill_at: int,
                                                                   expected: str) -> None:
    # A run folder: two checkpoints, one of them interrupted mid-replace, and unrelated user files.
    intact = _folder(tmp_path / "step-000002", "intact")
    target = _folder(tmp_path / "step-000004", "old")
    _kill_during_replace(target, kill_at)
    (tmp_path / ".final_metrics.json.abcd_123.tmp").write_text("{")  # an atomic_write_text cut short
    _folder(tmp_path / ".keep.me", "user")  # not the shape of a leftover
    (tmp_path / "notes.tmp").write_text("user")
    names = recover_all(tmp_path)
    assert names == ["step-000004"]
    assert (target / "value.txt").read_text() == expected and (intact / "value.txt").read_text() == "intact"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".keep.me", "notes.tmp", "step-000002", "step-000004"]
    assert recover_all(tmp_path) == [] and recover_all(tmp_path / "missing") == []


def test_remove_tree_leaves_a_recoverable_leftover_if_killed(tmp_path: Path) -> None:
    target = _folder(tmp_path / "checkpoints", "x")
    (target / "sub").mkdir()
    (target / "sub" / "deep.txt").write_text("y")
    remove_tree(target)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "metrics.jsonl").write_text("{}")
    remove_tree(tmp_path / "metrics.jsonl")
    remove_tree(tmp_path / "missing")
    assert list(tmp_path.iterdir()) == []
    # A kill after the rename, during the deletion: the folder is gone under its name and recover deletes the rest.
    target = _folder(tmp_path / "checkpoints", "x")
    real_rmtree = atomic.shutil.rmtree
    try:
        atomic.shutil.rmtree = lambda path, *a, **k: (_ for _ in ()).throw(KeyboardInterrupt())
        with pytest.raises(KeyboardInterrupt):
            remove_tree(target)
    finally:
        atomic.shutil.rmtree = real_rmtree
    assert not target.exists() and len(list(tmp_path.iterdir())) == 1
    recover(target)
    assert list(tmp_path.iterdir()) == [] and not target.exists()  # nothing to roll back to: it was being deleted


def test_check_replaceable_refuses_before_any_work(tmp_path: Path) -> None:
    check_replaceable(tmp_path / "new", overwrite=False)  # missing: fine
    (tmp_path / "empty").mkdir()
    check_replaceable(tmp_path / "empty", overwrite=False, replaceable=lambda p: False)  # empty: fine
    user = _folder(tmp_path / "user", "data")
    with pytest.raises(FileExistsError, match="not a teacher folder written by hyperlora"):
        check_replaceable(user, overwrite=True, replaceable=lambda p: False, what="teacher folder")
    with pytest.raises(FileExistsError, match="pass --force"):
        check_replaceable(user, overwrite=False)
    check_replaceable(user, overwrite=True, replaceable=lambda p: True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "user"]


def test_files_written_into_an_atomic_folder_get_ordinary_permissions(tmp_path: Path) -> None:
    # safetensors (and mkstemp) write 0600; what the project saves is an ordinary file, as weights and plots should be.
    from hyperlora.atomic import ordinary_file_mode

    with atomic_directory(tmp_path / "out") as tmp:
        (tmp / "sub").mkdir()
        for path in (tmp / "weights.bin", tmp / "sub" / "state.json"):
            path.write_text("x")
            path.chmod(0o600)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert modes == {"weights.bin": ordinary_file_mode(), "state.json": ordinary_file_mode()}
