"""What the built-in suites share (the toy tasks, ``hyperlora.toy.tasks``; the instructions, ``hyperlora.instruct``).

Both hold kinds of instruction (a task family, an instruction type), each with phrasings and
parameter values split into train and held-out pools; held-out splits rest on the pools
never overlapping.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["PooledKind", "check_pools", "check_split_request"]


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


class PooledKind:
    """What a kind of instruction derives from its ``phrasings`` and ``train_params`` (a mixin for the
    suites' frozen dataclasses): the last phrasing is the held-out one."""

    phrasings: Sequence[str]
    train_params: Sequence[Any]

    @property
    def parameterised(self) -> bool:
        return bool(self.train_params)

    @property
    def train_phrasings(self) -> tuple[int, ...]:
        return tuple(range(len(self.phrasings) - 1))

    @property
    def heldout_phrasings(self) -> tuple[int, ...]:
        return (len(self.phrasings) - 1,)


def check_split_request(split: str, n: int, splits: Sequence[str]) -> None:
    """Refuse an unknown split or a negative count (``build_split`` of either suite)."""
    if split not in splits:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(splits)}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
