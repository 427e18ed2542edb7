"""Apply a different LoRA adapter to every row of a batch, for the span of a ``with``.

``inject(model, adapters, spec)`` registers one forward hook per target. The hook
adds ``s · dropout(x_i) A_i B_i`` to row i of the projection's output, batched over
rows with ``bmm``/``baddbmm`` so no per-token copy of A or B is ever made. On exit
every hook is removed, also when the forward raised, and the model is the base
model again, bit for bit.

Read top to bottom: validation (before any hook exists), the plain hook's maths
(``lora_forward_delta``), then ``inject``: its hook, install/remove, the
gradient-checkpointing replay, enter/exit.

Gradient checkpointing replays a layer's forward during backward, which can be
after the ``with`` block has ended and the hooks are gone (PEFT hit this). While
injected, the checkpoint function of every checkpointed layer is wrapped so that
the replay re-installs this injection's hooks for its own duration.

``torch.compile`` does not see hooks added after compiling unless its hook guards
are on; entering an injection turns them on (``hyperlora.injection_state``), so a
model compiled earlier does not run without its adapters.

Decoding steps take a faster path with the same results, kept in one module
(``hyperlora.fast_decode``) and reached only through ``inject.fast_decode``: set
that to ``None`` and every call takes the reference hook here.

Axis letters as in docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from hyperlora.fast_decode import FastDecode
from hyperlora.injection_state import INJECTION_STATE
from hyperlora.lora import AdapterBatch, LoRASpec
from hyperlora.targets import Conv1D, linear_features

__all__ = ["inject", "lora_forward_delta"]

Hook = Callable[[nn.Module, tuple[Any, ...], Tensor], Tensor]


# -- validation -------------------------------------------------------------------
def _resolve(model: nn.Module, names: list[str]) -> dict[str, nn.Module]:
    """``{name: module}`` for each target.

    Walks ``_modules`` directly: ``get_submodule`` goes through ``hasattr``/``__getattr__`` at
    every level, which for 64 targets costs about a third of a small model's forward in host
    time. A name the walk does not find falls back to attribute lookup, which is how wrappers
    that forward to the model inside them (``torch.compile``'s ``OptimizedModule``, PEFT's
    ``PeftModel``) answer to the inner model's names.
    """
    if not names:
        raise ValueError("inject() got no adapters: pass {target name: (A, B)}, e.g. from HyperLoRA.adapters().")
    modules: dict[str, nn.Module] = {}
    for name in names:
        module: Any = model
        for part in name.split(".") if name else []:
            child = module._modules.get(part)
            module = child if child is not None else getattr(module, part, None)
            if not isinstance(module, nn.Module):
                raise ValueError(f"Adapter for {name!r}, but the model has no module of that name.")
        modules[name] = module
    return modules


def _validate(modules: dict[str, nn.Module], adapters: AdapterBatch, spec: LoRASpec) -> int:
    """Check the targets' types, shapes and row counts before any hook exists; return the row count."""
    rows: dict[str, int] = {}
    for name, pair in adapters.items():
        module = modules[name]
        if not isinstance(module, (nn.Linear, Conv1D)):
            raise ValueError(f"Adapter for {name!r}, which is a {type(module).__name__}, not a linear projection.")
        if not (isinstance(pair, tuple | list) and len(pair) == 2):
            raise ValueError(f"Adapter for {name!r} must be a pair (A, B).")
        A, B = pair
        d_in, d_out = linear_features(module)
        expected_a, expected_b = (A.shape[0], d_in, spec.rank), (A.shape[0], spec.rank, d_out)
        if A.dim() != 3 or B.dim() != 3 or tuple(A.shape) != expected_a or tuple(B.shape) != expected_b:
            raise ValueError(
                f"Adapter for {name!r} has A {tuple(A.shape)} and B {tuple(B.shape)}; expected "
                f"A [rows, {d_in}, {spec.rank}] and B [rows, {spec.rank}, {d_out}] (rank {spec.rank})."
            )
        rows[name] = A.shape[0]
    distinct = sorted(set(rows.values()))
    if len(distinct) != 1:
        raise ValueError(f"Adapters disagree on the number of rows: {distinct}. Every target needs one pair per row.")
    return distinct[0]


