"""The metrics: greedy exact match for the three models we compare, and held-out KL.

* student: no prompt in context, the generated adapter injected;
* teacher: prompt in context, no adapter;
* base: no prompt, no adapter (what the prompt is worth).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from hyperlora.data.collate import DistillCollator
from hyperlora.data.format import prefix_ids
from hyperlora.data.records import Record
from hyperlora.decoding import greedy_decode
from hyperlora.distill import distill_forward, kl_loss

__all__ = ["exact_match", "heldout_kl"]


def _batches(records: Sequence[Record], size: int) -> list[Sequence[Record]]:
    return [records[i : i + size] for i in range(0, len(records), size)]


@torch.no_grad()
def exact_match(hyper: Any, teacher: nn.Module, records: Sequence[Record], batch_size: int = 32,
                max_new_tokens: int = 48) -> dict[str, float]:
    """Fraction of ``records`` whose greedy output equals ``record.output`` for student, teacher and base."""
    tok, student = hyper.tokenizer, hyper.student
    hits = {"student": 0, "teacher": 0, "base": 0}
    for chunk in _batches(records, batch_size):
        bare = [prefix_ids(tok, None, r.input) for r in chunk]
        with_prompt = [prefix_ids(tok, r.prompt, r.input) for r in chunk]
        adapters = hyper.adapters([r.prompt for r in chunk])
        outputs = {
            "student": greedy_decode(student, tok, bare, max_new_tokens, hyper.inject(adapters)),
            "teacher": greedy_decode(teacher, tok, with_prompt, max_new_tokens),
            "base": greedy_decode(student, tok, bare, max_new_tokens),
        }
        for name, texts in outputs.items():
            hits[name] += sum(text == (r.output or "").strip() for text, r in zip(texts, chunk))
    return {name: count / len(records) for name, count in hits.items()}


@torch.no_grad()
def heldout_kl(hyper: Any, teacher: nn.Module, records: Sequence[Record], collator: DistillCollator,
               batch_size: int = 32, kind: str = "forward_kl") -> float:
    """Token-weighted mean KL(teacher ‖ student) over ``records``."""
    total, tokens = 0.0, 0
    device = next(hyper.student.parameters()).device
    for chunk in _batches(records, batch_size):
        batch = collator(list(chunk))
        out = distill_forward(hyper, teacher, batch, device)
        n = out.student.shape[0]
        total += kl_loss(out.student, out.teacher, kind).item() * n
        tokens += n
    return total / max(tokens, 1)
