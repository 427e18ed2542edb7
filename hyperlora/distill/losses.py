"""Distillation losses between the teacher's and the student's next-token distributions.

Inputs are the logits already gathered at the response positions, ``[N, V]`` in the
models' own dtype. Each loss walks the N rows in chunks and upcasts one chunk at a
time to fp32; with ``torch.utils.checkpoint`` around each chunk the fp32 copies are
not kept for backward either, so at most ``chunk × V`` fp32 values are alive.
All losses are means over the N response tokens; N = 0 gives an exact 0.

``adapter_l2_penalty`` is the one loss on the generated adapters themselves (Text-to-LoRA
and Doc-to-LoRA regularise the generated A and B the same way).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from hyperlora.lora import AdapterBatch

__all__ = ["LOSSES", "adapter_l2_penalty", "kl_loss", "cross_entropy_loss", "distillation_loss"]


def _forward_kl(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """Σ KL(p_teacher ‖ p_student) over the chunk's rows: mass-covering."""
    log_s = F.log_softmax(student.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher.float() / temperature, dim=-1)
    return (log_t.exp() * (log_t - log_s)).sum()


def _reverse_kl(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """Σ KL(p_student ‖ p_teacher): mode-seeking."""
    log_s = F.log_softmax(student.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher.float() / temperature, dim=-1)
    return (log_s.exp() * (log_s - log_t)).sum()


LOSSES: dict[str, Callable[[Tensor, Tensor, float], Tensor]] = {"forward_kl": _forward_kl, "reverse_kl": _reverse_kl}


def _chunked_sum(fn: Callable[..., Tensor], tensors: tuple[Tensor, ...], chunk: int, *extra: object) -> Tensor:
    total = tensors[0].new_zeros((), dtype=torch.float32)
    needs_graph = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    for start in range(0, tensors[0].shape[0], chunk):
        parts = tuple(t[start : start + chunk] for t in tensors)
        if needs_graph:
            total = total + checkpoint(fn, *parts, *extra, use_reentrant=False)
        else:
            total = total + fn(*parts, *extra)
    return total


def kl_loss(student: Tensor, teacher: Tensor, kind: str = "forward_kl", temperature: float = 1.0,
            chunk: int = 1024) -> Tensor:
    """Mean over tokens of the chosen KL, times ``temperature²`` (keeps gradient scale, Hinton et al.).

    Args:
        student: ``[N, V]`` student logits at the response positions.
        teacher: ``[N, V]`` teacher logits at the same positions (no grad needed).
    """
    if kind not in LOSSES:
        raise ValueError(f"Unknown distillation loss {kind!r}; choose one of {', '.join(LOSSES)}.")
    if student.shape != teacher.shape:
        raise ValueError(f"Student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} differ.")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}.")
    n = student.shape[0]
    if n == 0:
        return student.sum() * 0.0  # keeps the graph: an all-masked batch contributes exactly zero
    total = _chunked_sum(LOSSES[kind], (student, teacher.detach()), chunk, temperature)
    return total * (temperature**2) / n


def _ce(student: Tensor, labels: Tensor) -> Tensor:
    return F.cross_entropy(student.float(), labels, reduction="sum")


def _weighted_ce(student: Tensor, labels: Tensor, weights: Tensor) -> Tensor:
    return (F.cross_entropy(student.float(), labels, reduction="none") * weights).sum()


def cross_entropy_loss(student: Tensor, labels: Tensor, chunk: int = 1024, weights: Tensor | None = None) -> Tensor:
    """Mean cross-entropy of ``student [N, V]`` against ``labels [N]``, chunked like the KLs.

    ``weights [N]`` (fp32, >= 0): the weighted mean ``Σ w·ce / Σ w`` instead.
    """
    if student.shape[0] == 0:
        return student.sum() * 0.0
    if weights is None:
        return _chunked_sum(_ce, (student, labels), chunk) / student.shape[0]
    weights = weights.to(device=student.device, dtype=torch.float32)
    return _chunked_sum(_weighted_ce, (student, labels, weights), chunk) / weights.sum().clamp_min(1e-12)


