"""What the benchmark sections share: the sizes, the random student and the context they run in.

The random adapters and the PEFT / merged references come from ``hyperlora.toy.reference``,
the one reference implementation the tests and ``hyperlora selfcheck`` use too.

Axis letters: B batch (rows), T tokens, D in-features, O out-features, R rank.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig

from hyperlora.lora import LoRASpec

__all__ = ["SIZES", "BenchContext", "BenchSize", "build_model"]


@dataclass(frozen=True)
class BenchSize:
    """A Llama-shaped student and the batch shapes each section runs."""

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

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


SIZES: dict[str, BenchSize] = {
    # One H100: width 2048, 16 layers, GQA 16/8, MLP 8192 (about 1.1 B parameters).
    "full": BenchSize(hidden=2048, layers=16, heads=16, kv_heads=8, mlp=8192, vocab=32000, batch=8, tokens=512,
                      decode_batch=16, decode_prompt=128, decode_new=64,
                      train_batch=8, train_tokens=512, train_prompt=64),
    # A CPU: seconds per section on two cores.
    "small": BenchSize(hidden=256, layers=4, heads=4, kv_heads=2, mlp=1024, vocab=4000, batch=4, tokens=128,
                       decode_batch=8, decode_prompt=32, decode_new=16,
                       train_batch=4, train_tokens=128, train_prompt=32),
    # The tests: every code path, no meaningful timing. The vocabulary holds the char tokenizer's 93 ids.
    "tiny": BenchSize(hidden=32, layers=2, heads=4, kv_heads=2, mlp=64, vocab=128, batch=2, tokens=16,
                      decode_batch=4, decode_prompt=8, decode_new=6, train_batch=2, train_tokens=32, train_prompt=16),
}


def build_model(size: BenchSize, dtype: torch.dtype, device: torch.device,
                attn_implementation: str = "sdpa", seed: int = 0) -> nn.Module:
    """A randomly initialised ``LlamaForCausalLM`` of ``size``, frozen, in eval mode.

    Special ids are those of ``hyperlora.toy.tokenizer.char_tokenizer`` (pad 0, bos 1, eos 2).
    The initialisation is seeded (without touching the caller's RNG state) so two runs
    of the bench time and check the same weights.
    """
    config = LlamaConfig(
        hidden_size=size.hidden, num_hidden_layers=size.layers, num_attention_heads=size.heads,
        num_key_value_heads=size.kv_heads, intermediate_size=size.mlp, vocab_size=size.vocab,
        max_position_embeddings=max(2048, size.tokens, size.train_tokens + size.train_prompt + 16),
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
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

    def model(self) -> nn.Module:
        """The student, built on first use and shared by the sections."""
        if self._model is None:
            self._model = build_model(self.size, self.dtype, self.device, self.attn_implementation)
        return self._model
