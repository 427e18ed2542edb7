"""What the benchmark sections share: the sizes, the random student and the context they run in.

The random adapters and the PEFT / merged references come from ``hyperlora.toy.reference``,
the one reference implementation the tests and ``hyperlora selfcheck`` use too.

Axis letters: B batch (rows), T tokens, D in-features, O out-features, R rank.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig

from hyperlora.lora import LoRASpec

__all__ = ["SIZES", "BenchContext", "BenchSize", "build_model"]


@dataclass(frozen=True)
class BenchSize:
    """A Llama-shaped student and the batch shapes each section runs.

    The architecture fields after ``train_prompt`` default to ``LlamaConfig``'s own defaults,
    so the sizes that predate them (``full``, ``small``, ``tiny``) build the same model as before.
    """

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    mlp: int
    vocab: int
    batch: int  # injector / generator: forward on [batch, tokens]
    tokens: int
    decode_batch: int  # decode: [decode_batch, decode_prompt] prompt ids, decode_new tokens generated
    decode_prompt: int
    decode_new: int
    train_batch: int  # train_step: [train_batch, train_tokens] student rows; the teacher's are train_prompt longer
    train_tokens: int
    train_prompt: int
    tie_embeddings: bool = False  # the LM head shares the token embedding's weight
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6  # RMSNorm epsilon
    max_positions: int = 2048
    about: str = field(default="", compare=False)  # one line for --help; not part of the report's shape

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def to_dict(self) -> dict[str, Any]:
        shape = asdict(self)
        del shape["about"]
        return shape


SIZES: dict[str, BenchSize] = {
    # The history's shape (docs/performance): keep it as it is, or old and new figures stop comparing.
    "full": BenchSize(hidden=2048, layers=16, heads=16, kv_heads=8, mlp=8192, vocab=32000, batch=8, tokens=512,
                      decode_batch=16, decode_prompt=128, decode_new=64,
                      train_batch=8, train_tokens=512, train_prompt=64,
                      about="one H100: width 2048, 16 layers, GQA 16/8, MLP 8192, about 1.1 B parameters"),
    # A CPU: seconds per section on two cores.
    "small": BenchSize(hidden=256, layers=4, heads=4, kv_heads=2, mlp=1024, vocab=4000, batch=4, tokens=128,
                       decode_batch=8, decode_prompt=32, decode_new=16,
                       train_batch=4, train_tokens=128, train_prompt=32,
                       about="a CPU: seconds per section"),
    # The tests: every code path, no meaningful timing. The vocabulary holds the char tokenizer's 93 ids.
    "tiny": BenchSize(hidden=32, layers=2, heads=4, kv_heads=2, mlp=64, vocab=128, batch=2, tokens=16,
                      decode_batch=4, decode_prompt=8, decode_new=6, train_batch=2, train_tokens=32, train_prompt=16,
                      about="the tests: every code path, no meaningful timing"),
    # SmolLM2-135M(-Instruct), the built-in real model: its config.json's numbers (134.5 M parameters,
    # tied head). Batches as its users run it: chat turns of a few hundred tokens.
    "smollm2-135m": BenchSize(hidden=576, layers=30, heads=9, kv_heads=3, mlp=1536, vocab=49152, batch=8, tokens=512,
                              decode_batch=16, decode_prompt=128, decode_new=64,
                              train_batch=8, train_tokens=256, train_prompt=64,
                              tie_embeddings=True, rope_theta=100000.0, norm_eps=1e-5, max_positions=8192,
                              about="SmolLM2-135M's shape: 30 layers, width 576, GQA 9/3, MLP 1536, vocab 49152, "
                                    "tied head, 134.5 M parameters"),
    # Llama-3-8B: 8.03 B parameters, 15 GiB in bf16. Every section fits one 141 GB H200 with room to
    # spare (hyperlora.bench.memory: at most three copies of the student, about 48 GiB at the peak by the
    # estimate). Measured on an H200: built in 0.1 s; three copies 44.9 GiB; forward + backward of
    # 8 × 512 tokens peaks at 35.1 GiB.
    "llama3-8b": BenchSize(hidden=4096, layers=32, heads=32, kv_heads=8, mlp=14336, vocab=128256, batch=8, tokens=512,
                           decode_batch=16, decode_prompt=256, decode_new=64,
                           train_batch=8, train_tokens=256, train_prompt=64,
                           rope_theta=500000.0, norm_eps=1e-5, max_positions=8192,
                           about="Llama-3-8B's shape: 32 layers, width 4096, GQA 32/8, MLP 14336, vocab 128256, "
                                 "8.03 B parameters (one H200 in bf16)"),
}


def bench_config(size: BenchSize) -> LlamaConfig:
    """The ``LlamaConfig`` of ``size`` (special ids: the char tokenizer's, as every section feeds it)."""
    return LlamaConfig(
        hidden_size=size.hidden, num_hidden_layers=size.layers, num_attention_heads=size.heads,
        num_key_value_heads=size.kv_heads, intermediate_size=size.mlp, vocab_size=size.vocab,
        max_position_embeddings=max(size.max_positions, size.tokens, size.train_tokens + size.train_prompt + 16,
                                    size.decode_prompt + size.decode_new),
        rope_theta=size.rope_theta, rms_norm_eps=size.norm_eps, tie_word_embeddings=size.tie_embeddings,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )


def build_model(size: BenchSize, dtype: torch.dtype, device: torch.device,
                attn_implementation: str = "sdpa", seed: int = 0) -> nn.Module:
    """A randomly initialised ``LlamaForCausalLM`` of ``size``, frozen, in eval mode.

    Special ids are those of ``hyperlora.toy.tokenizer.char_tokenizer`` (pad 0, bos 1, eos 2).
    Every tensor is created and initialised on ``device`` in ``dtype`` (no CPU copy, no fp32
    stage): 8 B parameters take seconds on a GPU; ``torch.device("meta")`` builds the shapes alone.
    The initialisation is seeded (without touching the caller's RNG state) so two runs
    of the bench time and check the same weights.
    """
    config = bench_config(size)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.device(device):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn_implementation)
    return model.eval().requires_grad_(False)


@dataclass
class BenchContext:
    """What every section gets: device, dtype, size, LoRA rank, timing budget, and one shared student.

    Sections must leave the student as they found it (copies for PEFT and
    merging, injection only inside ``with inject(...)``).
    """

    size_name: str
    device: torch.device
    dtype: torch.dtype
    rank: int = 16
    iters: int = 10
    attn_implementation: str = "sdpa"
    head_rank: int | None = None
    build_seconds: float | None = None  # how long building the student took (None: not built)
    _model: nn.Module | None = field(default=None, repr=False)

    @property
    def size(self) -> BenchSize:
        return SIZES[self.size_name]

    @property
    def spec(self) -> LoRASpec:
        return LoRASpec(rank=self.rank, alpha=2.0 * self.rank, dropout=0.0)

    @property
    def timing(self) -> dict[str, Any]:
        """``time_ms`` arguments for a fast call (a forward): ``iters`` calls per repeat."""
        return {"device": self.device, "warmup": min(3, self.iters), "iters": self.iters}

    @property
    def student_built(self) -> bool:
        return self._model is not None

    def model(self) -> nn.Module:
        """The student, built on first use and shared by the sections."""
        if self._model is None:
            start = time.perf_counter()
            self._model = build_model(self.size, self.dtype, self.device, self.attn_implementation)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.build_seconds = round(time.perf_counter() - start, 2)
        return self._model
