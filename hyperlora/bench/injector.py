"""The per-row injector against the base model, a merged model and PEFT; forward and forward+backward.

On the shared student, ``ids [batch, tokens]``, rank ``R`` on every target, a
different adapter for every row. Ratios:

* forwards (no grad) to ``base_forward``: injected, injected with
  ``share_shrink=True`` (q, k, v share one ``x·A``), merged (row 0's ΔW in the
  weights), PEFT LoRA with one shared adapter;
* ``injected_forward_backward`` to ``base_forward_backward``: both back-propagate
  to the input embeddings (every activation gradient, no weight gradient); the
  injected one also into every A and B (also with ``share_shrink=True``: one
  ``x`` gradient for q, k and v instead of three). Peak memory of each (CUDA only).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from hyperlora.bench.common import BenchContext, merged_model, peft_model, random_adapters
from hyperlora.bench.timing import figures, peak_memory_mib, reset_peak_memory, time_ms
from hyperlora.injector import inject
from hyperlora.targets import find_targets

__all__ = ["run"]


def run(ctx: BenchContext) -> dict[str, Any]:
    size, spec, device, dtype = ctx.size, ctx.spec, ctx.device, ctx.dtype
    model = ctx.model()
    targets = find_targets(model)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, size.vocab, (size.batch, size.tokens), generator=gen).to(device)
    adapters = random_adapters(targets, size.batch, spec.rank, dtype, device)

    def forward_of(m: torch.nn.Module) -> Callable[[], None]:
        def forward() -> None:
            with torch.no_grad():
                m(ids, use_cache=False)

        return forward

    def injected_forward(share_shrink: bool = False) -> None:
        with torch.no_grad(), inject(model, adapters, spec, share_shrink=share_shrink):
            model(ids, use_cache=False)

    times: dict[str, float] = {}
    times["base_forward"] = time_ms(forward_of(model), **ctx.timing)
    times["injected_forward"] = time_ms(injected_forward, **ctx.timing)
    times["injected_forward_shared_shrink"] = time_ms(lambda: injected_forward(True), **ctx.timing)
    # Each copy lives only while it is timed.
    times["merged_forward"] = time_ms(forward_of(merged_model(model, targets, adapters, spec)), **ctx.timing)
    times["peft_single_adapter_forward"] = time_ms(forward_of(peft_model(model, targets, adapters, spec)), **ctx.timing)

    embeds = model.get_input_embeddings()(ids).detach()
    trainable = random_adapters(targets, size.batch, spec.rank, dtype, device, requires_grad=True)

    def base_backward() -> None:
        x = embeds.clone().requires_grad_(True)
        model(inputs_embeds=x, use_cache=False).logits.float().mean().backward()

    def injected_backward(share_shrink: bool = False) -> None:
        x = embeds.clone().requires_grad_(True)
        with inject(model, trainable, spec, share_shrink=share_shrink):
            loss = model(inputs_embeds=x, use_cache=False).logits.float().mean()
        loss.backward()

    memory: dict[str, float | None] = {}
    for name, fn in (("base_forward_backward", base_backward), ("injected_forward_backward", injected_backward),
                     ("injected_forward_backward_shared_shrink", lambda: injected_backward(True))):
        reset_peak_memory(device)
        times[name] = time_ms(fn, **ctx.timing)
        memory[name] = peak_memory_mib(device)

    baselines = {
        "injected_forward": "base_forward",
        "injected_forward_shared_shrink": "base_forward",
        "merged_forward": "base_forward",
        "peft_single_adapter_forward": "base_forward",
        "injected_forward_backward": "base_forward_backward",
        "injected_forward_backward_shared_shrink": "base_forward_backward",
    }
    return {
        "shape": {"batch": size.batch, "tokens": size.tokens, "rank": spec.rank, "targets": len(targets),
                  "adapter_per_row": True},
        **figures(times, baselines),
        "peak_memory_mib": memory,
    }