# -- the plain hook ---------------------------------------------------------------
def _as_3d(t: Tensor) -> Tensor:
    return t.unsqueeze(1) if t.dim() == 2 else t


def lora_forward_delta(out: Tensor, x: Tensor, A: Tensor, B: Tensor, scaling: float, inplace: bool) -> Tensor:
    """``out + scaling · x A B`` row by row.

    The shrink ``x·A`` is ``[B, T, R]``: tiny. The expand is fused with the add into
    the projection's output (``baddbmm``, beta=1): one GEMM launch, no ``[B, T, O]``
    temporary.

    Args:
        out: ``[B, T, O]`` or ``[B, O]``, the base projection's output.
        x: ``[B, T, D]`` or ``[B, D]``, its input (dropout already applied).
        A: ``[B, D, R]``; B: ``[B, R, O]``.
        inplace: add into ``out``'s storage (only when no graph needs ``out``).
    """
    out3, dtype = _as_3d(out), out.dtype
    # ``Tensor.to`` is a dispatcher round trip even when it returns its input: skipped when the
    # dtypes already agree (three per target per forward).
    x = _as_3d(x)
    x = x if x.dtype == dtype else x.to(dtype)
    A = A if A.dtype == dtype else A.to(dtype)
    B = B if B.dtype == dtype else B.to(dtype)
    xa = torch.bmm(x, A)
    result = out3.baddbmm_(xa, B, alpha=scaling) if inplace else torch.baddbmm(out3, xa, B, alpha=scaling)
    return result.squeeze(1) if out.dim() == 2 else result


