"""Test models with a fixed answer: a head that always prefers one token."""

from __future__ import annotations

import torch
from torch import nn


def always_says(model: nn.Module, token_id: int) -> nn.Module:
    """``model`` with its LM head replaced by one whose logits always peak at ``token_id`` (EOS: it stops at
    once; any other token: it never stops)."""
    head = nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    nn.init.zeros_(head.weight)
    with torch.no_grad():
        head.bias.zero_()
        head.bias[token_id] = 10.0
    model.set_output_embeddings(head)
    return model
