"""Probe: is a compiled student right under ``inject``? torch.compile(mode="reduce-overhead")
(CUDA graphs) of the full-size student on CUDA, the eager backend on CPU: its logits against the
eager injected model's, over two injections with different adapters, then the base after them.

    python experiments/probes/compiled_logits.py        # JSON to stdout and to $OUT/compiled_logits.json
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from probe_setup import CUDA, DEVICE, DTYPE, SIZE, SPEC
from torch import Tensor

from hyperlora.atomic import atomic_write_text
from hyperlora.bench.common import build_model
from hyperlora.injector import inject
from hyperlora.targets import find_targets
from hyperlora.toy.reference import random_adapters

model = build_model(SIZE, DTYPE, DEVICE)
targets = find_targets(model)
ids = torch.randint(3, SIZE.vocab, (16, 128), generator=torch.Generator().manual_seed(0)).to(DEVICE)
compiled = torch.compile(model, mode="reduce-overhead") if CUDA else torch.compile(model, backend="eager")


def logits(m: torch.nn.Module) -> Tensor:
    """fp32 logits ``[16, 128, V]``, cloned: a CUDA-graph replay overwrites its output buffers."""
    return m(ids, use_cache=False).logits.float().clone()


def max_abs(a: Tensor, b: Tensor) -> float:
    return round(float((a - b).abs().max()), 4)


r: dict[str, Any] = {}
with torch.no_grad():
    base = logits(model)
    for seed in (0, 1):
        adapters = random_adapters(targets, 16, SPEC.rank, DTYPE, DEVICE, seed=seed)
        with inject(model, adapters, SPEC):
            eager = logits(model)
            start = time.time()
            outs = [logits(compiled) for _ in range(3)]
            r[f"injection{seed}_first3_calls_s"] = round(time.time() - start, 1)
        r[f"injection{seed}_max_abs_compiled_vs_eager"] = [max_abs(o, eager) for o in outs]
        r[f"injection{seed}_max_abs_eager_vs_base"] = max_abs(eager, base)
    r["base_after_max_abs_compiled_vs_eager"] = [max_abs(logits(compiled), base) for _ in range(2)]
    r["eager_bf16_rerun_max_abs"] = max_abs(logits(model), base)
print(json.dumps(r))
if os.environ.get("OUT"):
    atomic_write_text(Path(os.environ["OUT"]) / "compiled_logits.json", json.dumps(r, indent=1) + "\n")
