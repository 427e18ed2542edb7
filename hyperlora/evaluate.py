"""Greedy exact match for the three models we compare, and held-out KL.

* student: no prompt in context, the generated adapter injected;
* teacher: prompt in context, no adapter;
* base: no prompt, no adapter (what the prompt is worth).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from hyperlora.data.collate import DistillCollator
from hyperlora.data.format import prefix_ids
from hyperlora.data.records import Record
from hyperlora.distill import kl_loss

__all__ = ["decode_new", "exact_match", "greedy_decode", "heldout_kl", "left_padded", "logits_at", "response_logits"]


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
        student_sel, teacher_sel = response_logits(hyper, teacher, batch, device)
        n = student_sel.shape[0]
        total += kl_loss(student_sel, teacher_sel, kind).item() * n
        tokens += n
    return total / max(tokens, 1)


def _first_column(mask: Tensor) -> int:
    """The first position any row selects in ``mask [B, T]`` (the last column when none does)."""
    columns = mask.any(0).nonzero()
    return int(columns[0]) if len(columns) else mask.shape[1] - 1


def logits_at(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, mask: Tensor) -> Tensor:
    """``model``'s logits where ``mask [B, T]`` is true, ``[N, V]``, in the order ``tensor[mask]`` gives.

    The LM head runs only from the first selected column on (``logits_to_keep``), so
    prompt and input positions never reach ``[B, T, V]``: with a 32k vocabulary that
    matrix dominates the step's memory. The model's own head is used, so logit
    soft-capping or scaling (Gemma 2, Cohere) is applied as in any forward.
    ``mask`` may live on the CPU (no device sync to find the column).
    """
    first = _first_column(mask)
    keep = mask.shape[1] - first
    if _accepts_logits_to_keep(model):
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=keep).logits
    else:  # a custom model without the argument: full logits, then the same columns
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, first:]
    return logits[mask[:, first:].to(logits.device)]


def _accepts_logits_to_keep(model: nn.Module) -> bool:
    forward = type(model).forward
    if forward not in _KEEP_SUPPORT:
        _KEEP_SUPPORT[forward] = "logits_to_keep" in inspect.signature(forward).parameters
    return _KEEP_SUPPORT[forward]


_KEEP_SUPPORT: dict[Any, bool] = {}


def response_logits(hyper: Any, teacher: nn.Module, batch: dict[str, Any], device: torch.device,
                    hypernet: nn.Module | None = None) -> tuple[Tensor, Tensor]:
    """Student and teacher logits at the response positions, ``[N, V]`` each.

    ``hypernet``: the module producing adapters (a DDP wrapper in multi-process
    training); defaults to ``hyper.adapters``.
    """
    move = {k: v.to(device) for k, v in batch.items() if isinstance(v, Tensor)}
    with torch.no_grad():
        teacher_sel = logits_at(teacher, move["teacher_input_ids"], move["teacher_attention_mask"],
                                batch["teacher_loss_mask"])
    adapters = hypernet(batch["prompts"]) if hypernet is not None else hyper.adapters(batch["prompts"])
    with hyper.inject(adapters):
        student_sel = logits_at(hyper.student, move["student_input_ids"], move["student_attention_mask"],
                                batch["student_loss_mask"])
    return student_sel, teacher_sel
