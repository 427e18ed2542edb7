"""``DistillConfig``: what the training loss is made of (the Hydra group ``distill``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from hyperlora.distill.losses import LOSSES

__all__ = ["DistillConfig"]


@dataclass
class DistillConfig:
    """``loss = KL_loss(teacher ‖ student) · temperature² + ce_weight · CE + adapter_l2 · penalty``.

    ``penalty`` is ``adapter_l2_penalty``: the mean over targets of ``mean(A²) + mean(B²)``.
    """

    loss: str = "forward_kl"  # forward_kl (mass-covering) | reverse_kl (mode-seeking)
    temperature: float = 1.0
    ce_weight: float = 0.0  # cross-entropy against the response tokens, added to the KL
    loss_chunk: int = 1024  # rows of [N, V] upcast to fp32 at a time
    adapter_l2: float = 0.0  # weight of the L2 penalty on the generated A and B (Text-to-LoRA, Doc-to-LoRA)
    # Verified targets: the weight of the tokens a rewrite changed or added (a title, a closing phrase, capitals),
    # against 1 for the tokens of the model's own answer it kept; 1: every token alike.
    edit_weight: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.loss, str) or self.loss not in LOSSES:
            raise ValueError(f"distill.loss={self.loss!r}; choose one of {', '.join(LOSSES)}.")
        if not _number(self.temperature) or not self.temperature > 0:
            raise ValueError(f"distill.temperature must be a finite number > 0, got {self.temperature!r}.")
        # An integer, not rounded: loss_chunk=2.5 is a mistake (and bool is an int subclass).
        if not isinstance(self.loss_chunk, int) or isinstance(self.loss_chunk, bool) or self.loss_chunk < 1:
            raise ValueError(f"distill.loss_chunk must be a positive integer, got {self.loss_chunk!r}.")
        for name in ("ce_weight", "adapter_l2"):
            value = getattr(self, name)
            if not _number(value) or value < 0:
                raise ValueError(f"distill.{name} must be a finite number >= 0, got {value!r}.")
        if not _number(self.edit_weight) or not self.edit_weight > 0:
            raise ValueError(f"distill.edit_weight must be a finite number > 0, got {self.edit_weight!r}.")


def _number(value: object) -> bool:
    """A finite int or float (not a bool, not a string)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
