"""Keep ``torch.compile`` from replaying a forward without (or with stale) injector hooks.

By default TorchDynamo does not guard on ``nn.Module`` hooks
(``torch._dynamo.config.skip_nnmodule_hook_guards = True``): a forward compiled
before ``inject`` keeps running the compiled base graph inside the ``with`` block,
so the per-row adapters are silently dropped. That is what a user gets from
``torch.compile(model)``, or from ``generate(cache_implementation="static")``,
which compiles the decoding step, run once before the injection.

``guard_hooks_in_compiled_code`` turns the hook guards on, so compiled code is
re-checked (and recompiled) when hooks change, and drops the code compiled before
that, whose guards do not cover hooks. It imports nothing: if TorchDynamo is not
loaded, nothing has been compiled yet and there is nothing to do.
"""

from __future__ import annotations

import sys
import threading
import warnings

__all__ = ["guard_hooks_in_compiled_code"]

_LOCK = threading.Lock()  # two threads entering injections at once flip and reset once


def guard_hooks_in_compiled_code() -> bool:
    """Make compiled code guard on module hooks; ``True`` if code compiled before had to be dropped.

    Called when an injection starts. Cheap when there is nothing to do (TorchDynamo not
    loaded, or its hook guards already on). The setting stays on for the process.
    """
    dynamo = sys.modules.get("torch._dynamo")
    if dynamo is None or not dynamo.config.skip_nnmodule_hook_guards:
        return False
    with _LOCK:
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
