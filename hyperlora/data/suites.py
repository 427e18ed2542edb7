"""What the built-in suites share (the toy tasks, ``hyperlora.toy.tasks``; the instructions, ``hyperlora.instruct``).

Both hold kinds of instruction (a task family, an instruction type), each with phrasings and
parameter values split into train and held-out pools; held-out splits rest on the pools
never overlapping.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["check_pools"]


def check_pools(what: str, phrasings: Sequence[str], min_phrasings: int, train_params: Sequence[Any],
                heldout_params: Sequence[Any]) -> None:
    """Raise ``ValueError`` (naming ``what``) unless the phrasings and the parameter pools are usable.

    Args:
        what: e.g. ``"family 'reverse_words'"``.
        min_phrasings: at least one is held out, the rest train.
        train_params, heldout_params: both empty, or both non-empty and disjoint.
    """
    if len(phrasings) < min_phrasings:
        raise ValueError(f"{what} needs at least {min_phrasings} phrasings, got {len(phrasings)}")
    if bool(train_params) != bool(heldout_params):
        raise ValueError(f"{what} needs both train and held-out parameter values, or neither")
    overlap = [p for p in heldout_params if p in train_params]
    if overlap:
        raise ValueError(f"{what}: held-out parameter values {overlap} are also train values")
