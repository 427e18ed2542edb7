"""Benchmark adapter generation: prompts -> (A, B) for every target.

Times the hypernetwork (encoder + generator, no cache) for 1, 8 and 64 prompts,
each as a ratio to one base forward of the student on 8 x 512 tokens timed in
the same process, and reports peak memory:

    python scripts/bench_generator.py                # GPU: full size (the injector benchmark's student)
    python scripts/bench_generator.py --size small   # CPU-sized check
"""

from __future__ import annotations

import argparse
import random
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_injector import SIZES, build_model  # noqa: E402

from hyperlora.benchmarking import device_name, peak_memory_mib, report, reset_peak_memory, time_ms  # noqa: E402
from hyperlora.config import HyperLoRAConfig  # noqa: E402
from hyperlora.generator import GeneratorConfig  # noqa: E402
from hyperlora.lora import LoRASpec  # noqa: E402
from hyperlora.model import HyperLoRA  # noqa: E402
from hyperlora.tokenizer import char_tokenizer  # noqa: E402

WORDS = "reverse sort the words shift every letter by two keep first three upper case alternate count vowels".split()


def prompts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))).capitalize() + "." for _ in range(n)]


def run(size_name: str, rank: int, head_rank: int | None, iters: int) -> dict[str, Any]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    size = SIZES[size_name]
    student = build_model(size, dtype, device)
    config = HyperLoRAConfig(lora=LoRASpec(rank=rank, alpha=2.0 * rank), generator=GeneratorConfig(head_rank=head_rank))
    hyper = HyperLoRA(student, char_tokenizer(), config).eval()
    ids = torch.randint(0, size["vocab"], (size["batch"], size["tokens"]), device=device)
    timed = dict(device=device, iters=iters)
    # The generator keeps fp32 weights (they train); on a GPU it runs under bf16 autocast.
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()

    def base_forward() -> None:
        with torch.no_grad():
            student(ids, use_cache=False)

    results: dict[str, Any] = {"base_forward_ms": round(time_ms(base_forward, **timed), 3)}
    for n in (1, 8, 64):
        batch = prompts(n)

        def generate() -> None:
            with torch.no_grad(), autocast:
                hyper.hypernet(batch)

        reset_peak_memory(device)
        ms = time_ms(generate, **timed)
        results[f"adapters_{n}_prompts"] = {
            "ms": round(ms, 3),
            "ratio_to_base_forward": round(ms / results["base_forward_ms"], 4),
            "peak_memory_mib": peak_memory_mib(device),
        }
    counts = hyper.parameter_counts()
    return {
        "benchmark": "generator",
        "device": device_name(device),
        "torch": torch.__version__,
        "student_dtype": str(dtype).replace("torch.", ""),
        "shape": {**size, "rank": rank, "targets": len(hyper.targets), "head_rank": head_rank},
        "trainable_parameters": {"encoder": counts["encoder"], "generator": counts["generator"]},
        "generator_parameters": hyper.hypernet.generator.parameter_report(),
        **results,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default=None, help="default: full on GPU, small on CPU")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--head-rank", type=int, default=None, help="factorised generator heads (default: full)")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    size = args.size or ("full" if torch.cuda.is_available() else "small")
    report(run(size, args.rank, args.head_rank, args.iters), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
