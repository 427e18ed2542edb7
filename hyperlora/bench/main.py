"""``hyperlora bench``: every performance benchmark in one process, one JSON report.

    hyperlora bench --out bench.json                    # GPU: full size, bf16; CPU: small, fp32
    hyperlora bench --size small --only injector,decode --iters 5
    hyperlora bench --size llama3-8b --out bench-8b.json   # a real model's shape (random weights), one H200

Every figure is a ratio to a baseline timed in the same process (each section
names its baselines). Sections: injector, generator, decode, decode_compiled, train_step (see
``hyperlora.bench.<section>``). The report is printed and, with ``--out`` (an existing file only with ``--force``),
written atomically after the last section: a failed run leaves the old file.

Before a section runs, its memory need is estimated from the size (``hyperlora.bench.memory``);
one that would not fit, or that runs out of device memory all the same, is skipped and the
report says why (``{"skipped": reason}``) instead of the run dying half-way.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import sys
import time
from typing import Any

import torch

from hyperlora.atomic import atomic_write_text
from hyperlora.bench.common import SIZES, BenchContext
from hyperlora.bench.memory import GIB, estimate, parameter_count, shortfall
from hyperlora.bench.timing import device_name, free_cached_memory
from hyperlora.cli_checks import check_int, check_output_file

__all__ = ["SECTIONS", "main", "parse_only", "run"]

# section -> module with ``run(ctx) -> dict``; imported only when chosen.
SECTIONS: dict[str, str] = {
    "injector": "hyperlora.bench.injector",
    "generator": "hyperlora.bench.generator",
    "decode": "hyperlora.bench.decode",
    "decode_compiled": "hyperlora.bench.decode_compiled",
    "train_step": "hyperlora.bench.train_step",
}


def parse_only(text: str | None) -> list[str]:
    """``"injector,decode"`` -> the named sections in the report's order; ``None`` -> all of them."""
    if text is None:
        return list(SECTIONS)
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SECTIONS]
    if unknown or not names:
        shown = ", ".join(repr(n) for n in unknown) or "nothing"
        raise ValueError(f"--only names {shown}; choose a comma-separated subset of {', '.join(SECTIONS)}.")
    return [name for name in SECTIONS if name in names]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hyperlora bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sizes = "; ".join(f"{name}: {size.about}" for name, size in SIZES.items())
    parser.add_argument("--size", choices=list(SIZES), default=None,
                        help=f"the student's shape and batch shapes (random weights) -- {sizes}. "
                             "Default: full on CUDA, small on CPU")
    parser.add_argument("--only", default=None, help=f"comma-separated sections (default: all of {','.join(SECTIONS)})")
    parser.add_argument("--out", default=None, help="write the JSON report here (atomically)")
    parser.add_argument("--force", action="store_true", help="replace an existing --out report")
    parser.add_argument("--iters", type=int, default=10, help="calls per timed repeat (default 10)")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank (default 16)")
    parser.add_argument("--head-rank", type=int, default=None, help="factorised generator heads (default: full)")
    parser.add_argument("--attn", default="sdpa", help="attn_implementation of the student (default sdpa)")
    return parser


def run(ctx: BenchContext, sections: list[str], log: Any = sys.stderr) -> dict[str, Any]:
    """The report: environment, shapes, and one entry per section."""
    results: dict[str, Any] = {}
    estimates = {name: estimate(name, ctx.size, ctx.dtype) for name in sections}
    for name in sections:
        start = time.perf_counter()
        reason = shortfall(estimates[name], ctx.device, student_resident=ctx.student_built)
        if reason is None:
            try:
                results[name] = importlib.import_module(SECTIONS[name]).run(ctx)
            except torch.cuda.OutOfMemoryError as error:  # the estimate's last resort: record it, go on
                reason = f"out of memory: {str(error).splitlines()[0]}"
        if reason is not None:
            results[name] = {"skipped": reason, "memory_estimate": estimates[name].to_dict()}
        # The section's copies and activations are gone before the next one is estimated and run.
        gc.collect()
        free_cached_memory(ctx.device)
        done = "skipped, " + reason if reason is not None else f"{time.perf_counter() - start:.1f} s"
        print(f"bench {name}: {done}", file=log, flush=True)
    import peft
    import transformers

    return {
        "benchmark": "hyperlora bench",
        "device": device_name(ctx.device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "dtype": str(ctx.dtype).replace("torch.", ""),
        "size": ctx.size_name,
        "shape": ctx.size.to_dict(),
        "student": {"parameters": parameter_count(ctx.size), "build_s": ctx.build_seconds,
                    "weights_gib": round(estimates[sections[0]].weights / GIB, 2) if sections else None},
        "memory_estimate_gib": {name: round(e.total / GIB, 2) for name, e in estimates.items()},
        "rank": ctx.rank,
        "head_rank": ctx.head_rank,
        "attn_implementation": ctx.attn_implementation,
        "iters": ctx.iters,
        "sections": results,
    }


def main(argv: list[str] | None = None) -> int:
    import json

    args = _parser().parse_args(argv)
    sections = parse_only(args.only)  # before any model is built: a typo costs nothing
    for flag in ("iters", "rank", "head_rank"):
        check_int(getattr(args, flag), "--" + flag.replace("_", "-"))
    check_output_file(args.out, "--out", args.force)  # before the run: a taken path costs no benchmark
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ctx = BenchContext(
        size_name=args.size or ("full" if device.type == "cuda" else "small"),
        device=device,
        dtype=torch.bfloat16 if device.type == "cuda" else torch.float32,
        rank=args.rank,
        iters=args.iters,
        attn_implementation=args.attn,
        head_rank=args.head_rank,
    )
    text = json.dumps(run(ctx, sections), indent=2)
    print(text)
    if args.out:
        atomic_write_text(args.out, text + "\n")
        print(f"bench: wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
