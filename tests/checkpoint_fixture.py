"""A saved tiny student and a saved HyperLoRA checkpoint for it, with non-zero adapters.

Shared by the tests of the use-it commands (generate, inspect, export, merge).
"""

from __future__ import annotations

from pathlib import Path

import torch

from hyperlora.config import HyperLoRAConfig
from hyperlora.encoder import EncoderConfig
from hyperlora.generator import GeneratorConfig
from hyperlora.lora import LoRASpec
from hyperlora.model import HyperLoRA
from hyperlora.toy.models import tiny_model
from hyperlora.toy.tokenizer import char_tokenizer

PROMPTS = ["Reverse the words.", "Answer in French, please.", "Count the letters!"]


def build_checkpoint(root: Path, family: str = "llama", seed: int = 0, noise: float = 0.05) -> tuple[Path, Path]:
    """``(base dir, checkpoint dir)`` under ``root``; ``from_pretrained(ckpt)`` finds the base by itself.

    Every hypernetwork weight is perturbed: the generator's B head starts at zero,
    and a zero adapter would let a wrong layout, scale or row pass every check.
    """
    base, ckpt = root / f"base-{family}", root / f"ckpt-{family}"
    student, tok = tiny_model(family, seed=seed), char_tokenizer()
    student.save_pretrained(base)
    tok.save_pretrained(base)
    torch.manual_seed(seed)
    config = HyperLoRAConfig(
        base_model=str(base),
        lora=LoRASpec(4, 8.0),
        encoder=EncoderConfig(d_ctx=32, d_model=32, n_heads=4, max_length=64),
        generator=GeneratorConfig(d_emb=16, d_hidden=64),
    )
    hyper = HyperLoRA(student, tok, config)
    with torch.no_grad():
        for p in hyper.hypernet.parameters():
            p.add_(torch.randn_like(p) * noise)
    hyper.save_pretrained(ckpt)
    return base, ckpt
