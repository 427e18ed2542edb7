"""Probe: what one target's adapter costs the host in an eager decode step (one token per row).

A decode step at batch 16 is bound by host time: the GPU finishes each microsecond kernel long
before the host has launched the next. This times, on the decode shape (``[16, 1, 2048]`` into a
2048 x 2048 projection, rank 16), one projection call with nothing attached, with a hook that
returns at once, with the injector's hook, and the pieces of that hook alone, each the mean of
many calls queued back to back (host time per call; the kernels overlap it). Also the whole
decode step's per-op host time (profiler, self CPU time per op) for the base and injected model.

    python experiments/probes/decode_host_time.py      # full size on CUDA, small on CPU; JSON to $OUT
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from probe_setup import CUDA, DEVICE, DTYPE, SIZE, SPEC
from torch import Tensor, nn
from transformers import DynamicCache

from hyperlora.atomic import atomic_write_text
from hyperlora.bench.common import build_model
from hyperlora.injector import inject
from hyperlora.targets import find_targets
from hyperlora.toy.reference import random_adapters

ROWS, D, R = SIZE.decode_batch, SIZE.hidden, SPEC.rank
CALLS = 2000 if CUDA else 200


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def per_call_us(fn: Callable[[], Any], calls: int = CALLS) -> float:
    for _ in range(50):
        fn()
    sync()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        best = min(best, (time.perf_counter() - start) / calls * 1e6)
    return round(best, 2)


def hook_costs() -> dict[str, float]:
    lin = nn.Linear(D, D, bias=False, device=DEVICE, dtype=DTYPE)
    x = torch.randn(ROWS, 1, D, device=DEVICE, dtype=DTYPE)
    A = torch.randn(ROWS, D, R, device=DEVICE, dtype=DTYPE) * 0.01
    B = torch.randn(ROWS, R, D, device=DEVICE, dtype=DTYPE) * 0.01
    out = lin(x)
    xa = torch.bmm(x, A)
    r: dict[str, float] = {}
    with torch.no_grad():
        r["linear_bare"] = per_call_us(lambda: lin(x))
        handle = lin.register_forward_hook(lambda m, a, o: None)
        r["linear_noop_hook"] = per_call_us(lambda: lin(x))
        handle.remove()
        handle = inject(lin, {"": (A, B)}, SPEC).__enter__()
        r["linear_injected_hook"] = per_call_us(lambda: lin(x))
        handle.__exit__(None, None, None)
        r["bmm_shrink"] = per_call_us(lambda: torch.bmm(x, A))
        r["baddbmm_expand_inplace"] = per_call_us(lambda: out.baddbmm_(xa, B, alpha=2.0))
        r["bmm_then_baddbmm_"] = per_call_us(lambda: out.baddbmm_(torch.bmm(x, A), B, alpha=2.0))
        r["matmul_shrink"] = per_call_us(lambda: torch.matmul(x, A))
        r["empty_like"] = per_call_us(lambda: torch.empty_like(xa))
        r["add_inplace"] = per_call_us(lambda: out.add_(out))
    r["hook_overhead_vs_bare"] = round(r["linear_noop_hook"] - r["linear_bare"], 2)
    r["injected_hook_vs_bare"] = round(r["linear_injected_hook"] - r["linear_bare"], 2)
    return r


def step_ops(model: nn.Module, adapters: dict[str, tuple[Tensor, Tensor]] | None) -> tuple[Counter[str], float]:
    """Self CPU µs per op type of one decode step (mean of 8), and the step's wall µs (unprofiled)."""
    from torch.profiler import ProfilerActivity, profile

    ids = torch.randint(3, SIZE.vocab, (ROWS, SIZE.decode_prompt), device=DEVICE)
    token = ids[:, -1:]

    def run(steps: int) -> float:
        cache = DynamicCache()
        model(ids, past_key_values=cache, use_cache=True)
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            model(token, past_key_values=cache, use_cache=True)
        sync()
        return (time.perf_counter() - start) / steps * 1e6

    with torch.no_grad():
        if adapters:
            # The first injection into a model learns which targets share their input (and runs
            # without shared shrinks); the measured one is the second, as every later one is.
            with inject(model, adapters, SPEC):
                run(1)
        context = inject(model, adapters, SPEC) if adapters else None
        if context:
            context.__enter__()
        try:
            run(4)
            wall = min(run(16) for _ in range(3))
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                run(8)
        finally:
            if context:
                context.__exit__(None, None, None)
    totals: Counter[str] = Counter()
    for e in prof.key_averages():
        totals[e.key] += e.self_cpu_time_total / 8
    return totals, round(wall, 1)


report: dict[str, Any] = {"device": torch.cuda.get_device_name() if CUDA else "cpu", "size": SIZE.__dict__,
                          "per_call_us": hook_costs()}
print(json.dumps(report["per_call_us"]), flush=True)
model = build_model(SIZE, DTYPE, DEVICE)
targets = find_targets(model)
adapters = random_adapters(targets, ROWS, R, DTYPE, DEVICE)
base_ops, base_wall = step_ops(model, None)
inj_ops, inj_wall = step_ops(model, adapters)
diff = {k: round(inj_ops[k] - base_ops.get(k, 0.0), 1) for k in inj_ops}
report["step_wall_us"] = {"base": base_wall, "injected": inj_wall, "ratio": round(inj_wall / base_wall, 4),
                          "extra_per_target": round((inj_wall - base_wall) / len(targets), 2)}
report["step_self_cpu_us"] = {"base": round(sum(base_ops.values()), 1), "injected": round(sum(inj_ops.values()), 1)}
report["injected_minus_base_self_cpu_us_top"] = dict(sorted(diff.items(), key=lambda kv: -abs(kv[1]))[:15])
print(json.dumps(report), flush=True)
if os.environ.get("OUT"):
    atomic_write_text(Path(os.environ["OUT"]) / "decode_host_time.json", json.dumps(report, indent=1) + "\n")
