"""The distillation trainer: only the hypernetwork learns, against a teacher that sees the prompt.

One optimisation step: for each of ``accumulation`` micro-batches, the teacher
reads prompt ⊕ input ⊕ response (no grad), the hypernetwork turns the prompts
into adapters, the student reads input ⊕ response with them injected, and the
loss compares the two at the response tokens. Then clip, AdamW, schedule.

Checkpoints (``out_dir/checkpoints/step-NNNNNN``) hold the hypernetwork (a normal
``save_pretrained`` folder) plus ``trainer_state.json`` + ``trainer_state.safetensors``
(optimiser, schedule, data stream, RNG; ``hyperlora.state_io``: no pickle, so a planted
file cannot run code on resume): written atomically, the last ``keep_last`` kept, and ``resume=True``
continues from the newest one with the same losses as an uninterrupted run.
"""

from __future__ import annotations

import math
import random
import re
import shutil
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hyperlora.atomic import atomic_directory
from hyperlora.batches import BatchStream
from hyperlora.data.collate import DistillCollator
from hyperlora.data.records import Record
from hyperlora.distill import DistillConfig, distill_forward, distillation_loss
from hyperlora.evaluate import exact_match, heldout_kl
from hyperlora.metrics import MetricsLogger
from hyperlora.model import HyperLoRA
from hyperlora.schedule import warmup_cosine
from hyperlora.state_io import load_state, save_state

__all__ = ["TrainerConfig", "Trainer", "warmup_cosine"]

STATE_STEM = "trainer_state"  # trainer_state.json + trainer_state.safetensors (hyperlora.state_io)
STATE_NAME = STATE_STEM + ".json"  # its presence marks a complete checkpoint