def adapter_l2_penalty(adapters: AdapterBatch) -> Tensor:
    """Mean over targets of ``mean(A²) + mean(B²)``, in fp32.

    ``adapters``: ``{target: (A [B, D, R], B [B, R, O])}``; each mean runs over every element
    (rows included), so the value does not grow with the batch, the width or the number of
    targets::

        penalty = 1/|targets| · Σ_t ( Σ A_t² / (B·D·R) + Σ B_t² / (B·R·O) )
    """
    if not adapters:
        raise ValueError("adapter_l2_penalty needs at least one target's adapters.")
    total = sum(A.float().square().mean() + B.float().square().mean() for A, B in adapters.values())
    return total / len(adapters)


def distillation_loss(student: Tensor, teacher: Tensor, labels: Tensor | None = None, kind: str = "forward_kl",
                      temperature: float = 1.0, ce_weight: float = 0.0, chunk: int = 1024,
                      adapters: AdapterBatch | None = None, adapter_l2: float = 0.0,
                      verified: Tensor | None = None, edited: Tensor | None = None,
                      edit_weight: float = 1.0) -> dict[str, Tensor]:
    """``{"loss", "kl", "ce"?, "verified_ce"?, "adapter_l2"?}``: ``loss = kl + ce_weight·ce + adapter_l2·penalty``.

    ``ce`` only when ``ce_weight > 0`` (needs ``labels [N]``); ``adapter_l2`` (the unweighted
    ``adapter_l2_penalty`` of ``adapters``) only when ``adapter_l2 > 0``. With both weights 0
    the loss is the KL alone, exactly.

    ``verified [N]`` (bool, the collator's ``verified_mask``): the tokens whose target is a verified,
    rewritten answer rather than the teacher's distribution. Those take cross-entropy against
    ``labels`` (``verified_ce``, the mean over the verified tokens) and no KL; ``kl`` and ``ce`` are then
    means over the other (distill) tokens only, and ``loss = kl + ce_weight · ce + verified_ce (+ penalty)``.
    With no verified token (``None``, or all false) the computation is exactly the one without the mask.

    ``edited [N]`` (bool, the collator's ``edited_mask``): the verified tokens a rewrite changed or added.
    ``verified_ce`` is then the weighted mean with weight ``edit_weight`` on those and 1 on the others;
    ``edit_weight=1`` (or no mask) is the plain mean, exactly.
    """
    if verified is not None and verified.shape != student.shape[:1]:
        raise ValueError(f"verified mask {tuple(verified.shape)} does not match the {student.shape[0]} logit rows.")
    mixed = verified is not None and bool(verified.any())
    if mixed:
        if labels is None:
            raise ValueError("verified tokens need labels.")
        verified = verified.to(student.device)
        distill = ~verified
        student_d, teacher_d, labels_d = student[distill], teacher[distill], labels[distill]
    else:
        student_d, teacher_d, labels_d = student, teacher, labels
    kl = kl_loss(student_d, teacher_d, kind, temperature, chunk)
    out = {"kl": kl, "loss": kl}
    if ce_weight > 0:
        if labels_d is None:
            raise ValueError("ce_weight > 0 needs labels.")
        ce = cross_entropy_loss(student_d, labels_d, chunk)
        out["ce"] = ce
        out["loss"] = out["loss"] + ce_weight * ce
    if mixed:
        weights = None
        if edited is not None and edit_weight != 1.0:
            if edited.shape != verified.shape:
                raise ValueError(f"edited mask {tuple(edited.shape)} does not match the {student.shape[0]} logit rows.")
            weights = 1.0 + (edit_weight - 1.0) * edited.to(student.device)[verified].float()
        verified_ce = cross_entropy_loss(student[verified], labels[verified], chunk, weights)
        out["verified_ce"] = verified_ce
        out["loss"] = out["loss"] + verified_ce
    if adapter_l2 < 0:
        raise ValueError(f"adapter_l2 must be >= 0, got {adapter_l2}.")
    if adapter_l2 > 0:
        if adapters is None:
            raise ValueError("adapter_l2 > 0 needs the generated adapters.")
        penalty = adapter_l2_penalty(adapters)
        out["adapter_l2"] = penalty
        out["loss"] = out["loss"] + adapter_l2 * penalty
    return out
