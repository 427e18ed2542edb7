"""What outlives one injection, in one object: ``INJECTION_STATE``.

An ``inject(...)`` block owns its hooks, its cast adapters and its shared shrinks, and drops them
all at exit. Two things must outlive it, and both live in the one ``InjectionState`` below (never
in module globals written by one injection and read by the next):

* **the learned shrink groups** of each model (which targets read one input tensor), learnt by
  the decode fast path (``hyperlora.fast_decode``) in one injection and used by the next;
* **the TorchDynamo hook-guard switch**. By default TorchDynamo does not guard on ``nn.Module``
  hooks (``torch._dynamo.config.skip_nnmodule_hook_guards = True``): a forward compiled before
  ``inject`` keeps running the compiled base graph inside the ``with`` block, so the per-row
  adapters are silently dropped. That is what a user gets from ``torch.compile(model)``, or from
  ``generate(cache_implementation="static")``, which compiles the decoding step, run once before
  the injection. Entering an injection turns the hook guards on, so compiled code is re-checked
  (and recompiled) when hooks change, and drops the code compiled before that, whose guards do not
  cover hooks. The setting is TorchDynamo's (process-wide in older PyTorch, per thread since
  TorchDynamo's config writes became thread-local); this object owns the lock under which it is
  flipped and the compile cache reset.
"""

from __future__ import annotations

import sys
import threading
import warnings
import weakref
from collections.abc import Sequence

from torch import nn

__all__ = ["INJECTION_STATE", "Groups", "InjectionState", "guard_hooks_in_compiled_code"]

# Groups of target names that read one input tensor, e.g. ((q, k, v) of layer 0, (q, k, v) of layer 1, ...).
Groups = tuple[tuple[str, ...], ...]


class InjectionState:
    """Everything an injection leaves for the next one; the process has one, ``INJECTION_STATE``.

    Holds:
        learned groups: ``model -> {sorted target names: Groups}``. Written by
            ``hyperlora.fast_decode.FastDecode.close`` when the first injection into a model that
            ran a forward exits; read by the ``FastDecode`` of each later injection into that model
            with the same targets, when it is made. Weak-keyed on the model: the memo must never
            keep a model (and its weights) alive after the user drops it, and a model that is
            gone can take no further injection. A wrong or stale entry costs speed, never results
            (a shared shrink is reused only for the very tensor it was computed from).
        the hook-guard lock: taken by ``guard_hooks_in_compiled_code``, called by every
            ``inject.__enter__``, so that threads entering injections at once do not interleave
            the flip of the TorchDynamo setting and the reset of its (process-wide) compile cache.
    """

    def __init__(self) -> None:
        self._groups: weakref.WeakKeyDictionary[nn.Module, dict[tuple[str, ...], Groups]] = weakref.WeakKeyDictionary()
        self._hook_guard_lock = threading.Lock()

    # -- learned shrink groups ---------------------------------------------------
    def learned_groups(self, model: nn.Module, names: Sequence[str]) -> Groups | None:
        """The groups learnt for these targets of ``model``, or ``None`` if none were learnt yet."""
        return self._groups.get(model, {}).get(tuple(sorted(names)))

    def remember_groups(self, model: nn.Module, names: Sequence[str], groups: Groups) -> None:
        """Keep ``groups`` for the next injection into ``model`` with these targets."""
        self._groups.setdefault(model, {})[tuple(sorted(names))] = groups

    def remembers(self, model: nn.Module) -> bool:
        """Whether groups were learnt for any targets of ``model``."""
        return model in self._groups

    def forget(self, model: nn.Module) -> None:
        """Drop what was learnt about ``model`` (the next injection into it learns again)."""
        self._groups.pop(model, None)

    # -- TorchDynamo hook guards ---------------------------------------------------
    def guard_hooks_in_compiled_code(self) -> bool:
        """Make compiled code guard on module hooks; ``True`` if code compiled before had to be dropped.

        Called when an injection starts. Cheap when there is nothing to do (TorchDynamo not
        loaded, or its hook guards already on). It imports nothing: if TorchDynamo is not loaded,
        nothing has been compiled yet. The setting stays on (for the process, or for the calling
        thread where TorchDynamo keeps its config per thread).
        """
        dynamo = sys.modules.get("torch._dynamo")
        if dynamo is None or not dynamo.config.skip_nnmodule_hook_guards:
            return False
        with self._hook_guard_lock:
            if not dynamo.config.skip_nnmodule_hook_guards:
                return False
            dynamo.config.skip_nnmodule_hook_guards = False
            # Code compiled until now has no hook guards: drop it. reset() is cheap when nothing was
            # compiled; the frame counter (a TorchDynamo internal) only decides whether to say so.
            compiled = bool(dynamo.utils.counters["frames"]["ok"])
            dynamo.reset()
        if compiled:
            warnings.warn(
                "hyperlora: code compiled by torch.compile before now does not check module hooks, so it would run "
                "without the injected adapters. Its compile cache was cleared (torch._dynamo.reset()) and hook guards "
                "were turned on for this process; compiled functions recompile on their next call. Set "
                "torch._dynamo.config.skip_nnmodule_hook_guards = False before compiling to avoid the recompile.",
                stacklevel=3,
            )
        return compiled


INJECTION_STATE = InjectionState()

# For code that compiles a model itself and wants the guards on before its first injection (the bench).
guard_hooks_in_compiled_code = INJECTION_STATE.guard_hooks_in_compiled_code
