"""``hyperlora bench``: every performance benchmark in one process, one JSON report.

    hyperlora bench --out bench.json                    # GPU: full size, bf16; CPU: small, fp32
    hyperlora bench --size small --only injector,decode --iters 5

Every figure is a ratio to a baseline timed in the same process (each section
names its baselines). Sections: injector, generator, decode, decode_compiled, train_step (see
``hyperlora.bench.<section>``). The report is printed and, with ``--out`` (an existing file only with ``--force``),
written atomically after the last section: a failed run leaves the old file.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from typing import Any

import torch

from hyperlora.atomic import atomic_write_text
from hyperlora.bench.common import SIZES, BenchContext
from hyperlora.bench.timing import device_name
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
    parser.add_argument("--size", choices=list(SIZES), default=None,
                        help="full (one H100), small (a CPU), tiny (tests); default: full on CUDA, small on CPU")
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
    for name in sections:
        start = time.perf_counter()
        results[name] = importlib.import_module(SECTIONS[name]).run(ctx)
        print(f"bench {name}: {time.perf_counter() - start:.1f} s", file=log, flush=True)
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
