"""Shared helpers: random per-row adapters and the dense (merged-weight) reference.

Axis letters: B batch (rows), T tokens, D in-features, O out-features, R rank.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from hyperlora.lora import LoRASpec, delta_weight
from hyperlora.targets import Target
from hyperlora.toy.models import VOCAB_SIZE, tiny_model
from hyperlora.toy.tokenizer import char_tokenizer

Adapters = dict[str, tuple[Tensor, Tensor]]

# Scale 2 (alpha/rank): large enough that every adapter visibly moves the logits.
SPEC = LoRASpec(rank=4, alpha=8.0)


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    # Every test starts from the same global RNG state, whatever ran before it.
    torch.manual_seed(0)


def make_adapters(
    targets: list[Target], rows: int, spec: LoRASpec = SPEC, seed: int = 0, scale: float = 0.3
) -> Adapters:
    """``{name: (A [B, D, R], B [B, R, O])}``, random and non-zero in both A and B.

    Both factors are non-zero on purpose: with PEFT's zero-initialised B a wrong
    row, layout or scale would go unnoticed.
    """
    gen = torch.Generator().manual_seed(seed)
    out: Adapters = {}
    for t in targets:
        A = torch.randn(rows, t.d_in, spec.rank, generator=gen) * scale
        B = torch.randn(rows, spec.rank, t.d_out, generator=gen) * scale
        out[t.name] = (A, B)
    return out


def select_rows(adapters: Adapters, index: int | list[int] | Tensor) -> Adapters:
    """The adapters of the given rows, keeping the row axis (``[k, D, R]``)."""
    idx = torch.as_tensor([index] if isinstance(index, int) else index)
    return {name: (A[idx], B[idx]) for name, (A, B) in adapters.items()}


@torch.no_grad()
def merged_copy(model: nn.Module, adapters_row: Adapters, spec: LoRASpec, targets: list[Target]) -> nn.Module:
    """A deep copy of ``model`` with one row's ΔW added into each target's weight.

    This is the dense reference ``F.linear(x, W0 + ΔW)``: no hook is involved.
    ``adapters_row`` holds ``A [D, R]`` / ``B [R, O]`` or the same with a row axis of 1.
    """
    merged = copy.deepcopy(model)
    for t in targets:
        A, B = adapters_row[t.name]
        if A.dim() == 3:
            A, B = A[0], B[0]
        weight = merged.get_submodule(t.name).weight
        weight += delta_weight(A, B, spec.scaling, conv1d=t.is_conv1d).to(weight.dtype)
    return merged


def random_ids(rows: int, tokens: int, seed: int = 0) -> Tensor:
    """Token ids ``[B, T]`` avoiding the special ids 0-2 of the tiny vocabulary."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB_SIZE, (rows, tokens), generator=gen)


def hook_snapshot(model: nn.Module) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """``{module name: (forward-hook ids, forward-pre-hook ids)}``, to compare before/after."""
    return {name: (tuple(m._forward_hooks), tuple(m._forward_pre_hooks)) for name, m in model.named_modules()}


__all__ = [
    "SPEC",
    "Adapters",
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
