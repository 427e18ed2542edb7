"""Per-token decode latency with a static KV cache, where ``generate`` compiles the decoding step.

``generate(past_key_values=StaticCache(...), compile_config=...)`` runs each decoding step
through torch.compile (on CUDA: inductor, mode reduce-overhead, so CUDA graphs), which takes
the host out of the step. Base against a different adapter per row (``inject``), on the
decode section's prompts and adapters, timed by the same method (``decode.METHOD``). On CPU
the backend is TorchDynamo's ``eager`` (no C++ compiler needed): the code path is the one
measured on the GPU, the figures mean nothing.

Also reported: the seconds of the first two calls of each variant (compiling, recording the
graphs), how many frames TorchDynamo compiled for them and while timing (every timed injected
call enters a new injection, with new hooks: it must reuse the compiled code), and checks on the
first compiled decoding step: its logits against the eager
injected model's (equal in fp32; bf16 rounds differently), against the adapters' own effect on it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch._dynamo
from torch import Tensor

from hyperlora.bench.common import BenchContext
from hyperlora.bench.decode import METHOD, decode_inputs, kernels_per_token, per_repeat, time_per_token
from hyperlora.bench.timing import figures, kernel_ratio, paired_ratios, sync
from hyperlora.injection_state import guard_hooks_in_compiled_code
from hyperlora.injector import inject

__all__ = ["run"]


def run(ctx: BenchContext) -> dict[str, Any]:
    from transformers import CompileConfig, StaticCache

    spec, device = ctx.spec, ctx.device
    rows, prompt, new = ctx.size.decode_batch, ctx.size.decode_prompt, ctx.size.decode_new
    model, targets, ids, mask, adapters = decode_inputs(ctx)
    backend = "inductor" if device.type == "cuda" else "eager"
    compile_config = CompileConfig(backend=backend, fullgraph=False)
    # generate compiles only on CUDA unless told otherwise; the CPU run is the tests' check of this path.
    compile_config._compile_all_devices = True
    # One cache (one shape) for every call, so each variant compiles once.
    cache = StaticCache(config=model.config, max_cache_len=prompt + new)
    variants: dict[str, Callable[[], AbstractContextManager[Any]]] = {
        "base": nullcontext, "injected_per_row": lambda: inject(model, adapters, spec)}

    def generate(name: str, new_tokens: int, compiled: bool = True) -> Tensor:
        """The new ids ``[B, new_tokens]``; ``compiled=False``: the eager dynamic-cache reference."""
        return _call(name, new_tokens, compiled).sequences[:, prompt:]

    def _call(name: str, new_tokens: int, compiled: bool, logits: bool = False) -> Any:
        kwargs: dict[str, Any] = {"return_dict_in_generate": True, "output_logits": logits}
        if compiled:
            cache.reset()
            kwargs.update(past_key_values=cache, compile_config=compile_config)
        with torch.no_grad(), variants[name]():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, do_sample=False, pad_token_id=0, **kwargs)
        if out.sequences.shape != (rows, prompt + new_tokens):
            raise RuntimeError(f"{name}: generate returned {tuple(out.sequences.shape)}, "
                               f"expected {(rows, prompt + new_tokens)}")
        return out

    # What the first inject() would do: turn TorchDynamo's hook guards on, which drops compiled code.
    # Done before the base compiles, so that neither variant is compiled twice.
    guard_hooks_in_compiled_code()
    frames_before = _compiled_frames()
    first_calls: dict[str, float] = {}
    for name in variants:  # compile and record the graphs, one variant after the other
        first_calls[name] = _seconds(lambda name=name: (generate(name, new), generate(name, new)), device)
    compiled_frames = _compiled_frames() - frames_before
    names = list(variants)
    per_token, generate_ms = time_per_token(generate, names, new, device, repeats=max(5, min(ctx.iters, 9)))
    kernels, launches = kernels_per_token(generate, names, new, device)
    # Every injected call above entered a new injection (new hooks, same shapes) after a base call:
    # none of them may have compiled again.
    compiled_while_timing = _compiled_frames() - frames_before - compiled_frames

    # Two steps with logits: the first comes from the prefill (never compiled), the second from
    # the first compiled decoding step, which is the one compared.
    runs = {"compiled_base": _call("base", 2, True, logits=True),
            "compiled_injected": _call("injected_per_row", 2, True, logits=True),
            "eager_injected": _call("injected_per_row", 2, False, logits=True)}
    step = {name: out.logits[1].float() for name, out in runs.items()}
    tokens = {name: out.sequences[:, prompt:] for name, out in runs.items()}
    check = {
        "compiled_frames": compiled_frames,
        "compiled_while_timing": compiled_while_timing,
        "injected_tokens_equal_eager": bool(torch.equal(tokens["compiled_injected"], tokens["eager_injected"])),
        "decode_step_logits_max_abs_diff_compiled_vs_eager_injected": round(float(
            (step["compiled_injected"] - step["eager_injected"]).abs().max()), 5),
        # The adapters' effect on the same step, against which the difference above is small or not.
        "decode_step_logits_max_abs_diff_compiled_base_vs_injected": round(float(
            (step["compiled_base"] - step["compiled_injected"]).abs().max()), 5),
    }
    return {
        "method": METHOD,
        "backend": backend,
        "shape": {"batch": rows, "prompt_tokens": prompt, "new_tokens": new, "rank": spec.rank,
                  "targets": len(targets), "adapter_per_row": True, "cache": "static"},
        **figures(per_token, {"injected_per_row": "base"}),
        "paired_ratios": paired_ratios(per_repeat(generate_ms, new), {"injected_per_row": "base"}),
        "generate_ms": generate_ms,
        "kernel_ms_per_token": kernels,
        "kernel_ratios": {"injected_per_row": kernel_ratio(kernels["injected_per_row"], kernels["base"])},
        "kernel_launches_per_token": launches,
        "first_two_calls_s": first_calls,
        "check": check,
    }


def _seconds(fn: Callable[[], Any], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return round(time.perf_counter() - start, 3)


def _compiled_frames() -> int:
    """How many frames TorchDynamo has compiled in this process so far."""
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])
