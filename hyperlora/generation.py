"""Generate with prompt-conditioned adapters: every row may carry its own prompt.

    rows = generate_records(hyper, ["Reverse the words.", "Answer in French."], ["a b c", "hello"])
    # [{"prompt": ..., "input": ..., "output": ...}, ...]

The student sees only the input, formatted exactly as in training
(``hyperlora.data.format.prefix_ids``); the prompt arrives as an adapter. Rows are
left-padded into batches and each batch is one ``generate`` call, its rows'
adapters computed in one hypernetwork forward. Greedy unless sampling is asked for.

Axis letters: B batch, T tokens.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from hyperlora.atomic import atomic_write_text
from hyperlora.cli_checks import check_float, check_int, check_output_file, check_seed
from hyperlora.data.format import end_of_turn_ids, prefix_ids
from hyperlora.data.records import Record, scan_jsonl  # the dataset's own rules, line by line
from hyperlora.encoder import check_prompts
from hyperlora.decoding import decode_new, left_padded
from hyperlora.model import HyperLoRA

__all__ = ["generate_records", "check_generation_settings", "read_batch", "main"]


# With a static KV cache every new (rows, prompt width) shape compiles the decoding step again on
# CUDA (tens of seconds): widths are rounded up to this many tokens so that batches share shapes.
STATIC_CACHE_WIDTH_MULTIPLE = 64


@torch.no_grad()
def _generate_batch(hyper: HyperLoRA, prompts: list[str], inputs: list[str], settings: dict[str, Any],
                    compare: bool) -> list[dict[str, str]]:
    tok, student = hyper.tokenizer, hyper.student
    device = next(student.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    settings = {"pad_token_id": pad, "eos_token_id": end_of_turn_ids(tok) or None, **settings}  # end of turn, EOS
    multiple = STATIC_CACHE_WIDTH_MULTIPLE if settings.get("cache_implementation") == "static" else 1
    bare = left_padded([prefix_ids(tok, None, x) for x in inputs], pad, device, multiple)
    width = bare["input_ids"].shape[1]
    # One hypernetwork forward for the batch's prompts, one generate with row i adapted to prompts[i].
    outputs = decode_new(tok, hyper.generate(prompts, bare, **settings), width)
    # num_return_sequences k: generate returns k rows per input, input i's at i*k ... i*k + k - 1.
    k = settings.get("num_return_sequences", 1)
    rows = [{"prompt": p, "input": x, "output": outputs[i * k + j]}
            for i, (p, x) in enumerate(zip(prompts, inputs)) for j in range(k)]
    if compare:
        # The base model twice: with the prompt in its context (what the adapter imitates), and without.
        in_context = left_padded([prefix_ids(tok, p, x) for p, x in zip(prompts, inputs)], pad, device, multiple)
        with_prompt = decode_new(tok, student.generate(**in_context, **settings), in_context["input_ids"].shape[1])
        without = decode_new(tok, student.generate(**bare, **settings), width)
        for row, a, b in zip(rows, with_prompt, without):
            row["base_with_prompt"], row["base_without_prompt"] = a, b
    return rows


def check_generation_settings(settings: dict[str, Any], flags: bool = False) -> None:
    """Refuse generation settings that would fail deep inside ``generate`` (or, worse, not fail).

    ``flags``: name them as command-line options (``--num-beams``) rather than as keywords.
    """
    name = (lambda key: "--" + key.replace("_", "-")) if flags else (lambda key: key)
    for key in ("max_new_tokens", "num_beams", "num_return_sequences"):
        check_int(settings.get(key), name(key))
    for key in ("min_new_tokens", "top_k"):  # top_k 0: no top-k filter
        check_int(settings.get(key), name(key), minimum=0)
    for key in ("temperature", "repetition_penalty"):
        check_float(settings.get(key), name(key))
    check_float(settings.get("top_p"), name("top_p"), high=1.0)
    low, high = settings.get("min_new_tokens"), settings.get("max_new_tokens")
    if low is not None and high is not None and low > high:
        raise ValueError(f"{name('min_new_tokens')} {low} exceeds {name('max_new_tokens')} {high}; "
                         "give a minimum no larger than the maximum.")
    sequences, beams = settings.get("num_return_sequences") or 1, settings.get("num_beams") or 1
    if sequences > beams and not settings.get("do_sample"):
        raise ValueError(f"{name('num_return_sequences')} {sequences} needs as many beams or sampling: "
                         f"add {name('num_beams')} {sequences} or {name('do_sample')}.")


def generate_records(hyper: HyperLoRA, prompts: Sequence[str], inputs: Sequence[str], batch_size: int = 16,
                     compare: bool = False, max_new_tokens: int = 64, static_cache: bool = False,
                     **generation_kwargs: Any) -> list[dict[str, str]]:
    """Generate one output per ``(prompts[i], inputs[i])`` row.

    Args:
        hyper: a HyperLoRA with a tokenizer (``HyperLoRA.from_pretrained(ckpt)``).
        prompts, inputs: one of each per row; prompts may differ from row to row.
        batch_size: rows per ``generate`` call.
        compare: also generate with the base model, prompt in context
            (``base_with_prompt``) and without it (``base_without_prompt``).
        static_cache: decode with a static KV cache (``cache_implementation="static"``).
            On CUDA transformers then compiles the decoding step and replays it as CUDA
            graphs: several times faster per token, after a compile of tens of seconds for
            each new batch shape (prompt widths are rounded up to a multiple of 64 tokens
            so that few shapes occur). Same outputs as the default dynamic cache.
        generation_kwargs: ``student.generate``'s names (``do_sample``,
            ``temperature``, ``top_p``, ``top_k``, ``num_beams``, ...).

    Returns:
        ``[{"prompt", "input", "output"(, "base_with_prompt", "base_without_prompt")}]`` in row order;
        with ``num_return_sequences=k``, k rows per input, one per returned sequence.
    """
    prompts, inputs = check_prompts(prompts), list(inputs)
    if len(prompts) != len(inputs):
        raise ValueError(f"Got {len(prompts)} prompts for {len(inputs)} inputs: give one prompt per row.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    if hyper.tokenizer is None:
        raise ValueError("Generating text needs a tokenizer: load the HyperLoRA with tokenizer=.")
    settings = {"max_new_tokens": max_new_tokens, "do_sample": False, **generation_kwargs}
    check_generation_settings(settings)
    if static_cache:
        settings["cache_implementation"] = "static"
    rows: list[dict[str, str]] = []
    for start in range(0, len(prompts), batch_size):
        end = start + batch_size
        rows += _generate_batch(hyper, prompts[start:end], inputs[start:end], settings, compare)
    return rows


def read_batch(path: str | Path) -> tuple[list[Record], list[str]]:
    """The good records of a JSONL file and one ``"FILE:LINE: reason"`` per bad line.

    Unlike training data, a bad line does not stop generation: the good lines
    are still worth their output.
    """
    return scan_jsonl(path, what="Batch file")


# -- command line ------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    from hyperlora.loading import add_checkpoint_arguments

    parser = argparse.ArgumentParser(
        prog="hyperlora generate",
        description="Generate with the adapter of a prompt. Either --prompt and --input, or --batch FILE.jsonl "
                    "whose rows carry their own 'prompt' and 'input'. Writes JSONL rows (prompt, input, output).",
    )
    add_checkpoint_arguments(parser)
    parser.add_argument("--prompt", help="the prompt turned into an adapter")
    parser.add_argument("--input", help="the text the student reads")
    parser.add_argument("--batch", help="JSONL file, one {'prompt', 'input'} object per line")
    parser.add_argument("--out", help="write JSONL here (atomically) instead of to stdout")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    parser.add_argument("--batch-size", type=int, default=16, help="rows per generate call")
    parser.add_argument("--compare", action="store_true",
                        help="also the base model with the prompt in context and without it")
    g = parser.add_argument_group("generation (transformers' names; greedy by default)")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--min-new-tokens", type=int, help="hold back EOS until this many tokens")
    g.add_argument("--do-sample", action="store_true")
    g.add_argument("--temperature", type=float)
    g.add_argument("--top-p", type=float)
    g.add_argument("--top-k", type=int)
    g.add_argument("--num-beams", type=int)
    g.add_argument("--num-return-sequences", type=int, help="outputs per row (one JSONL row each)")
    g.add_argument("--repetition-penalty", type=float)
    g.add_argument("--seed", type=int, help="seed the sampler for repeatable outputs")
    g.add_argument("--static-cache", action="store_true",
                   help="static KV cache: on CUDA the decoding step is compiled (CUDA graphs), several times "
                        "faster per token after a compile of tens of seconds per new batch shape")
    return parser


def _rows_to_run(args: argparse.Namespace) -> tuple[list[Record], list[str]]:
    if args.batch is not None:
        if args.prompt is not None or args.input is not None:
            raise ValueError("Give either --batch or --prompt with --input, not both.")
        return read_batch(args.batch)
    if args.prompt is None or args.input is None:
        raise ValueError("Give --prompt and --input (or --batch FILE.jsonl).")
    if not args.prompt.strip():
        raise ValueError("--prompt is empty: the adapter is made from it, give a non-empty prompt.")
    return [Record(args.prompt, args.input)], []


def main(argv: list[str] | None = None) -> int:
    """Exit code 0, or 1 when some line of ``--batch`` was malformed (its good lines still ran)."""
    from hyperlora.loading import load_from_args

    args = _parser().parse_args(argv)
    # Every option is checked before the (slow) load: a bad number or path costs nothing.
    optional = {"min_new_tokens": args.min_new_tokens, "temperature": args.temperature, "top_p": args.top_p,
                "top_k": args.top_k, "num_beams": args.num_beams, "num_return_sequences": args.num_return_sequences,
                "repetition_penalty": args.repetition_penalty}
    settings = {k: v for k, v in optional.items() if v is not None}  # unset: the model's defaults
    check_int(args.batch_size, "--batch-size")
    check_seed(args.seed)
    check_generation_settings({"max_new_tokens": args.max_new_tokens, "do_sample": args.do_sample, **settings},
                              flags=True)
    check_output_file(args.out, "--out", args.force)
    records, errors = _rows_to_run(args)
    for error in errors:
        print(error, file=sys.stderr)
    if records:
        hyper = load_from_args(args)
        if args.seed is not None:
            torch.manual_seed(args.seed)
        lines: list[str] = []
        for start in range(0, len(records), args.batch_size):
            chunk = records[start : start + args.batch_size]
            rows = generate_records(hyper, [r.prompt for r in chunk], [r.input for r in chunk],
                                    batch_size=args.batch_size, compare=args.compare,
                                    max_new_tokens=args.max_new_tokens, do_sample=args.do_sample,
                                    static_cache=args.static_cache, **settings)
            batch_lines = [json.dumps(row, ensure_ascii=False) for row in rows]
            if args.out is None:
                print("\n".join(batch_lines), flush=True)  # stream: a long run shows its progress
            lines += batch_lines
        if args.out is not None:
            atomic_write_text(args.out, "\n".join(lines) + "\n")
    elif not errors:
        raise ValueError(f"{args.batch} holds no rows.")
    return 1 if errors else 0
