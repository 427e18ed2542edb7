"""The injector's decode-only fast path: what makes a decoding step cheap, nothing it needs to be right.

``hyperlora.injector`` is complete without this module: its reference hook looks up (and where
needed casts) the adapters and computes one shrink per target at every call. A decoding step (no
graph, a few tokens per row, every target once per generated token) is bound by host time and
kernel launches, so ``FastDecode`` wraps each reference hook with three things:

* **a cast cache**: each target's adapters cast to the activations' dtype (and expanded for
  beams) once per injection, not once per token; the hook itself is a dict lookup around its kernels;
* **shared shrinks**: targets that read one input tensor (q, k and v of most attention blocks)
  compute ``x [A_q | A_k | A_v]`` once — one ``bmm`` with the members' ``A`` concatenated along the
  rank axis gives ``[B, T, G·R]`` — and each member expands it with its ``B`` zero-padded to
  ``G·R`` rows, so no slice of the shared result is ever taken. That saves one launch per extra
  member in every forward;
* **an input recorder**: which targets read one tensor is learnt, not assumed from names. The
  first injection into a model records the tensor each target received, and siblings (same parent
  module, same in-features) that received the same tensor form a group, kept in
  ``hyperlora.injection_state.INJECTION_STATE`` for later injections into that model.

Everything else — a graph (training), LoRA dropout, 2-D activations, torch.compile tracing the
hook — goes to the reference hook unchanged. Correctness never rests on the grouping: at every
call a member reuses the shared shrink only if its input *is* the tensor that shrink was computed
from (same object, same version), and otherwise computes it anew from its own input.

Only steps of at most ``MAX_TOKENS`` tokens per row share: on an H100 the shared shrink took about
4 % off a decode step's GPU time but made an 8 x 512 forward about 1.3 % slower (the expands with
the padded ``B`` are wider GEMMs), so longer steps keep a shrink per target (docs/performance.md).

Axis letters as in docs/architecture.md; G: the members of a group.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from hyperlora.injection_state import INJECTION_STATE, Groups, InjectionState
from hyperlora.targets import linear_features

__all__ = ["MAX_TOKENS", "FastDecode", "InputRecorder", "SharedShrink", "candidate_groups"]

# Longest step (tokens per row) that takes the shared shrink; see the module's docstring.
MAX_TOKENS = 16

# A forward hook: (module, args, output) -> the new output.
Hook = Callable[[nn.Module, tuple[Any, ...], Tensor], Tensor]


class FastDecode:
    """One injection's decode path: ``wrap`` each target's reference hook, ``close`` at exit.

    Args:
        model: the injected model (the key under which learned groups are kept).
        modules: ``{target name: module}``.
        pair: the injector's ``pair(name, rows)`` -> that target's ``(A [B, D, R], B [B, R, O])``
            for a forward of ``rows`` rows (expanded for beams; raises on a row-count mismatch).
        scaling: ``s`` of ``s · x A B``.
        share_inputs: whether group members share their shrink (the cast cache is used either way).
        state: where learned groups outlive this injection.
    """

    def __init__(self, model: nn.Module, modules: Mapping[str, nn.Module],
                 pair: Callable[[str, int], tuple[Tensor, Tensor]], scaling: float, share_inputs: bool = True,
                 state: InjectionState = INJECTION_STATE) -> None:
        self.model, self.names, self.pair, self.scaling, self.state = model, list(modules), pair, scaling, state
        # name -> (its group, its place in it), from what an earlier injection into this model saw;
        # without that, a recorder watches this one's inputs for the next.
        self.groups: dict[str, tuple[tuple[str, ...], int]] = {}
        self.shared: dict[tuple[tuple[str, ...], int, torch.dtype], SharedShrink] = {}
        self.recorder: InputRecorder | None = None
        if share_inputs:
            groups = state.learned_groups(model, self.names)
            if groups is None:
                candidates = candidate_groups(modules)
                self.recorder = InputRecorder(candidates) if candidates else None
            else:
                self.groups = {name: (group, i) for group in groups for i, name in enumerate(group)}

    def wrap(self, name: str, reference: Hook, drops: Callable[[nn.Module], bool] | None) -> Hook:
        """``name``'s hook: the decode path for short no-graph steps, ``reference`` for every other call.

        ``drops(module)`` says whether LoRA dropout is on for a call (``None``: never, for this
        injection), in which case the reference hook draws the mask.
        """
        scaling = self.scaling
        # (rows, dtype) -> (A, B) in that dtype: cast once per injection, not once per token. The
        # hook's own dict, so a decode step looks up one small dict around its kernels.
        cast: dict[tuple[int, torch.dtype], tuple[Tensor, Tensor]] = {}
        # The same for short steps of a group member: built on the first one only, so that an
        # injection that never decodes pays nothing for it.
        short: dict[tuple[int, torch.dtype], tuple[SharedShrink, Tensor]] = {}
        grouped = name in self.groups
        bmm, grad_enabled, tracing = torch.bmm, torch.is_grad_enabled, torch.compiler.is_compiling
        recorder = self.recorder

        def hook(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
            # While torch.compile traces the hook, only the maths: no Python-side caches.
            if tracing():
                return reference(module, args, output)
            x = args[0]
            if recorder is not None:
                recorder.note(name, x)
            # In training the cast must be part of each forward's graph: the reference path.
            if grad_enabled() or output.dim() != 3 or (drops is not None and drops(module)):
                return reference(module, args, output)
            key = (x.shape[0], output.dtype)
            pair = cast.get(key)
            if pair is None:
                A, B = self.pair(name, key[0])
                pair = cast[key] = (A.to(key[1]), B.to(key[1]))
            # Shared only for tensors with a version counter (not inference-mode ones: their in-place
            # changes go untracked), matched on the input as the module got it. Without a graph the
            # output's storage is ours to add into.
            if grouped and x.shape[1] <= MAX_TOKENS and not x.is_inference():
                operands = short.get(key) or short.setdefault(key, self._shared_operands(name, *key, pair[1]))
                return output.baddbmm_(operands[0].shrink(x), operands[1], alpha=scaling)
            if x.dtype != key[1]:
                x = x.to(key[1])
            return output.baddbmm_(bmm(x, pair[0]), pair[1], alpha=scaling)

        return hook

    def close(self) -> None:
        """At the injection's exit: drop the shared shrinks; hand what the recorder saw to ``state``."""
        self.shared.clear()
        if self.recorder is not None and self.recorder.saw_a_forward:
            self.state.remember_groups(self.model, self.names, self.recorder.groups())
            self.recorder = None

    def _shared_operands(self, name: str, rows: int, dtype: torch.dtype, B: Tensor) -> tuple[SharedShrink, Tensor]:
        """A group member's shared shrink and its ``B`` (in ``dtype``) zero-padded to the group's rank."""
        group, index = self.groups[name]
        shared = self.shared.get((group, rows, dtype))
        if shared is None:
            shared = self.shared[(group, rows, dtype)] = SharedShrink([self.pair(n, rows)[0].to(dtype) for n in group])
        return shared, shared.padded_b(index, B)


def candidate_groups(modules: Mapping[str, nn.Module]) -> Groups:
    """Targets that could share an input: siblings (same parent path) with the same in-features, two or more."""
    buckets: dict[tuple[str, int], list[str]] = {}
    for name, module in modules.items():
        buckets.setdefault((name.rpartition(".")[0], linear_features(module)[0]), []).append(name)
    return tuple(tuple(names) for names in buckets.values() if len(names) > 1)


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
