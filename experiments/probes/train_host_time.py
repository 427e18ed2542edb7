"""Probe: where the injected forward + backward spends its wall time beyond the GPU's work.

On the bench's 8 x 512 shape the injected forward + backward costs about 1.09 x the base in GPU
kernel time but far more in wall time; this splits that wall time. For the base, the injected
model (an adapter per row) and PEFT (one shared adapter), in one process: wall ms of the
forward with a graph alone and of forward + backward (interleaved repeats), GPU kernel ms, and
the self CPU time per op of one forward + backward against the base's (profiler).

    python experiments/probes/train_host_time.py      # full size on CUDA, tiny on CPU; JSON to $OUT
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from probe_setup import CUDA, DEVICE, DTYPE, SIZE, SPEC

from hyperlora.atomic import atomic_write_text
from hyperlora.bench.common import build_model
from hyperlora.bench.timing import device_kernels, time_interleaved
from hyperlora.injector import inject
from hyperlora.targets import find_targets
from hyperlora.toy.reference import random_adapters, wrap_lora

model = build_model(SIZE, DTYPE, DEVICE)
targets = find_targets(model)
ids = torch.randint(3, SIZE.vocab, (SIZE.batch, SIZE.tokens), generator=torch.Generator().manual_seed(0)).to(DEVICE)
embeds = model.get_input_embeddings()(ids).detach()
trainable = random_adapters(targets, SIZE.batch, SPEC.rank, DTYPE, DEVICE, requires_grad=True)


def loss_of(m: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(inputs_embeds=x, use_cache=False).logits.float().mean()


def step(injector: type[inject] | None, backward: bool) -> Callable[[], None]:
    """One forward (and backward) of the student, bare (``injector=None``) or under ``injector``."""
    def fn() -> None:
        with injector(model, trainable, SPEC) if injector else contextlib.nullcontext():
            loss = loss_of(model, embeds.clone().requires_grad_(True))
        if backward:
            loss.backward()
    return fn


class _LoRAAdd(torch.autograd.Function):
    """``out += s · (x A) B`` in place, one autograd node; backward: four GEMMs, the scale on [B, T, R]."""

    @staticmethod
    def forward(ctx: Any, out: torch.Tensor, x: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                scaling: float) -> torch.Tensor:
        u = torch.bmm(x, A).mul_(scaling)
        ctx.save_for_backward(x, A, B, u)
        ctx.scaling = scaling
        ctx.mark_dirty(out)
        return out.baddbmm_(u, B)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        x, A, B, u = ctx.saved_tensors
        gB = torch.bmm(u.transpose(1, 2), g) if ctx.needs_input_grad[3] else None
        gu = torch.bmm(g, B.transpose(1, 2)).mul_(ctx.scaling)
        gA = torch.bmm(x.transpose(1, 2), gu) if ctx.needs_input_grad[2] else None
        gx = torch.bmm(gu, A.transpose(1, 2)) if ctx.needs_input_grad[1] else None
        return g, gx, gA, gB, None


class FunctionInject(inject):
    def _hook(self, name: str) -> Any:
        def hook(module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
            A, B = self.adapters[name]
            return _LoRAAdd.apply(output, args[0], A, B, self.spec.scaling)
        return hook


def check_function_gradients() -> float:
    """Max abs difference of the A/B gradients, custom Function against autograd's (relative to their max)."""
    grads = []
    for injector in (inject, FunctionInject):
        for A, B in trainable.values():
            A.grad = B.grad = None
        step(injector, True)()
        grads.append(torch.cat([t.grad.flatten().float() for pair in trainable.values() for t in pair]))
    return round(float((grads[0] - grads[1]).abs().max() / grads[0].abs().max()), 6)


def ops(fn: Callable[[], None]) -> tuple[Counter[str], Counter[str]]:
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    totals: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for e in prof.key_averages():
        totals[e.key] += e.self_cpu_time_total
        counts[e.key] += e.count
    return totals, counts


timing = {"device": DEVICE, "warmup": 2, "iters": 3 if CUDA else 2, "repeats": 5 if CUDA else 3}
fns: dict[str, Callable[[], None]] = {f"{name}_{part}": step(injector, part == "forward_backward")
                                      for name, injector in (("base", None), ("injected", inject),
                                                             ("function", FunctionInject))
                                      for part in ("forward", "forward_backward")}
report: dict[str, Any] = {"device": torch.cuda.get_device_name() if CUDA else "cpu", "size": SIZE.__dict__,
                          "targets": len(targets)}
report["function_grad_rel_diff"] = check_function_gradients()
report["wall_ms"] = {k: round(v, 3) for k, v in time_interleaved(fns, **timing).items()}
report["kernel_ms_and_launches"] = {k: device_kernels(fn, DEVICE, iters=2) for k, fn in fns.items()}
base_t, base_c = ops(fns["base_forward_backward"])
inj_t, inj_c = ops(fns["injected_forward_backward"])
fun_t, _ = ops(fns["function_forward_backward"])
report["self_cpu_ms"] = {"base": round(sum(base_t.values()) / 1000, 3), "injected": round(sum(inj_t.values()) / 1000, 3),
                         "function": round(sum(fun_t.values()) / 1000, 3)}
diff = {k: (round((inj_t[k] - base_t.get(k, 0)) / 1000, 3), inj_c[k] - base_c.get(k, 0)) for k in inj_t}
report["injected_minus_base_top_ms_and_calls"] = dict(sorted(diff.items(), key=lambda kv: -abs(kv[1][0]))[:25])
peft = wrap_lora(copy.deepcopy(model), targets, SPEC)  # wraps in place: a copy, the base stays bare
peft_fns = {"base_forward_backward": step(None, True),
            "peft_forward_backward": lambda: loss_of(peft, embeds.clone().requires_grad_(True)).backward()}
report["peft_wall_ms"] = {k: round(v, 3) for k, v in time_interleaved(peft_fns, **timing).items()}
print(json.dumps(report, default=str), flush=True)
if os.environ.get("OUT"):
    atomic_write_text(Path(os.environ["OUT"]) / "train_host_time.json", json.dumps(report, indent=1, default=str) + "\n")
