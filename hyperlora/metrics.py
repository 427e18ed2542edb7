"""Metrics to a local JSONL file always, and to wandb when asked (offline unless told otherwise).

wandb is imported only when chosen, so tests and the default run never touch it
or the network.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

__all__ = ["MetricsLogger"]


class MetricsLogger:
    """``log(metrics, step)`` appends ``{"step", "time", **metrics}`` to ``path`` (if any) and to wandb."""

    def __init__(self, path: str | Path | None, wandb: dict[str, Any] | None = None, config: dict[str, Any] | None = None) -> None:
        self.path = Path(path) if path else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.run = None
        if wandb is not None:
            self.run = self._start_wandb(wandb, config or {})

    @staticmethod
    def _start_wandb(options: dict[str, Any], config: dict[str, Any]) -> Any:
        mode = options.get("mode", "offline")
        os.environ.setdefault("WANDB_MODE", mode)
        try:
            import wandb
        except ImportError:
            raise ImportError("logger=wandb needs wandb: pip install 'hyperlora[wandb]' (or use logger=jsonl).") from None
        return wandb.init(project=options.get("project", "hyperlora"), name=options.get("name"), mode=mode,
                          dir=options.get("dir"), config=config)

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.path is not None:
            # One line per step, flushed at once: a killed run keeps every logged step.
            with self.path.open("a") as handle:
                handle.write(json.dumps({"step": step, "time": time.time(), **metrics}) + "\n")
        if self.run is not None:
            self.run.log(metrics, step=step)

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