class inject:  # noqa: N801 - used as a context manager, reads like one
    """Context manager: ``with inject(model, adapters, spec): model(...)``.

    Args:
        model: the student. Its parameters are never modified.
        adapters: ``{target name: (A [B, D, R], B [B, R, O])}``; every pair has
            the same number of rows ``B``. A forward with ``k·B`` rows (beams,
            ``num_return_sequences``) gets each adapter repeated ``k`` times
            row-major, as ``generate`` expands its inputs.
        spec: gives the scaling and the dropout.
        training: whether LoRA dropout is on; ``None`` follows each hooked
            module's own mode. A frozen student stays in eval mode (no base
            dropout) while its adapters train, so the trainer passes ``True``.
        share_inputs: in steps of at most 16 tokens per row without a graph
            (decoding), targets seen to read one tensor (q, k, v) compute one
            shrink between them (``hyperlora.fast_decode``; which ones is learnt
            in the first injection into a model).

    The adapters are read, and where needed copied (cast, expanded for beams,
    concatenated for a shared shrink), for the whole injection: change them by
    entering a new ``inject``, not in place inside one.

    Raises:
        ValueError: an unknown target, a shape that does not fit its module,
            adapters with different row counts, or (in the forward) a batch
            that is no multiple of the adapters' rows.
    """

    # The decode-only fast path (cast cache, shared shrinks): the one seam to ``hyperlora.fast_decode``.
    # ``None`` leaves the reference hook below for every call: the same results, slower decoding.
    fast_decode: ClassVar[type[FastDecode] | None] = FastDecode

    def __init__(self, model: nn.Module, adapters: AdapterBatch, spec: LoRASpec, training: bool | None = None,
                 share_inputs: bool = True) -> None:
        self.model = model
        self.spec = spec
        self.training = training
        self.adapters = dict(adapters)
        # Entered once per training step and per generate call: module lookups are host time on
        # every step, so each target is resolved once, by a walk that skips Module.__getattr__.
        self._modules = _resolve(model, list(self.adapters))
        self.rows = _validate(self._modules, self.adapters, spec)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._expanded: dict[tuple[str, int], tuple[Tensor, Tensor]] = {}
        self._patched: list[tuple[nn.Module, Any]] = []
        fast = type(self).fast_decode
        self._fast = None if fast is None else fast(model, self._modules, self._pair, spec.scaling, share_inputs)

    # -- the hook, installed and removed ---------------------------------------
    def _pair(self, name: str, rows: int) -> tuple[Tensor, Tensor]:
        """``name``'s ``(A [k·B, D, R], B [k·B, R, O])`` for a forward of ``rows = k·B`` rows (each row k times)."""
        if rows == self.rows:
            return self.adapters[name]
        if rows % self.rows != 0:
            raise ValueError(
                f"Batch-size mismatch at {name}: the forward has {rows} rows but the adapters were made for "
                f"{self.rows} prompts. Give one prompt per row (or a batch that is a multiple of it, as beams do)."
            )
        key = (name, rows)
        if key not in self._expanded:
            A, B = self.adapters[name]
            k = rows // self.rows
            self._expanded[key] = (A.repeat_interleave(k, dim=0), B.repeat_interleave(k, dim=0))
        return self._expanded[key]

    def _drops(self, module: nn.Module) -> bool:
        """Whether LoRA dropout is on for this call: ``training`` if given, else the module's own mode."""
        return self.training if self.training is not None else module.training

    def _hook(self, name: str) -> Hook:
        """The reference hook: ``output + s · dropout(x) A B``, row by row, at every call."""
        scaling, p = self.spec.scaling, self.spec.dropout

        def hook(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
            x = args[0]
            A, B = self._pair(name, x.shape[0])
            # Each projection draws its own dropout mask, as PEFT does.
            if p > 0.0 and self._drops(module):
                x = F.dropout(x, p=p, training=True)
            # Without a graph the output's storage is ours to add into.
            return lora_forward_delta(output, x, A, B, scaling, inplace=not torch.is_grad_enabled())

        return hook

    def _install(self) -> None:
        # Dropout can be on only with p > 0 and training not switched off: otherwise the fast path
        # skips the per-call mode lookup.
        drops = self._drops if self.spec.dropout > 0.0 and self.training is not False else None
        for name, module in self._modules.items():
            hook = self._hook(name)
            if self._fast is not None:
                hook = self._fast.wrap(name, hook, drops)
            self._handles.append(module.register_forward_hook(hook))

    def _remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    @contextmanager
    def _hooks_present(self) -> Iterator[None]:
        """Hooks for the duration of a checkpoint replay that runs after exit."""
        if self._handles:
            yield
            return
        self._install()
        try:
            yield
        finally:
            self._remove()

    # -- gradient checkpointing ---------------------------------------------
    def _checkpoint_with_hooks(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        def replayable(*a: Any, **k: Any) -> Any:
            with self._hooks_present():
                return function(*a, **k)

        # Non-reentrant: the reentrant variant runs the first forward without a
        # graph and back-propagates into A and B in a nested backward, which walks
        # the generator's graph once per layer and fails on the second walk.
        return checkpoint(replayable, *args, use_reentrant=False, **kwargs)

    def _patch_checkpointing(self) -> None:
        # Every module, not only the targets' ancestors by name: a module registered under two
        # paths (a shared block) is replayed inside a layer that is no ancestor of its first name.
        for module in self.model.modules():
            if "_gradient_checkpointing_func" in module.__dict__ and getattr(module, "gradient_checkpointing", False):
                self._patched.append((module, module.__dict__["_gradient_checkpointing_func"]))
                module._gradient_checkpointing_func = self._checkpoint_with_hooks

    def _unpatch_checkpointing(self) -> None:
        while self._patched:
            module, original = self._patched.pop()
            module._gradient_checkpointing_func = original

    # -- context -------------------------------------------------------------
    def __enter__(self) -> inject:
        if self._handles or self._patched:
            # The inner exit would take the outer block's hooks away with its own.
            raise RuntimeError("This inject(...) is already active; nest a new inject(...) instead of re-entering it.")
        try:
            INJECTION_STATE.guard_hooks_in_compiled_code()
            self._patch_checkpointing()
            self._install()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._remove()
        finally:
            self._unpatch_checkpointing()
            self._expanded.clear()
            if self._fast is not None:
                self._fast.close()
