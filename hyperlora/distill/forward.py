"""The distillation forward: student and teacher logits at the response tokens, and the adapters.

Axis letters: B batch (rows), T tokens, N selected (response) tokens, V vocabulary.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from hyperlora.lora import AdapterBatch

__all__ = ["DistillForward", "distill_forward", "logits_at"]


@dataclass
class DistillForward:
    """One micro-batch's forward: what every loss (on logits or on adapters) reads."""

    student: Tensor  # [N, V] student logits (adapters injected, no prompt in context), with grad
    teacher: Tensor  # [N, V] teacher logits (prompt in context), no grad
    adapters: AdapterBatch  # {target: (A [B, D, R], B [B, R, O])} the hypernetwork generated, with grad


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


# A memo of a pure function of the class (its forward's signature), never state between calls.
_KEEP_SUPPORT: dict[Any, bool] = {}


def distill_forward(hyper: Any, teacher: nn.Module, batch: dict[str, Any], device: torch.device,
                    hypernet: nn.Module | None = None, skip_unread_teacher: bool = False) -> DistillForward:
    """Student and teacher logits at the response positions, ``[N, V]`` each, and the adapters used.

    ``batch``: a ``DistillCollator`` batch. ``skip_unread_teacher`` (training): when its ``verified_mask``
    marks every response token, the teacher is not run and ``teacher`` holds the student's detached logits
    (the training loss reads none of them; an evaluation KL would, so it leaves this off).
    ``hypernet``: the module producing adapters (a DDP
    wrapper in multi-process training); defaults to ``hyper.adapters``.
    """
    move = {k: v.to(device) for k, v in batch.items() if isinstance(v, Tensor)}
    verified = batch.get("verified_mask")
    # Every response token verified (data.targets=verified): the loss is cross-entropy alone and reads no
    # teacher logit, so the teacher's forward, a third of the step, is skipped.
    only_verified = skip_unread_teacher and verified is not None and len(verified) > 0 and bool(verified.all())
    teacher_sel = None
    if not only_verified:
        with torch.no_grad():
            teacher_sel = logits_at(teacher, move["teacher_input_ids"], move["teacher_attention_mask"],
                                    batch["teacher_loss_mask"])
    adapters = hypernet(batch["prompts"]) if hypernet is not None else hyper.adapters(batch["prompts"])
    with hyper.inject(adapters):
        student_sel = logits_at(hyper.student, move["student_input_ids"], move["student_attention_mask"],
                                batch["student_loss_mask"])
    if teacher_sel is None:  # the KL is over no token; the student's own logits keep the shapes, cost nothing
        teacher_sel = student_sel.detach()
    return DistillForward(student_sel, teacher_sel, adapters)
