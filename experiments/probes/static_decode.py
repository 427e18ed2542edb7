"""What the compiled-decode probes share: the bench's student and decode prompts, per-row adapters at
fixed addresses, one static KV cache, and ``generate`` through transformers' torch.compile of the
decoding step (inductor on CUDA; TorchDynamo's eager backend on CPU, where the probes' tests run).

Imported by ``decode_compiled_kernels.py`` and ``decode_compiled_host.py`` (run as scripts, so this
folder is on ``sys.path``). ``SIZE`` is the first command-line argument, as in those scripts.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch._dynamo
from probe_setup import CUDA, DEVICE, DTYPE, SIZE, SPEC
from torch import Tensor
from transformers import CompileConfig, StaticCache

from hyperlora.bench.common import build_model
from hyperlora.targets import find_targets
from hyperlora.toy.reference import random_adapters

# What inject() sets on entry; set first so that entry has no compile cache to clear.
torch._dynamo.config.skip_nnmodule_hook_guards = False

BACKEND = "inductor" if CUDA else "eager"
ROWS, PROMPT, NEW = SIZE.decode_batch, SIZE.decode_prompt, SIZE.decode_new

model = build_model(SIZE, DTYPE, DEVICE)
targets = find_targets(model)
ids = torch.randint(3, SIZE.vocab, (ROWS, PROMPT), generator=torch.Generator().manual_seed(0)).to(DEVICE)
mask = torch.ones_like(ids)
adapters = random_adapters(targets, ROWS, SPEC.rank, DTYPE, DEVICE)
for _A, _B in adapters.values():
    torch._dynamo.mark_static_address(_A)
    torch._dynamo.mark_static_address(_B)
# One cache (one shape) for every call, so each variant compiles once.
cache = StaticCache(config=model.config, max_cache_len=PROMPT + NEW)
compile_config = CompileConfig(backend=BACKEND, fullgraph=False)
compile_config._compile_all_devices = True  # let generate compile on CPU too


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def generate(new: int) -> Tensor:
    """The ids ``[ROWS, PROMPT + new]`` of one greedy call with the compiled decoding step."""
    cache.reset()
    with torch.no_grad():
        return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                              do_sample=False, pad_token_id=0, past_key_values=cache, compile_config=compile_config)


def per_token_ms(repeats: int = 5) -> float:
    """(t(NEW new) - t(1 new)) / (NEW - 1) in ms, median over repeats (the bench's method)."""
    samples = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        generate(1)
        sync()
        one = time.perf_counter() - start
        start = time.perf_counter()
        generate(NEW)
        sync()
        samples.append(((time.perf_counter() - start) - one) / (NEW - 1) * 1000)
    return round(statistics.median(samples), 4)
