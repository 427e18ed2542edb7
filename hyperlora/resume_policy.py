"""What a resumed run may change, and what makes it another run.

A run is identified by every setting that shapes the weights it trains: the student, the
teacher, the targets, the LoRA spec, the hypernetwork's parts, the data, the batch, the
seed and the loss. Resuming with any of those changed would continue a different run on
top of this one's weights and optimiser state, so it is refused, naming each changed key.

A resume may change how the run continues and what it reports (``RESUMABLE``): how long it
runs (``trainer.max_steps``), the learning-rate schedule's numbers (``lr``,
``warmup_steps``, ``min_lr_ratio``; the new values apply from the resumed step on, so a run
that diverged can continue with a lower ``lr``), clipping and the loss-explosion guard, evaluation and saving cadence,
logging, precision and checkpointing of activations, where the output goes.

Configs are compared as plain nested dicts (``dataclasses.asdict``), by dotted key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

__all__ = ["RESUMABLE", "changed_keys", "flatten", "run_identity"]

# Dotted keys (or prefixes ending in ".") a resume may change.
RESUMABLE: tuple[str, ...] = (
    "trainer.max_steps", "trainer.lr", "trainer.warmup_steps", "trainer.min_lr_ratio", "trainer.grad_clip",
    "trainer.eval_every", "trainer.eval_examples", "trainer.eval_batch_size", "trainer.max_new_tokens",
    "trainer.save_every", "trainer.keep_last", "trainer.resume", "trainer.overwrite", "trainer.out_dir",
    "trainer.max_loss_ratio", "trainer.bf16", "trainer.gradient_checkpointing", "trainer.progress",
    "data.n_eval", "data.eval_splits", "data.eval", "data.on_error", "data.label_cache", "data.label_progress",
    "logger.", "eval_before",
)


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"trainer.lr": 1e-3, ...}``: nested mappings flattened to dotted keys (lists kept whole)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _resumable(key: str) -> bool:
    return any(key == r or (r.endswith(".") and key.startswith(r)) for r in RESUMABLE)


def changed_keys(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The dotted keys whose values differ between two configs and that a resume may not change, sorted."""
    a, b = flatten(saved), flatten(current)
    return sorted(k for k in set(a) | set(b) if not _resumable(k) and a.get(k, _ABSENT) != b.get(k, _ABSENT))


def run_identity(config: Mapping[str, Any]) -> str:
    """A 16-hex-digit hash of the settings a resume may not change (``RESUMABLE`` left out)."""
    fixed = {k: v for k, v in sorted(flatten(config).items()) if not _resumable(k)}
    return hashlib.sha256(json.dumps(fixed, sort_keys=True, default=str).encode()).hexdigest()[:16]


_ABSENT = object()
