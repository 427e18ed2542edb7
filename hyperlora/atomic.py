"""Atomic writes: a reader (or a crash) sees the old file or folder or the new one, never half of one.

A folder is replaced in three renames, each atomic on one filesystem::

    .NAME.<random>.tmp   the new folder while it is written (deleted if the writer fails)
    .NAME.<random>.done  the new folder, complete (renamed from .tmp once the writer returned)
    .NAME.<random>.old   the previous folder, moved aside just before .done takes its place

A kill at any point leaves one of these states, and ``recover(path)`` (run before every
replace of ``path``, and callable on its own) finishes or undoes the swap: a ``.done``
without a target rolls forward, an ``.old`` without a target and without a ``.done`` rolls
back, and leftovers that no longer matter (an unfinished ``.tmp``, an ``.old`` whose
replacement is in place) are deleted. Only names of that exact shape beside ``path`` are
ever touched. ``recover_all(folder)`` does it for every name in a folder that has such
leftovers (a run's start, under its lock), and ``remove_tree`` deletes a folder so that a
kill half-way leaves only such a leftover, never a half-deleted folder under its own name.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_write_text", "atomic_directory", "check_replaceable", "ordinary_file_mode", "recover", "recover_all",
           "remove_tree"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def ordinary_file_mode() -> int:
    """The mode an ordinary new file gets under the current umask (0644 under the usual 022).

    ``tempfile.mkstemp`` and safetensors' writer make files private (0600); what the project
    writes for others to read is chmod-ed to this before it is renamed into place.
    """
    return 0o666 & ~_umask()


def _ordinary_permissions(folder: Path) -> None:
    """Every file under ``folder`` readable as any other file the user writes."""
    mode = ordinary_file_mode()
    for root, _, names in os.walk(folder):
        for name in names:
            os.chmod(os.path.join(root, name), mode)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder, then rename."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.chmod(tmp, ordinary_file_mode())  # mkstemp makes it private (0600); the result is an ordinary file
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _siblings(target: Path, suffix: str) -> list[Path]:
    """Folders beside ``target`` named ``.NAME.<8 random characters>.suffix`` (what mkdtemp makes)."""
    if not target.parent.is_dir():
        return []
    pattern = re.compile(rf"\.{re.escape(target.name)}\.[A-Za-z0-9_]{{8}}\.{suffix}")
    return sorted(p for p in target.parent.iterdir() if pattern.fullmatch(p.name) and p.is_dir())


def recover(path: str | os.PathLike[str]) -> None:
    """Finish or undo a folder replace of ``path`` that a crash interrupted, and delete its leftovers."""
    target = Path(path)
    done, old = _siblings(target, "done"), _siblings(target, "old")
    if not target.exists():
        if done:
            os.replace(done.pop(), target)  # the new folder was complete: finish the swap
        elif old:
            os.replace(old.pop(), target)  # nothing newer is complete: put the previous folder back
    for leftover in _siblings(target, "tmp") + done + old:
        shutil.rmtree(leftover, ignore_errors=True)


# .NAME.<8 random characters>.tmp|done|old: what mkdtemp/mkstemp name the swap's folders and atomic_write_text's files.
_LEFTOVER = re.compile(r"\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.(?P<kind>tmp|done|old)")


def recover_all(folder: str | os.PathLike[str]) -> list[str]:
    """``recover`` every entry of ``folder`` that a crashed replace left leftovers for; returns their names.

    Also deletes the unfinished temporary files of ``atomic_write_text`` (``.NAME.xxxxxxxx.tmp``).
    Call it only while no other process writes into ``folder`` (a run holds its ``RunLock``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    names: set[str] = set()
    for entry in folder.iterdir():
        match = _LEFTOVER.fullmatch(entry.name)
        if match is None:
            continue
        if entry.is_dir() and not entry.is_symlink():
            names.add(match["name"])
        elif match["kind"] == "tmp" and entry.is_file():
            entry.unlink(missing_ok=True)
    for name in sorted(names):
        recover(folder / name)
    return sorted(names)


def remove_tree(path: str | os.PathLike[str]) -> None:
    """Delete a folder (or a file): a folder is first renamed to a ``.NAME.xxxxxxxx.tmp`` sibling, so a kill
    half-way leaves a leftover that ``recover`` deletes, not a half-deleted folder under its own name."""
    target = Path(path)
    if target.is_symlink() or target.is_file():
        target.unlink()
        return
    if not target.exists():
        return
    trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    os.replace(target, trash)  # an empty folder is replaced by a rename
    shutil.rmtree(trash)


@contextmanager
def atomic_directory(path: str | os.PathLike[str], overwrite: bool = False,
                     replaceable: Callable[[Path], bool] | None = None, what: str = "folder") -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; on success it replaces ``path``.

    On an exception the temporary folder is deleted and ``path`` is untouched; on a kill,
    the next replace of ``path`` (or ``recover(path)``) completes or undoes the swap.

    Args:
        overwrite: ``path`` may already exist (non-empty) and be replaced.
        replaceable: when given, an existing non-empty ``path`` is only replaced if this
            says it is one the project wrote (a checkpoint, a run folder); anything else is
            refused, whatever ``overwrite`` says, so a mistyped path never costs user data.
        what: how the refusal names the expected kind of folder.

    Raises:
        FileExistsError: ``path`` is a file, or a non-empty folder that may not be replaced.
    """
    target = Path(path)
    recover(target)
    check_replaceable(target, overwrite, replaceable, what)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private (0700); the result is an ordinary folder
    try:
        yield tmp
        _ordinary_permissions(tmp)  # whatever wrote the files (safetensors: 0600), they are ordinary files
        check_replaceable(target, overwrite, replaceable, what)  # it may have appeared meanwhile
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    done = tmp.with_name(tmp.name[: -len(".tmp")] + ".done")
    os.replace(tmp, done)
    old = None
    if target.exists():
        old = done.with_name(done.name[: -len(".done")] + ".old")
        os.replace(target, old)
    os.replace(done, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def check_replaceable(target: str | os.PathLike[str], overwrite: bool,
                      replaceable: Callable[[Path], bool] | None = None, what: str = "folder") -> None:
    """Raise ``FileExistsError`` (one line naming the fix) unless ``atomic_directory`` may fill ``target``.

    Callable on its own, to refuse before the work that would fill the folder (training a teacher).
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a directory; choose another output path.")
    if not (target.is_dir() and any(target.iterdir())):
        return
    if replaceable is not None and not replaceable(target):
        raise FileExistsError(
            f"{target} exists and is not {'an' if what[:1] in 'aeiou' else 'a'} {what} written by hyperlora; "
            "it was left untouched. "
            "Choose another output path (or empty that folder)."
        )
    if not overwrite:
        raise FileExistsError(f"{target} exists and is not empty; pass --force (overwrite=True) to replace it.")
