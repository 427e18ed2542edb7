"""Shared fixtures, and the reference helpers of ``hyperlora.toy.reference`` under the names the tests use.

Axis letters: B batch (rows), T tokens, D in-features, O out-features, R rank.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from hyperlora.lora import AdapterBatch, LoRASpec
from hyperlora.targets import Target
from hyperlora.toy.models import tiny_model
from hyperlora.toy.reference import hook_snapshot, merged_copy, random_adapters, random_ids, select_rows
from hyperlora.toy.tokenizer import char_tokenizer

# Scale 2 (alpha/rank): large enough that every adapter visibly moves the logits.
SPEC = LoRASpec(rank=4, alpha=8.0)


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    # Every test starts from the same global RNG state, whatever ran before it.
    torch.manual_seed(0)


def make_adapters(
    targets: list[Target], rows: int, spec: LoRASpec = SPEC, seed: int = 0, scale: float = 0.3
) -> AdapterBatch:
    """``{name: (A [B, D, R], B [B, R, O])}``, random and non-zero in both A and B, at ``spec``'s rank."""
    return random_adapters(targets, rows, spec.rank, seed=seed, scale=scale)


__all__ = [
    "SPEC",
    "hook_snapshot",
    "make_adapters",
    "merged_copy",
    "random_ids",
    "select_rows",
]


# One tiny llama and the char tokenizer per test module (modules may train or edit them).
@pytest.fixture(scope="module")
def student() -> nn.Module:
    return tiny_model("llama")


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerBase:
    return char_tokenizer()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny llama and the char tokenizer saved as a local Hugging Face folder."""
    path = tmp_path_factory.mktemp("tiny_llama")
    tiny_model("llama").save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    return path
