"""Checks the jobs' command lines share: option ranges and output files, before any model loads.

argparse checks an option's type (``--num-beams x`` is its usage error); these check the
range and the output path right after parsing, so that a bad value costs nothing and
reads as one line (``hyperlora.cli`` prints a ``ValueError`` or ``FileExistsError`` so):

    hyperlora generate: error: --num-beams must be a positive integer, got 0; give 1 or more.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["check_float", "check_int", "check_output_file", "check_seed"]


def check_int(value: int | None, flag: str, minimum: int = 1) -> None:
    """``value`` (unset: ``None``) is at least ``minimum``."""
    if value is not None and value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{flag} must be {what}, got {value}; give {minimum} or more.")


def check_float(value: float | None, flag: str, low: float = 0.0, high: float = math.inf) -> None:
    """``value`` (unset: ``None``) is finite and in ``(low, high]``."""
    if value is None:
        return
    if not math.isfinite(value) or not low < value <= high:
        bounds = f"> {low:g}" if high == math.inf else f"in ({low:g}, {high:g}]"
        raise ValueError(f"{flag} must be a finite number {bounds}, got {value}; give a value {bounds}.")


def check_seed(value: int | None, flag: str = "--seed") -> None:
    """What ``torch.manual_seed`` takes: 0 <= seed < 2**64."""
    if value is not None and not 0 <= value < 2**64:
        raise ValueError(f"{flag} must be in [0, 2**64), got {value}; give a non-negative seed.")


def check_output_file(path: str | os.PathLike[str] | None, flag: str, force: bool) -> None:
    """An output file that may be written: not a folder, inside a folder, not an existing file unless ``force``.

    ``None`` and ``"-"`` (stdout) pass.
    """
    if path is None or str(path) == "-":
        return
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"{flag} {target} is a folder; give a file name.")
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{flag} {target}: {parent} is a file, not a folder; choose another path.")
            break
    if target.exists() and not force:
        raise FileExistsError(f"{flag} {target} already exists; pass --force to overwrite it, or choose another file.")
