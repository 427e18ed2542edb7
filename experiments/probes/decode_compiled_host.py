"""Probe: the host side of a compiled decode step (static KV cache, ``generate``'s torch.compile with
CUDA graphs), base against injected: wall ms per token in the order base, injected, base, injected,
and the self CPU time per token of the ops that differ (profiler, 64-token minus 1-token call).

    python experiments/probes/decode_compiled_host.py      # full size inductor on CUDA; tiny eager on CPU
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from static_decode import CUDA, NEW, SIZE, SPEC, adapters, generate, model, per_token_ms, sync
from torch._dynamo.utils import counters

from hyperlora.atomic import atomic_write_text
from hyperlora.injector import inject


def cpu_ops(new: int) -> tuple[Counter[str], Counter[str]]:
    from torch.profiler import ProfilerActivity, profile

    sync()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        generate(new)
        sync()
    totals: Counter[str] = Counter()
    calls: Counter[str] = Counter()
    for e in prof.key_averages():
        totals[e.key[:80]] += e.self_cpu_time_total
        calls[e.key[:80]] += e.count
    return totals, calls


def step_ops() -> dict[str, Counter[str]]:
    full_t, full_c = cpu_ops(NEW)
    one_t, one_c = cpu_ops(1)
    return {"us": Counter({k: (full_t[k] - one_t.get(k, 0)) / (NEW - 1) for k in full_t}),
            "calls": Counter({k: (full_c[k] - one_c.get(k, 0)) / (NEW - 1) for k in full_c})}


report: dict[str, Any] = {"device": torch.cuda.get_device_name() if CUDA else "cpu", "size": SIZE.__dict__}
generate(NEW), generate(NEW)
report["base_ms"] = per_token_ms(7)
base_ops = step_ops()
with inject(model, adapters, SPEC):
    generate(NEW), generate(NEW)
    report["injected_ms"] = per_token_ms(7)
    inj_ops = step_ops()
report["base_again_ms"] = per_token_ms(7)
with inject(model, adapters, SPEC):
    report["injected_again_ms"] = per_token_ms(7)
report["counters"] = {k: dict(v) for k, v in counters.items() if k in ("stats", "recompiles", "graph_break")}
report["step_self_cpu_us"] = {"base": round(sum(base_ops["us"].values()), 1),
                              "injected": round(sum(inj_ops["us"].values()), 1)}
report["base_top_self_cpu_us_per_token"] = {k: [round(v, 1), round(base_ops["calls"][k], 2)]
                                            for k, v in base_ops["us"].most_common(12)}
diff = {k: [round(inj_ops["us"][k] - base_ops["us"].get(k, 0), 1), round(inj_ops["calls"][k] - base_ops["calls"].get(k, 0), 2)]
        for k in inj_ops["us"]}
report["injected_minus_base_self_cpu_us_per_token"] = dict(sorted(diff.items(), key=lambda kv: -abs(kv[1][0]))[:16])
print(json.dumps(report), flush=True)
if os.environ.get("OUT"):
    atomic_write_text(Path(os.environ["OUT"]) / "decode_compiled_host.json", json.dumps(report, indent=1) + "\n")
