"""Per-token decode latency of ``generate`` with a KV cache: base, per-row injected, PEFT, merged.

Greedy decoding of ``[decode_batch, decode_prompt]`` random prompt ids for
exactly ``decode_new`` = N tokens (``min_new_tokens = max_new_tokens``: no row
stops early). Prefill is removed by difference::

    per-token ms = (t(N new tokens) - t(1 new token)) / (N - 1)     (each repeat; median over repeats)

``ratios`` divide those medians; ``paired_ratios`` divide within each repeat first and take the
median of the quotients (``timing.paired_ratios``), which host noise moves less.

``generate`` with one new token runs the prefill and picks one token; with N it
runs the same prefill and N - 1 decode steps, so the difference is N - 1 decode
steps (each one forward on ``[B, 1]`` with the cache plus generate's own per-step
work). Anything paid once per call (entering the injector, copying the model
inputs) cancels too. Variants, each a ratio to ``base``:

* ``injected_per_row``: a different adapter for every row, via ``hyperlora.injector.inject``
  (q, k and v share one shrink: ``hyperlora.fast_decode``);
* ``injected_per_row_unshared``: the same with ``share_inputs=False``, a shrink per target;
* ``peft_single_adapter``: PEFT LoRA with row 0's adapter for every row;
* ``merged``: row 0's ΔW merged into the weights.

Correctness, checked here on the same prompts: row 0 of the injected run must
generate the tokens the merged model generates for row 0 (greedy). In fp32 they
are equal; in bf16 the two roundings differ, so the fraction of equal tokens is
reported beside the boolean, and so is the distance of row 0's prefill logits
from the merged model's, against the base's distance from it.

``kernel_ms_per_token`` / ``kernel_ratios`` (CUDA only): the same difference of
two generate calls in GPU kernel time alone (profiler), so the GPU work of a
decode step is separated from the host time spent launching it. At batch 16 a
decode step's kernels are microseconds each, so wall time there is mostly host
time; the kernel ratio says what the adapters cost the GPU, and
``kernel_launches_per_token`` how many kernels each step queues (host work).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from hyperlora.bench.common import BenchContext
from hyperlora.bench.timing import device_kernels, figures, kernel_ratio, paired_ratios, rotation, time_ms
from hyperlora.injector import inject
from hyperlora.lora import AdapterBatch
from hyperlora.targets import Target, find_targets
from hyperlora.toy.reference import merged_copy, peft_copy, random_adapters, random_ids

__all__ = ["METHOD", "decode_inputs", "kernels_per_token", "per_repeat", "run", "time_per_token"]

METHOD = ("per-token = (t(prompt + N new) - t(prompt + 1 new)) / (N - 1) per repeat, variants interleaved, "
          "median over repeats; paired_ratios: median over repeats of the per-token quotient within the repeat")


def run(ctx: BenchContext) -> dict[str, Any]:
    spec, device = ctx.spec, ctx.device
    rows, prompt, new = ctx.size.decode_batch, ctx.size.decode_prompt, ctx.size.decode_new
    model, targets, ids, mask, adapters = decode_inputs(ctx)
    merged = merged_copy(model, adapters, spec, targets)
    peft = peft_copy(model, adapters, spec, targets)

    variants: dict[str, tuple[nn.Module, Callable[[], AbstractContextManager[Any]]]] = {
        "base": (model, nullcontext),
        "injected_per_row": (model, lambda: inject(model, adapters, spec)),
        # The same without shared shrinks (q, k, v each their own): the before of that change.
        "injected_per_row_unshared": (model, lambda: inject(model, adapters, spec, share_inputs=False)),
        "peft_single_adapter": (peft, nullcontext),
        "merged": (merged, nullcontext),
    }

    def generate(name: str, new_tokens: int) -> Tensor:
        """The generated ids ``[B, prompt + new_tokens]``."""
        m, context = variants[name]
        with torch.no_grad(), context():
            out = m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
        if out.shape != (rows, prompt + new_tokens):
            raise RuntimeError(f"{name}: generate returned {tuple(out.shape)}, expected {(rows, prompt + new_tokens)}")
        return out

    names = list(variants)
    per_token, generate_ms = time_per_token(generate, names, new, device, repeats=max(5, min(ctx.iters, 9)))
    kernels, launches = kernels_per_token(generate, names, new, device)

    out = {name: generate(name, new)[:, prompt:] for name in ("base", "injected_per_row", "merged")}
    equal = out["injected_per_row"][0] == out["merged"][0]
    with torch.no_grad():
        # The prefill's logits: in bf16 a near-tie can flip a greedy token, so the distance
        # between the two models' logits (against the adapter's own effect) is reported too.
        reference = merged(ids[:1], attention_mask=mask[:1], use_cache=False).logits.float()
        base_logits = model(ids[:1], attention_mask=mask[:1], use_cache=False).logits.float()
        with inject(model, adapters, spec):
            injected = model(ids, attention_mask=mask, use_cache=False).logits[:1].float()
    step = {name: _decode_step_logits(variants[name], ids, mask) for name in ("base", "injected_per_row", "merged")}
    check = {
        "row0_injected_equals_merged": bool(equal.all()),
        "row0_match_fraction": round(float(equal.float().mean()), 4),
        "row0_differs_from_base": not torch.equal(out["base"][0], out["merged"][0]),
        "row0_prefill_logits_max_abs_diff_vs_merged": round(float((injected - reference).abs().max()), 5),
        "row0_prefill_logits_max_abs_diff_base_vs_merged": round(float((base_logits - reference).abs().max()), 5),
        # The same for one cached decode step (one token per row, the hook's decode path).
        "row0_decode_step_logits_max_abs_diff_vs_merged": round(float(
            (step["injected_per_row"][0] - step["merged"][0]).abs().max()), 5),
        "row0_decode_step_logits_max_abs_diff_base_vs_merged": round(float(
            (step["base"][0] - step["merged"][0]).abs().max()), 5),
    }
    return {
        "method": METHOD,
        "shape": {"batch": rows, "prompt_tokens": prompt, "new_tokens": new, "rank": spec.rank,
                  "targets": len(targets), "adapter_per_row": True},
        **figures(per_token, {name: "base" for name in variants if name != "base"}),
        "paired_ratios": paired_ratios(per_repeat(generate_ms, new), {name: "base" for name in names if name != "base"}),
        "generate_ms": generate_ms,
        "kernel_ms_per_token": kernels,
        "kernel_ratios": {name: kernel_ratio(kernels[name], kernels["base"]) for name in names if name != "base"},
        "kernel_launches_per_token": launches,
        "check": check,
    }


def _decode_step_logits(variant: tuple[nn.Module, Callable[[], AbstractContextManager[Any]]], ids: Tensor,
                        mask: Tensor) -> Tensor:
    """The logits ``[B, vocab]`` (fp32) of one cached decode step after the prefill: the last prompt
    token fed again, the same input for every variant (no variant's own choice of token)."""
    m, context = variant
    with torch.no_grad(), context():
        out = m(ids, attention_mask=mask, use_cache=True)
        token = ids[:, -1:]  # the same next token for every variant: the last prompt token again
        step_mask = torch.cat([mask, torch.ones_like(token)], dim=1)
        step = m(token, attention_mask=step_mask, past_key_values=out.past_key_values, use_cache=True)
        return step.logits[:, -1].float()


def decode_inputs(ctx: BenchContext) -> tuple[nn.Module, list[Target], Tensor, Tensor, AdapterBatch]:
    """The shared student, its targets, prompt ids and mask ``[decode_batch, decode_prompt]``, and a
    different random adapter per row: the same for every decode section (same seeds)."""
    size = ctx.size
    if size.decode_new < 2:
        raise ValueError(f"decode needs at least 2 new tokens to remove the prefill, got {size.decode_new}.")
    model = ctx.model()
    targets = find_targets(model)
    ids = random_ids(size.decode_batch, size.decode_prompt, vocab_size=size.vocab).to(ctx.device)
    adapters = random_adapters(targets, size.decode_batch, ctx.spec.rank, ctx.dtype, ctx.device)
    return model, targets, ids, torch.ones_like(ids), adapters


def time_per_token(generate: Callable[[str, int], Tensor], names: list[str], new: int, device: torch.device,
                   repeats: int) -> tuple[dict[str, float], dict[str, dict[str, list[float]]]]:
    """``({name: per-token ms}, {name: every repeat's whole-call ms})`` by ``METHOD``.

    ``generate(name, n)`` generates ``n`` new tokens with variant ``name``. Whole generate calls
    are slow: one pair per repeat. Variants interleave within each repeat (rotating the start),
    and each repeat gives its own per-token figure; medians of those. The whole-call times are
    returned too, so each median can be recomputed from the report.
    """
    for name in names:  # warm-up
        generate(name, 1), generate(name, new)
    samples: dict[str, list[float]] = {name: [] for name in names}
    calls: dict[str, dict[str, list[float]]] = {name: {"one": [], "full": []} for name in names}
    for r in range(repeats):
        for name in rotation(names, r):
            one = time_ms(lambda name=name: generate(name, 1), device=device, warmup=0, iters=1, repeats=1)
            full = time_ms(lambda name=name: generate(name, new), device=device, warmup=0, iters=1, repeats=1)
            calls[name]["one"].append(one), calls[name]["full"].append(full)
            samples[name].append((full - one) / (new - 1))
    per_token = {name: statistics.median(values) for name, values in samples.items()}
    generate_ms = {name: {"new_tokens_1": [round(t, 4) for t in c["one"]],
                          f"new_tokens_{new}": [round(t, 4) for t in c["full"]]} for name, c in calls.items()}
    return per_token, generate_ms


def per_repeat(generate_ms: dict[str, dict[str, list[float]]], new: int) -> dict[str, list[float]]:
    """``{name: per-token ms of each repeat}`` from ``time_per_token``'s whole-call times (as reported)."""
    return {name: [(full - one) / (new - 1) for full, one in zip(c[f"new_tokens_{new}"], c["new_tokens_1"], strict=True)]
            for name, c in generate_ms.items()}


def kernels_per_token(generate: Callable[[str, int], Tensor], names: list[str], new: int,
                      device: torch.device) -> tuple[dict[str, float | None], dict[str, float | None]]:
    """``({name: GPU kernel ms per token}, {name: kernel launches per token})``, the same difference of
    two generate calls in kernel time (profiler); ``None`` on CPU."""
    kernels: dict[str, float | None] = {}
    launches: dict[str, float | None] = {}
    for name in names:
        full = device_kernels(lambda name=name: generate(name, new), device, iters=1)
        one = device_kernels(lambda name=name: generate(name, 1), device, iters=1)
        step = None if full is None or one is None else [(f - o) / (new - 1) for f, o in zip(full, one, strict=True)]
        kernels[name] = None if step is None else round(step[0], 5)
        launches[name] = None if step is None else round(step[1], 1)
    return kernels, launches
