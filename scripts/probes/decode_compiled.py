"""Probe: per-token decode latency with a static KV cache, which makes ``generate`` compile the
decoding step (torch.compile, mode reduce-overhead: CUDA graphs), base against injected (an
adapter per row), next to the same in eager mode; all in one process.

    python scripts/probes/decode_compiled.py [SIZE [BACKEND]]     # default: full inductor on CUDA,
                                                                  # tiny eager on CPU; JSON to $OUT

Per-token = (t(N new) - t(1 new)) / (N - 1), median of 5 repeats, as in ``hyperlora bench``.
``static_injected_marked`` gives the adapters fixed addresses (``mark_static_address``) so the
CUDA graphs read them in place instead of copying them in at every replay. Greedy-token matches
between runs are reported, not asserted: a random bf16 model's logits are near-tied everywhere.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch._dynamo
from torch import Tensor
from transformers import CompileConfig, StaticCache

from hyperlora.atomic import atomic_write_text
from hyperlora.bench.common import SIZES, build_model, random_adapters
from hyperlora.injector import inject
from hyperlora.lora import LoRASpec
from hyperlora.targets import find_targets

# What inject() sets on entry; set here first so that entry has no compile cache to clear.
torch._dynamo.config.skip_nnmodule_hook_guards = False

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
DTYPE = torch.bfloat16 if CUDA else torch.float32
SIZE = SIZES[sys.argv[1] if len(sys.argv) > 1 else ("full" if CUDA else "tiny")]
BACKEND = sys.argv[2] if len(sys.argv) > 2 else ("inductor" if CUDA else "eager")
SPEC = LoRASpec(rank=16, alpha=32.0, dropout=0.0)
ROWS, PROMPT, NEW = SIZE.decode_batch, SIZE.decode_prompt, SIZE.decode_new

model = build_model(SIZE, DTYPE, DEVICE)
targets = find_targets(model)
ids = torch.randint(3, SIZE.vocab, (ROWS, PROMPT), generator=torch.Generator().manual_seed(0)).to(DEVICE)
mask = torch.ones_like(ids)
adapters = random_adapters(targets, ROWS, SPEC.rank, DTYPE, DEVICE)
# One cache for every static call: one shape, so the decoding step compiles once per variant.
cache = StaticCache(config=model.config, max_cache_len=PROMPT + NEW)
compile_config = CompileConfig(backend=BACKEND, fullgraph=False)
compile_config._compile_all_devices = True  # let generate compile on CPU too (the tests' eager backend)


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def generate(new: int, static: bool) -> Tensor:
    """The new tokens ``[ROWS, new]``; ``static``: the static cache, so the decoding step is compiled."""
    kwargs: dict[str, Any] = {}
    if static:
        cache.reset()
        kwargs = {"past_key_values": cache, "compile_config": compile_config}
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                             do_sample=False, pad_token_id=0, **kwargs)
    return out[:, PROMPT:]


def per_token_ms(static: bool, repeats: int = 5) -> float:
    samples = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        generate(1, static)
        sync()
        one = time.perf_counter() - start
        start = time.perf_counter()
        generate(NEW, static)
        sync()
        full = time.perf_counter() - start
        samples.append((full - one) / (NEW - 1) * 1000)
    return round(statistics.median(samples), 4)


def timed_s(fn: Any) -> tuple[Any, float]:
    start = time.time()
    result = fn()
    return result, round(time.time() - start, 1)


r: dict[str, Any] = {"device": torch.cuda.get_device_name() if CUDA else "cpu", "size": SIZE.__dict__,
                     "backend": BACKEND}
r["eager_base_ms"] = per_token_ms(False)
with inject(model, adapters, SPEC):
    r["eager_injected_ms"] = per_token_ms(False)
    eager_tokens = generate(NEW, False)
# The first two static calls compile (and record the CUDA graphs).
(base_tokens, _), r["compile_base_s"] = timed_s(lambda: (generate(NEW, True), generate(NEW, True)))
r["static_base_ms"] = per_token_ms(True)
print(json.dumps(r), flush=True)
with inject(model, adapters, SPEC):
    (static_tokens, _), r["compile_injected_s"] = timed_s(lambda: (generate(NEW, True), generate(NEW, True)))
    r["static_injected_ms"] = per_token_ms(True)
    again = generate(NEW, True)
marked = {name: (A.clone(), B.clone()) for name, (A, B) in adapters.items()}
for A, B in marked.values():
    torch._dynamo.mark_static_address(A)
    torch._dynamo.mark_static_address(B)
with inject(model, marked, SPEC):
    (marked_tokens, _), r["marked_first_calls_s"] = timed_s(lambda: (generate(NEW, True), generate(NEW, True)))
    r["static_injected_marked_ms"] = per_token_ms(True)
r["marked_tokens_equal_unmarked"] = bool(torch.equal(marked_tokens, again))
r["static_marked_ratio"] = round(r["static_injected_marked_ms"] / r["static_base_ms"], 4)
r["static_base_again_ms"] = per_token_ms(True)
# A second injection (new hooks, same shapes): does it recompile?
with inject(model, adapters, SPEC):
    start = time.time()
    generate(NEW, True)
    r["second_injection_first_call_s"] = round(time.time() - start, 2)
r["eager_ratio"] = round(r["eager_injected_ms"] / r["eager_base_ms"], 4)
r["static_ratio"] = round(r["static_injected_ms"] / r["static_base_ms"], 4)
r["static_injected_row0_match_eager"] = float((static_tokens[0] == eager_tokens[0]).float().mean())
r["static_injected_equals_its_repeat"] = bool(torch.equal(static_tokens, again))
r["static_injected_differs_from_static_base"] = not torch.equal(static_tokens, base_tokens)
print(json.dumps(r), flush=True)
if os.environ.get("OUT"):
    atomic_write_text(Path(os.environ["OUT"]) / "decode_compiled.json", json.dumps(r, indent=1) + "\n")
