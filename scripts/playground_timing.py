"""How long the playground takes to answer: first tokens and the whole answer, one and two instructions.

    python scripts/playground_timing.py [--device cuda] [--dtype bfloat16] [--checkpoint checkpoints/smollm2-if]

Times ``PlaygroundSession.stream`` (what the page calls; no browser, no Gradio) on the message of
docs/playground.md, greedy, exactly 96 new tokens per row (``min_new_tokens``, so every figure decodes
the same work): each path is warmed up with 8 tokens, then timed. Beside it, in the same process and on the
same rows, two baselines: ``base_s``, the bare model's ``generate`` (no adapter, no streamer), and
``inject_s``, ``generate`` with the adapters injected but no streamer. Prints one JSON line per request
and the answers of the last one.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from hyperlora.data.format import prefix_ids
from hyperlora.decoding import left_padded
from hyperlora.loading import load_hyperlora
from hyperlora.playground.session import PlaygroundSession, _padded_adapters

MESSAGE = "How do I keep basil fresh?"
REQUESTS = (
    ["Give your answer a title wrapped in double angular brackets, like <<my title>>."],
    ["Give your answer a title wrapped in double angular brackets, like <<my title>>.",
     "Your entire answer must be in capital letters."],
)


def _sync(cuda: bool) -> float:
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter()


def time_generate(session: PlaygroundSession, instructions: list[str], new_tokens: int, inject: bool) -> float:
    """Seconds for the page's rows (student, teacher, base) through plain ``generate``: without adapters,
    or with them injected (``inject``); no streamer either way."""
    hyper, tok = session.hyper, session.hyper.tokenizer
    n, bare = len(instructions), prefix_ids(tok, None, MESSAGE)
    prefixes = [bare] * n + [prefix_ids(tok, p, MESSAGE) for p in instructions] + [bare]
    device = next(hyper.student.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    batch = left_padded(prefixes, pad, device)
    cuda = device.type == "cuda"
    start = _sync(cuda)
    with torch.no_grad():
        if inject:
            with hyper.inject(_padded_adapters(hyper.adapters(instructions), n + 1)):
                hyper.student.generate(**batch, pad_token_id=pad, max_new_tokens=new_tokens,
                                       min_new_tokens=new_tokens, do_sample=False)
        else:
            hyper.student.generate(**batch, pad_token_id=pad, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                   do_sample=False)
    return _sync(cuda) - start


def time_stream(session: PlaygroundSession, instructions: list[str], new_tokens: int) -> dict[str, object]:
    """Seconds to the first streamed text and to the end; the device is synchronised at both."""
    cuda = next(session.hyper.student.parameters()).is_cuda
    start, first, last = time.perf_counter(), None, None
    settings = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens}
    for last in session.stream(instructions, MESSAGE, settings):
        if first is None and any(last.student + last.teacher + [last.base]):
            if cuda:
                torch.cuda.synchronize()
            first = time.perf_counter() - start
    if cuda:
        torch.cuda.synchronize()
    return {"instructions": len(instructions), "rows": 2 * len(instructions) + 1, "first_s": round(first or 0.0, 3),
            "total_s": round(time.perf_counter() - start, 3), "answers": last.__dict__ if last else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="checkpoints/smollm2-if")
    parser.add_argument("--base-model", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--requests", type=int, default=len(REQUESTS), help="time the first N requests only")
    args = parser.parse_args()
    hyper = load_hyperlora(args.checkpoint, base_model=args.base_model, device=args.device,
                           dtype=getattr(torch, args.dtype))
    session = PlaygroundSession(hyper, args.checkpoint)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    results = []
    warm = min(8, args.new_tokens)  # a short run of each path first: kernels, caches, the tokenizer
    for instructions in REQUESTS[: args.requests]:
        time_stream(session, instructions, warm)
        result = time_stream(session, instructions, args.new_tokens)
        for name, inject in (("base_s", False), ("inject_s", True)):
            time_generate(session, instructions, warm, inject)
            result[name] = round(time_generate(session, instructions, args.new_tokens, inject), 3)
        result["stream_over_base"] = round(result["total_s"] / result["base_s"], 2)
        results.append(result)
        print(json.dumps({k: v for k, v in result.items() if k != "answers"} | {"device": device,
                                                                                "dtype": args.dtype}), flush=True)
    print(json.dumps(results[-1]["answers"], indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