@dataclass
class TrainerConfig:
    out_dir: str = "runs/hyperlora"
    max_steps: int = 100
    batch_size: int = 16  # global: split over processes, before accumulation
    accumulation: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int = 50
    eval_examples: int = 64
    eval_batch_size: int = 32
    max_new_tokens: int = 48
    save_every: int = 50
    keep_last: int = 2
    resume: bool = False
    bf16: str = "auto"  # "auto": autocast on CUDA only; "true"/"false" to force
    gradient_checkpointing: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        positive = ("max_steps", "batch_size", "accumulation", "keep_last", "max_new_tokens")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"trainer.{name} must be a positive integer, got {getattr(self, name)!r}.")
        if not self.lr > 0:
            raise ValueError(f"trainer.lr must be positive, got {self.lr}.")
        if str(self.bf16).lower() not in ("auto", "true", "false"):
            raise ValueError(f"trainer.bf16={self.bf16!r}; choose auto, true or false.")


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Trains ``hyper.hypernet`` against ``teacher`` (default: the student itself, prompt in context).

    ``distill``: what the loss is made of (default ``DistillConfig()``: forward KL alone).
    """

    def __init__(self, hyper: HyperLoRA, train_records: list[Record], config: TrainerConfig,
                 eval_sets: dict[str, list[Record]] | None = None, teacher: nn.Module | None = None,
                 logger: MetricsLogger | None = None, max_length: int = 512, rank: int = 0, world: int = 1,
                 distill: DistillConfig | None = None) -> None:
        self.hyper, self.config = hyper, config
        self.distill = distill if distill is not None else DistillConfig()
        self.teacher = (teacher if teacher is not None else hyper.student).eval()
        self.rank, self.world = rank, world
        self.device = next(hyper.student.parameters()).device
        self.collator = DistillCollator(hyper.tokenizer, max_length)
        self.eval_sets = {k: v[: config.eval_examples] for k, v in (eval_sets or {}).items()}
        self.logger = logger if logger is not None else MetricsLogger(None)
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        self.stream = BatchStream(train_records, config.batch_size, config.seed, rank, world)
        self.hypernet: nn.Module = hyper.hypernet
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.hypernet = DistributedDataParallel(hyper.hypernet, device_ids=ids)
        self.optimizer = torch.optim.AdamW(hyper.trainable_parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(config.warmup_steps, config.max_steps, config.min_lr_ratio)
        )
        if config.gradient_checkpointing:
            hyper.student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.step = 0
        self.checkpoint_dir = Path(config.out_dir) / "checkpoints"
        if config.resume:
            self._resume()

    # -- one step ------------------------------------------------------------
    def _autocast(self) -> Any:
        flag = str(self.config.bf16).lower()
        if flag == "true" or (flag == "auto" and self.device.type == "cuda"):
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def train_step(self) -> dict[str, float]:
        """One optimisation step over ``accumulation`` micro-batches; returns its metrics."""
        self.hyper.train()
        cfg, objective = self.config, self.distill
        sums: dict[str, float] = {}
        for micro in range(cfg.accumulation):
            batch = self.collator(self.stream.next())
            # DDP all-reduces on every backward unless told otherwise: only on the last micro-batch.
            sync = micro == cfg.accumulation - 1 or self.world == 1
            no_sync = self.hypernet.no_sync() if not sync and hasattr(self.hypernet, "no_sync") else nullcontext()
            with no_sync:
                with self._autocast():
                    out = distill_forward(self.hyper, self.teacher, batch, self.device, self.hypernet)
                    losses = distillation_loss(
                        out.student, out.teacher, batch["labels"].to(self.device), objective.loss,
                        objective.temperature, objective.ce_weight, objective.loss_chunk,
                        adapters=out.adapters, adapter_l2=objective.adapter_l2,
                    )
                (losses["loss"] / cfg.accumulation).backward()
            for key, value in losses.items():
                sums[key] = sums.get(key, 0.0) + value.item() / cfg.accumulation
        if not math.isfinite(sums["loss"]):
            raise FloatingPointError(
                f"Non-finite loss ({sums['loss']}) at step {self.step + 1}: training stopped. Lower trainer.lr, "
                "raise trainer.warmup_steps or check the data; the last checkpoint is intact."
            )
        grad_norm = torch.nn.utils.clip_grad_norm_(self.hyper.trainable_parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return {**sums, "grad_norm": float(grad_norm), "lr": self.scheduler.get_last_lr()[0]}

    # -- evaluation ----------------------------------------------------------
    def evaluate(self, with_exact_match: bool = True) -> dict[str, float]:
        """Held-out KL per split, and greedy exact match of student, teacher and base."""
        self.hyper.eval()
        metrics: dict[str, float] = {}
        for split, records in self.eval_sets.items():
            metrics[f"{split}/kl"] = heldout_kl(self.hyper, self.teacher, records, self.collator,
                                                self.config.eval_batch_size)
            if with_exact_match:
                for who, value in exact_match(self.hyper, self.teacher, records, self.config.eval_batch_size,
                                              self.config.max_new_tokens).items():
                    metrics[f"{split}/em_{who}"] = value
        self.hyper.train()
        return metrics

    # -- checkpoints ---------------------------------------------------------
    def save_checkpoint(self) -> Path | None:
        if self.rank != 0:
            return None
        path = self.checkpoint_dir / f"step-{self.step:06d}"
        state = {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "stream": self.stream.state_dict(),
            "rng": _rng_state(),
            "config": asdict(self.config),
            "distill": asdict(self.distill),
        }
        with atomic_directory(path, overwrite=True) as tmp:
            self.hyper.save_pretrained(tmp / "hyperlora")
            save_state(state, tmp / STATE_STEM)
        for old in self.checkpoints()[: -self.config.keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        return path

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first by step number (temporary folders never match the name)."""
        if not self.checkpoint_dir.is_dir():
            return []
        # By number, not name: step-1000000 sorts after step-999999.
        found = [p for p in self.checkpoint_dir.iterdir() if re.fullmatch(r"step-\d{6,}", p.name) and (p / STATE_NAME).is_file()]
        return sorted(found, key=lambda p: int(p.name[len("step-"):]))

    def _resume(self) -> None:
        existing = self.checkpoints()
        if not existing:
            return  # nothing to resume: a fresh run
        latest = existing[-1]
        state = load_state(latest / STATE_STEM)
        loaded = HyperLoRA.from_pretrained(latest / "hyperlora", student=self.hyper.student, tokenizer=self.hyper.tokenizer)
        self.hyper.hypernet.load_state_dict(loaded.hypernet.state_dict())
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.stream.load_state_dict(state["stream"])
        _set_rng_state(state["rng"])
        self.step = int(state["step"])

    # -- the loop ------------------------------------------------------------
    def fit(self) -> list[dict[str, float]]:
        """Train to ``max_steps``; returns every step's metrics (rank 0 logs them)."""
        cfg = self.config
        history: list[dict[str, float]] = []
        progress = None
        if cfg.progress and self.rank == 0:
            from tqdm.auto import tqdm

            progress = tqdm(total=cfg.max_steps, initial=self.step, desc="train", dynamic_ncols=True)
        while self.step < cfg.max_steps:
            metrics = self.train_step()
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.eval_sets and self.rank == 0:
                metrics.update(self.evaluate())
            history.append({"step": self.step, **metrics})
            if self.rank == 0:
                self.logger.log(metrics, self.step)
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{metrics['loss']:.4f}")
            if cfg.save_every and self.step % cfg.save_every == 0:
                self.save_checkpoint()
        if progress is not None:
            progress.close()
        existing = self.checkpoints()
        if not existing or existing[-1].name != f"step-{self.step:06d}":
            self.save_checkpoint()  # the final weights are always on disk
        return history
