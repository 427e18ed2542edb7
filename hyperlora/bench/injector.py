"""The per-row injector against the base model, a merged model and PEFT; forward and forward+backward.

On the shared student, ``ids [batch, tokens]``, rank ``R`` on every target, a
different adapter for every row. Ratios:

* forwards (no grad) to ``base_forward``: injected, merged (row 0's ΔW in the
  weights), PEFT LoRA with one shared adapter;
* ``injected_forward_backward`` to ``base_forward_backward``: both back-propagate
  to the input embeddings (every activation gradient, no weight gradient); the
  injected one also into every A and B. Peak memory of each (CUDA only).
* ``kernel_ratios`` (CUDA only): the same two ratios from GPU kernel time alone
  (``device_ms``), which host launch overhead and a busy neighbour do not move.
* ``inject_enter_exit`` to ``base_forward``: entering and leaving ``inject`` with no
  forward in between, pure host time that every training step and every generate
  call pays once (part of ``injected_forward``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from hyperlora.bench.common import BenchContext
from hyperlora.bench.timing import (
    device_ms,
    figures,
    free_cached_memory,
    kernel_ratio,
    peak_memory_mib,
    reset_peak_memory,
    sync,
    time_interleaved,
    time_ms,
)
from hyperlora.injector import inject
from hyperlora.targets import find_targets
from hyperlora.toy.reference import merged_copy, peft_copy, random_adapters, random_ids

__all__ = ["run"]


def run(ctx: BenchContext) -> dict[str, Any]:
    size, spec, device, dtype = ctx.size, ctx.spec, ctx.device, ctx.dtype
    model = ctx.model()
    targets = find_targets(model)
    ids = random_ids(size.batch, size.tokens, vocab_size=size.vocab).to(device)
    adapters = random_adapters(targets, size.batch, spec.rank, dtype, device)

    def forward_of(m: torch.nn.Module) -> Callable[[], None]:
        def forward() -> None:
            with torch.no_grad():
                m(ids, use_cache=False)

        return forward

    def injected_forward() -> None:
        with torch.no_grad(), inject(model, adapters, spec):
            model(ids, use_cache=False)

    # All four forwards interleaved (see time_interleaved): the copies live together for it.
    merged, peft = merged_copy(model, adapters, spec, targets), peft_copy(model, adapters, spec, targets)
    times = time_interleaved({
        "base_forward": forward_of(model), "injected_forward": injected_forward,
        "merged_forward": forward_of(merged), "peft_single_adapter_forward": forward_of(peft),
    }, **ctx.timing)

    def enter_exit() -> None:
        with inject(model, adapters, spec):
            pass

    times["inject_enter_exit"] = time_ms(enter_exit, **ctx.timing)
    kernels = {name: device_ms(fn, device) for name, fn in (("base_forward", forward_of(model)),
                                                             ("injected_forward", injected_forward))}
    del merged, peft
    free_cached_memory(device)

    embeds = model.get_input_embeddings()(ids).detach()
    trainable = random_adapters(targets, size.batch, spec.rank, dtype, device, requires_grad=True)

    def base_backward() -> None:
        x = embeds.clone().requires_grad_(True)
        model(inputs_embeds=x, use_cache=False).logits.float().mean().backward()

    def injected_backward() -> None:
        x = embeds.clone().requires_grad_(True)
        with inject(model, trainable, spec):
            loss = model(inputs_embeds=x, use_cache=False).logits.float().mean()
        loss.backward()

    backward = {"base_forward_backward": base_backward, "injected_forward_backward": injected_backward}
    times.update(time_interleaved(backward, **ctx.timing))
    kernels.update({name: device_ms(fn, device) for name, fn in backward.items()})
    memory: dict[str, float | None] = {}
    for name, fn in backward.items():  # one call each, alone, for its peak
        sync(device)
        reset_peak_memory(device)
        fn()
        sync(device)
        memory[name] = peak_memory_mib(device)

    baselines = {
        "injected_forward": "base_forward",
        "merged_forward": "base_forward",
        "peft_single_adapter_forward": "base_forward",
        "inject_enter_exit": "base_forward",
        "injected_forward_backward": "base_forward_backward",
    }
    return {
        "shape": {"batch": size.batch, "tokens": size.tokens, "rank": spec.rank, "targets": len(targets),
                  "adapter_per_row": True},
        **figures(times, baselines),
        "peak_memory_mib": memory,
        # GPU kernel time alone (profiler; None on CPU): the same ratios without host overhead.
        "kernel_ms": kernels,
        "kernel_ratios": {
            "injected_forward": kernel_ratio(kernels["injected_forward"], kernels["base_forward"]),
            "injected_forward_backward": kernel_ratio(kernels["injected_forward_backward"],
                                                      kernels["base_forward_backward"]),
        },
    }

