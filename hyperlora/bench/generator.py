"""Adapter generation: prompts -> (A, B) for every target, against one base forward of the student.

The hypernetwork (encoder + generator, no cache, no grad) on 1, 8 and 64
prompts, each a ratio to one forward of the shared student on
``[batch, tokens]``, with peak memory (CUDA only). On a GPU the generator keeps
its fp32 weights and runs under bf16 autocast, as in training.
"""

from __future__ import annotations

import random
from contextlib import nullcontext
from typing import Any

import torch

from hyperlora.bench.common import BenchContext
from hyperlora.bench.timing import figures, peak_memory_mib, reset_peak_memory, time_ms
from hyperlora.config import HyperLoRAConfig
from hyperlora.generator import GeneratorConfig
from hyperlora.model import HyperLoRA
from hyperlora.toy.tokenizer import char_tokenizer

__all__ = ["PROMPT_COUNTS", "prompts", "run"]

PROMPT_COUNTS = (1, 8, 64)
_PROMPT_WORDS = ["reverse", "sort", "the", "words", "shift", "every", "letter", "by", "two", "keep", "first", "three",
                 "upper", "case", "alternate", "count", "vowels"]


def prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` instruction-like prompts of 6-14 words."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(_PROMPT_WORDS) for _ in range(rng.randint(6, 14))).capitalize() + "." for _ in range(n)]


def run(ctx: BenchContext) -> dict[str, Any]:
    size, device = ctx.size, ctx.device
    student = ctx.model()
    config = HyperLoRAConfig(lora=ctx.spec, generator=GeneratorConfig(head_rank=ctx.head_rank))
    hyper = HyperLoRA(student, char_tokenizer(), config).eval()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, size.vocab, (size.batch, size.tokens), generator=gen).to(device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()

    def base_forward() -> None:
        with torch.no_grad():
            student(ids, use_cache=False)

    times = {"base_forward": time_ms(base_forward, **ctx.timing)}
    memory: dict[str, float | None] = {}
    for n in PROMPT_COUNTS:
        batch = prompts(n)

        def generate(batch: list[str] = batch) -> None:
            with torch.no_grad(), autocast:
                hyper.hypernet(batch)

        reset_peak_memory(device)
        times[f"adapters_{n}_prompts"] = time_ms(generate, **ctx.timing)
        memory[f"adapters_{n}_prompts"] = peak_memory_mib(device)
    counts = hyper.parameter_counts()
    return {
        "shape": {"batch": size.batch, "tokens": size.tokens, "rank": ctx.rank, "targets": len(hyper.targets),
                  "head_rank": ctx.head_rank, "prompts": list(PROMPT_COUNTS)},
        **figures(times, {f"adapters_{n}_prompts": "base_forward" for n in PROMPT_COUNTS}),
        "peak_memory_mib": memory,
        "trainable_parameters": {"encoder": counts["encoder"], "generator": counts["generator"]},
        "generator_parameters": hyper.hypernet.generator.parameter_report(),
    }
