"""Greedy decoding of token-id prefixes in one left-padded batch.

Axis letters: B batch (rows), T tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["decode_new", "greedy_decode", "left_padded"]


def left_padded(prefixes: Sequence[list[int]], pad: int, device: torch.device, multiple: int = 1) -> dict[str, Tensor]:
    """``input_ids`` and ``attention_mask``, both ``[B, T]``, padded on the left.

    Left, because generation continues from each row's last real token. ``multiple``: ``T`` is
    rounded up to a multiple of it, so that batches of similar lengths share one shape.
    """
    width = -(-max(map(len, prefixes)) // multiple) * multiple
    ids = torch.full((len(prefixes), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, prefix in enumerate(prefixes):
        ids[i, width - len(prefix) :] = torch.tensor(prefix, dtype=torch.long)
        mask[i, width - len(prefix) :] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def decode_new(tokenizer: Any, out: Tensor, width: int) -> list[str]:
    """The text each row of ``out [B, width + new]`` generated after its ``width`` prefix tokens."""
    return [tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in out]


@torch.no_grad()
def greedy_decode(model: nn.Module, tokenizer: Any, prefixes: Sequence[list[int]], max_new_tokens: int,
                  context: Any = None) -> list[str]:
    """Greedy continuations of token-id prefixes (left-padded into one batch), decoded to text.

    ``context``: a context manager entered around ``generate`` (the injector, for the student).
    """
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batch = left_padded(prefixes, pad, next(model.parameters()).device)
    with context if context is not None else nullcontext():
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
    return decode_new(tokenizer, out, batch["input_ids"].shape[1])
