"""Distillation against a teacher: the forward (``forward``), the losses (``losses``), their config.

    out = distill_forward(hyper, teacher, batch, device)       # student/teacher [N, V], adapters
    losses = distillation_loss(out.student, out.teacher, labels, adapters=out.adapters, adapter_l2=0.01)
"""

from hyperlora.distill.config import DistillConfig
from hyperlora.distill.forward import DistillForward, distill_forward, logits_at
from hyperlora.distill.losses import LOSSES, adapter_l2_penalty, cross_entropy_loss, distillation_loss, kl_loss

__all__ = [
    "LOSSES",
    "DistillConfig",
    "DistillForward",
    "adapter_l2_penalty",
    "cross_entropy_loss",
    "distill_forward",
    "distillation_loss",
    "kl_loss",
    "logits_at",
]
