"""Tiny configs of every supported model family, built with the real transformers classes.

Two layers, width 32: every test and the demo run in seconds on a CPU, and the
code paths are the ones a 7B model takes (GQA, fused QKV, Conv1D, tied heads).
"""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    GemmaConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    PretrainedConfig,
    Qwen2Config,
    Qwen3Config,
)

__all__ = ["MODEL_FAMILIES", "tiny_config", "tiny_model"]

VOCAB_SIZE = 128
# Special ids inside the tiny vocabulary (the families' defaults point past it).
_IDS = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)
_COMMON = dict(vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=2, max_position_embeddings=128, **_IDS)


def _llama_like(cls: type[PretrainedConfig], **extra: object) -> PretrainedConfig:
    # 4 query heads over 2 KV heads: k/v are narrower than q/o (GQA), as in real checkpoints.
    return cls(**_COMMON, num_attention_heads=4, num_key_value_heads=2, **extra)


def _configs() -> dict[str, PretrainedConfig]:
    return {
        "llama": _llama_like(LlamaConfig),
        "qwen2": _llama_like(Qwen2Config),
        "qwen3": _llama_like(Qwen3Config, head_dim=8),
        "mistral": _llama_like(MistralConfig),
        "gemma": _llama_like(GemmaConfig, head_dim=8),
        "phi3": Phi3Config(**_COMMON, num_attention_heads=4, num_key_value_heads=2),
        "gpt2": GPT2Config(vocab_size=VOCAB_SIZE, n_embd=32, n_layer=2, n_head=4, n_positions=128, **_IDS),
        "gpt_neox": GPTNeoXConfig(
            vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=128, **_IDS,
        ),
    }


MODEL_FAMILIES: tuple[str, ...] = tuple(_configs())


def tiny_config(family: str) -> PretrainedConfig:
    """A 2-layer, width-32 config of ``family`` (one of ``MODEL_FAMILIES``)."""
    configs = _configs()
    if family not in configs:
        raise ValueError(f"Unknown family {family!r}; choose one of {', '.join(configs)}.")
    return configs[family]


def tiny_model(
    family: str, seed: int = 0, dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa"
) -> torch.nn.Module:
    """A randomly initialised tiny causal LM of ``family`` in eval mode."""
    torch.manual_seed(seed)
    config = tiny_config(family)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn_implementation)
    return model.eval()
