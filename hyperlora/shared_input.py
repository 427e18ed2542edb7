"""Targets that read the same input tensor share one shrink: ``x [A_q | A_k | A_v]`` once, not three times.

In most attention blocks q, k and v are three projections of one tensor. In a decoding step without
a graph their adapters can share the shrink: one ``bmm`` with the members' ``A``
concatenated along the rank axis gives ``[B, T, G·R]``, and each member expands it with its ``B``
zero-padded to ``G·R`` rows, so no slice of the shared result is ever taken. That saves one
launch per extra member in every forward, which is what a decode step is bound by.

Only steps of at most ``MAX_TOKENS`` tokens per row share (decoding, where launches are the cost).
On an H100 the shared shrink took 4 % off a decode step's GPU time but made an 8 x 512 forward's
1.3 % worse (run 9 of the README's history; the expands with the padded ``B`` are wider GEMMs), so
longer steps keep a shrink per target.

Which targets share their input is learnt, not assumed from names: the first injection into a
model records the tensor each target received, and siblings (same parent module, same in-features)
that received the same tensor form a group for later injections into that model. Correctness never
rests on the grouping: at every call a member reuses the shared shrink only if its input *is* the
tensor that shrink was computed from (same object, same version), and otherwise computes it anew
from its own input.

Axis letters: B rows, T tokens, D in-features, O out-features, R rank, G members of a group.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from hyperlora.targets import linear_features

__all__ = ["MAX_TOKENS", "InputRecorder", "SharedShrink", "candidate_groups", "learned_groups", "remember_groups"]

# Longest step (tokens per row) that takes the shared shrink; see the module's docstring.
MAX_TOKENS = 16

Groups = tuple[tuple[str, ...], ...]

# model -> {its targets' names: the groups learnt for them}. Weak: the memo never keeps a model alive.
_LEARNED: weakref.WeakKeyDictionary[nn.Module, dict[tuple[str, ...], Groups]] = weakref.WeakKeyDictionary()


def candidate_groups(modules: Mapping[str, nn.Module]) -> Groups:
    """Targets that could share an input: siblings (same parent path) with the same in-features, two or more."""
    buckets: dict[tuple[str, int], list[str]] = {}
    for name, module in modules.items():
        buckets.setdefault((name.rpartition(".")[0], linear_features(module)[0]), []).append(name)
    return tuple(tuple(names) for names in buckets.values() if len(names) > 1)


def learned_groups(model: nn.Module, names: Sequence[str]) -> Groups | None:
    """The groups learnt for these targets of ``model``, or ``None`` if none were learnt yet."""
    return _LEARNED.get(model, {}).get(tuple(sorted(names)))


def remember_groups(model: nn.Module, names: Sequence[str], groups: Groups) -> None:
    _LEARNED.setdefault(model, {})[tuple(sorted(names))] = groups


class InputRecorder:
    """Notes the input each candidate received; ``groups()`` are the candidates that received one tensor."""

    def __init__(self, candidates: Groups) -> None:
        self.candidates = candidates
        self.seen: dict[str, tuple[int, int, tuple[int, ...]]] = {}

    def note(self, name: str, x: Tensor) -> None:
        # id + storage + shape of the latest call: within one forward the shared tensor is alive for
        # all its readers, so equal records mean one tensor. A wrong guess costs speed, not results.
        self.seen[name] = (id(x), x.data_ptr(), tuple(x.shape))

    @property
    def saw_a_forward(self) -> bool:
        return bool(self.seen)

    def groups(self) -> Groups:
        found: list[tuple[str, ...]] = []
        for names in self.candidates:
            by_input: dict[tuple[int, int, tuple[int, ...]], list[str]] = {}
            for name in names:
                if name in self.seen:
                    by_input.setdefault(self.seen[name], []).append(name)
            found += [tuple(members) for members in by_input.values() if len(members) > 1]
        return tuple(found)


class SharedShrink:
    """One group's shrink for one (rows, dtype): ``A_full [B, D, G·R]`` and the last input's ``x A_full``.

    ``padded_b(i, B)`` is member i's ``B [B, R, O]`` placed at its rank offset in zeros ``[B, G·R, O]``,
    so that ``xa_full · B_pad = xa_i · B`` exactly (the other blocks multiply zeros).
    """

    def __init__(self, As: Sequence[Tensor]) -> None:
        self.rank = As[0].shape[-1]
        self.A = torch.cat(list(As), dim=-1)
        self._input: weakref.ref[Tensor] | None = None
        self._version = -1
        self._xa: Tensor | None = None

    def padded_b(self, index: int, B: Tensor) -> Tensor:
        padded = B.new_zeros(B.shape[0], self.A.shape[-1], B.shape[-1])
        padded[:, index * self.rank : (index + 1) * self.rank] = B
        return padded

    def shrink(self, x: Tensor) -> Tensor:
        """``x A_full`` ``[B, T, G·R]``: reused if ``x`` is the tensor it was last computed from, unchanged.

        ``x`` is the input as the module received it (not an inference-mode tensor: those have no
        version); a cast to ``A``'s dtype happens here, once for the group.
        """
        if self._input is not None and self._input() is x and self._version == x._version:
            return self._xa  # type: ignore[return-value]
        xa = torch.bmm(x if x.dtype == self.A.dtype else x.to(self.A.dtype), self.A)
        # A weak reference: holding the input would keep every layer's hidden states alive.
        self._input, self._version, self._xa = weakref.ref(x), x._version, xa
        return xa
