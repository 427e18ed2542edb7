"""``logits_at``: the LM head only where the loss looks, equal to full logits selected after.

Axis letters: B batch (rows), T tokens, V vocabulary.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from hyperlora.evaluate import logits_at
from hyperlora.toy.models import VOCAB_SIZE, tiny_model


def _batch(T: int = 12) -> tuple[Tensor, Tensor, Tensor]:
    """Right-padded rows of lengths 12, 9, 7 whose loss masks start at different columns."""
    ids = torch.randint(4, VOCAB_SIZE, (3, T))
    attention = torch.zeros(3, T, dtype=torch.long)
    mask = torch.zeros(3, T, dtype=torch.bool)
    for row, (length, start) in enumerate([(12, 8), (9, 3), (7, 5)]):
        attention[row, :length] = 1
        mask[row, start : length - 1] = True
    return ids, attention, mask


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma"])
def test_equals_full_logits_at_the_mask(family: str) -> None:
    model = tiny_model(family)
    ids, attention, mask = _batch()
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=attention, use_cache=False).logits[mask]
        got = logits_at(model, ids, attention, mask)
    assert got.shape == (int(mask.sum()), VOCAB_SIZE)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_head_runs_only_from_the_first_selected_column() -> None:
    model = tiny_model("llama")
    ids, attention, mask = _batch()
    seen: list[tuple[int, ...]] = []
    handle = model.lm_head.register_forward_hook(lambda mod, args, out: seen.append(tuple(out.shape)))
    try:
        with torch.no_grad():
            logits_at(model, ids, attention, mask)
    finally:
        handle.remove()
    assert seen == [(3, 12 - 3, VOCAB_SIZE)]  # column 3 is the first any row selects


class _NoKeepArgument(nn.Module):
    """A causal LM whose forward has no ``logits_to_keep`` (custom user models)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_ids: Tensor, attention_mask: Tensor, use_cache: bool = False) -> object:
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache)


def test_models_without_logits_to_keep_fall_back_to_full_logits() -> None:
    model = tiny_model("llama")
    ids, attention, mask = _batch()
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=attention).logits[mask]
        got = logits_at(_NoKeepArgument(model), ids, attention, mask)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_empty_mask_gives_no_rows_and_keeps_the_graph() -> None:
    model = tiny_model("llama")
    ids, attention, _ = _batch()
    embed = model.get_input_embeddings()
    embed.weight.requires_grad_(True)
    try:
        got = logits_at(model, ids, attention, torch.zeros(3, 12, dtype=torch.bool))
        assert got.shape == (0, VOCAB_SIZE)
        got.sum().backward()  # an all-masked batch still back-propagates (to zeros)
        assert embed.weight.grad is not None and not embed.weight.grad.any()
    finally:
        embed.weight.requires_grad_(False)
