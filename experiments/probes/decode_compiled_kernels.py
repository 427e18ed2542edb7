"""Probe: where a compiled decode step's time goes, base against injected (static KV cache,
``generate``'s automatic torch.compile, CUDA graphs). For each variant: wall ms per token, GPU
kernel ms per token and kernels per token (profiler, difference of a 64-token and a 1-token call),
and the kernels that take the most time per token.

    python experiments/probes/decode_compiled_kernels.py     # full size inductor on CUDA; tiny eager on CPU

Variants of the injected hook's maths at decode (T = 1): ``bmm`` (the injector's ``bmm`` +
``baddbmm_``) and ``pointwise`` (the same sums written as broadcast products and ``sum``, which
inductor turns into its own fused reductions instead of calling cuBLAS).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import torch._dynamo
from static_decode import CUDA, NEW, PROMPT, SIZE, SPEC, adapters, generate, model, per_token_ms, sync
from torch import Tensor

from hyperlora.atomic import atomic_write_text
from hyperlora.injector import inject

torch._dynamo.config.cache_size_limit = 64  # three variants of one frame


class PointwiseInject(inject):
    """The injector with the decode sums written as broadcast products (inductor fuses them)."""

    def _hook(self, name: str) -> Any:
        scaling = self.spec.scaling

        def hook(module: torch.nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
            A, B = self._pair(name, args[0].shape[0])
            x = args[0]
            xa = (x.unsqueeze(-1) * A.unsqueeze(1)).sum(-2)  # [B, T, R]
            delta = (xa.unsqueeze(-1) * B.unsqueeze(1)).sum(-2)  # [B, T, O]
            return output.add_(delta, alpha=scaling)

        return hook


def kernels(new: int) -> tuple[Counter[str], Counter[str]]:
    """Kernel name -> total device µs of one ``generate(new)`` call (CUDA only)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    sync()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        generate(new)
        sync()
    totals: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for e in prof.key_averages():
        if e.device_type == DeviceType.CUDA:
            totals[e.key[:90]] += e.self_device_time_total
            counts[e.key[:90]] += e.count
    return totals, counts


def measure(label: str) -> dict[str, Any]:
    start = time.time()
    generate(NEW), generate(NEW)  # compile + record graphs
    result: dict[str, Any] = {"first_calls_s": round(time.time() - start, 1), "ms_per_token": per_token_ms()}
    if CUDA:
        full_t, full_c = kernels(NEW)
        one_t, one_c = kernels(1)
        step_t = {k: (full_t[k] - one_t.get(k, 0)) / (NEW - 1) for k in full_t}
        step_c = {k: (full_c[k] - one_c.get(k, 0)) / (NEW - 1) for k in full_c}
        result["kernel_ms_per_token"] = round(sum(step_t.values()) / 1000, 5)
        result["kernels_per_token"] = round(sum(step_c.values()), 1)
        top = sorted(step_t.items(), key=lambda kv: -kv[1])[:14]
        result["top_kernels_us_per_token"] = {k: [round(v, 2), round(step_c[k], 2)] for k, v in top}
    result["tokens"] = generate(NEW)[:, PROMPT:]
    print(label, json.dumps({k: v for k, v in result.items() if k != "tokens"}), flush=True)
    return result


report: dict[str, Any] = {"device": torch.cuda.get_device_name() if CUDA else "cpu", "size": SIZE.__dict__}
base = measure("base")
with inject(model, adapters, SPEC):
    bmm = measure("bmm")
with PointwiseInject(model, adapters, SPEC):
    pointwise = measure("pointwise")
base_again = measure("base_again")
for name, r in (("base", base), ("bmm", bmm), ("pointwise", pointwise), ("base_again", base_again)):
    report[name] = {k: v for k, v in r.items() if k != "tokens"}
report["pointwise_tokens_equal_bmm"] = bool(torch.equal(pointwise["tokens"], bmm["tokens"]))
report["pointwise_row0_match_bmm"] = float((pointwise["tokens"][0] == bmm["tokens"][0]).float().mean())
for name in ("bmm", "pointwise"):
    report[f"{name}_ratio"] = round(report[name]["ms_per_token"] / base["ms_per_token"], 4)
    if CUDA:
        report[f"{name}_kernel_ratio"] = round(report[name]["kernel_ms_per_token"] / base["kernel_ms_per_token"], 4)
print(json.dumps(report), flush=True)
if os.environ.get("OUT"):
    atomic_write_text(Path(os.environ["OUT"]) / "decode_compiled_kernels.json", json.dumps(report, indent=1) + "\n")
