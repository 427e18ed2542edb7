"""The learning-rate shape shared by the teacher's pretraining and the hypernetwork's training."""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["warmup_cosine"]


def warmup_cosine(warmup: int, total: int, min_ratio: float) -> Callable[[int], float]:
    """LR multiplier for ``LambdaLR``: linear warm-up to 1, then cosine down to ``min_ratio`` at ``total``.

    Raises:
        ValueError: ``warmup < 0``, ``total < 1`` or ``min_ratio`` outside [0, 1] (a negative multiplier
            would turn the optimiser's step around).
    """
    if warmup < 0 or total < 1 or not 0 <= min_ratio <= 1:
        raise ValueError(f"warmup_cosine needs warmup >= 0, total >= 1 and 0 <= min_ratio <= 1; got warmup={warmup}, "
                         f"total={total}, min_ratio={min_ratio}.")

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor
