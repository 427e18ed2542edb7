"""The distillation trainer: only the hypernetwork learns, against a teacher that sees the prompt.

One optimisation step: for each of ``accumulation`` micro-batches, the teacher
reads prompt ⊕ input ⊕ response (no grad), the hypernetwork turns the prompts
into adapters, the student reads input ⊕ response with them injected, and the
loss compares the two at the response tokens. Then clip, AdamW, schedule.

Checkpoints (``out_dir/checkpoints/step-NNNNNN``) hold the hypernetwork (a normal
``save_pretrained`` folder) plus ``trainer_state.json`` + ``trainer_state.safetensors``
(optimiser, schedule, data stream, RNG; ``hyperlora.state_io``: no pickle, so a planted
file cannot run code on resume): written atomically, the last ``keep_last`` kept, and ``resume=True``
continues from the newest intact one with the same losses as an uninterrupted run.

Guards (training that would go wrong quietly stops instead, with ``FloatingPointError`` naming the
step, the last checkpoint on disk and the fix): a non-finite loss, a loss above ``max_loss_ratio``
times the run's first, a non-finite gradient norm (measured before clipping), non-finite weights
after the optimiser step (undone) and, before every save, non-finite weights (nothing is written).

Resume (``_resume``): the settings a resume may change are ``hyperlora.resume_policy.RESUMABLE``; the new
``lr``, ``warmup_steps``, ``min_lr_ratio`` and ``max_steps`` apply from the resumed step on. Any other
change of ``trainer``, ``distill`` or the hypernetwork's config (``lora.rank``...) is refused by name. A
checkpoint that cannot be read is skipped (one line on stderr) for the one before it.
"""

from __future__ import annotations

import math
import random
import re
import shutil
import sys
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hyperlora.answer_metrics import AnswerCache, Follows
from hyperlora.atomic import atomic_directory
from hyperlora.batches import BatchStream
from hyperlora.data.collate import DistillCollator
from hyperlora.data.records import Record
from hyperlora.distill import DistillConfig, distill_forward, distillation_loss
from hyperlora.evaluate import exact_match, heldout_kl
from hyperlora.metrics import MetricsLogger
from hyperlora.config import HyperLoRAConfig
from hyperlora.model import HyperLoRA, read_checkpoint_config
from hyperlora.open_eval import open_answer_metrics
from hyperlora.resume_policy import changed_keys, flatten
from hyperlora.schedule import warmup_cosine
from hyperlora.state_io import StateError, load_state, save_state

__all__ = ["TrainerConfig", "Trainer", "warmup_cosine"]

STATE_STEM = "trainer_state"  # trainer_state.json + trainer_state.safetensors (hyperlora.state_io)
STATE_NAME = STATE_STEM + ".json"  # its presence marks a complete checkpoint
LOSS_FLOOR = 0.1  # nats: trainer.max_loss_ratio never stops a run whose loss stays below ratio × this


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
    grad_clip: float = 1.0  # max gradient norm; 0 = no clipping
    # Stop when a step's loss exceeds this many times the run's first loss (the untrained hypernetwork's,
    # or the first after a resume), or times LOSS_FLOOR if that is larger: a diverging lr otherwise
    # "succeeds" (0.34 -> 125 in 7 steps). The floor keeps a run whose first KL is ~1e-4 (a nearly
    # uniform student) from stopping on a rise to 1e-2. 0 = off.
    max_loss_ratio: float = 100.0
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
    # A run folder (run.json) that holds another run is replaced only when asked: only what the project wrote there
    # is deleted (hyperlora.train). Mutually exclusive with resume on a folder that holds a run.
    overwrite: bool = False

    def __post_init__(self) -> None:
        # One line per mistake, before anything heavy: a float where an integer belongs is refused, not
        # rounded (max_steps=2.5 ran 3 steps), and a negative grad_clip turned training into gradient ascent.
        if not isinstance(self.out_dir, (str, PathLike)) or not str(self.out_dir):
            raise ValueError(f"trainer.out_dir must be a folder path, got {self.out_dir!r}.")
        for name in ("max_steps", "batch_size", "accumulation", "keep_last", "max_new_tokens", "eval_examples",
                     "eval_batch_size"):
            _check_int(name, getattr(self, name), 1, "a positive integer")
        for name in ("warmup_steps", "save_every", "eval_every"):
            _check_int(name, getattr(self, name), 0, "an integer >= 0 (0 = never)" if name != "warmup_steps"
                       else "an integer >= 0")
        _check_int("seed", self.seed, 0, "an integer >= 0")
        _check_number("lr", self.lr, "a finite number > 0", lambda v: v > 0)
        _check_number("weight_decay", self.weight_decay, "a finite number >= 0", lambda v: v >= 0)
        _check_number("min_lr_ratio", self.min_lr_ratio, "a number in [0, 1]", lambda v: 0 <= v <= 1)
        _check_number("grad_clip", self.grad_clip, "a finite number > 0, or 0 for no clipping", lambda v: v >= 0)
        _check_number("max_loss_ratio", self.max_loss_ratio, "a finite number > 1, or 0 for no check",
                      lambda v: v == 0 or v > 1)
        for name in ("resume", "progress", "gradient_checkpointing"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"trainer.{name} must be true or false, got {getattr(self, name)!r}.")
        if str(self.bf16).lower() not in ("auto", "true", "false"):
            raise ValueError(f"trainer.bf16={self.bf16!r}; choose auto, true or false.")


def _check_int(name: str, value: Any, minimum: int | None, what: str) -> None:
    # bool is an int subclass: trainer.max_steps=true is a mistake, not 1.
    if not isinstance(value, int) or isinstance(value, bool) or (minimum is not None and value < minimum):
        raise ValueError(f"trainer.{name} must be {what}, got {value!r}.")


def _check_number(name: str, value: Any, what: str, ok: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or not ok(value):
        raise ValueError(f"trainer.{name} must be {what}, got {value!r}.")


class _Damaged(Exception):
    """A checkpoint that cannot be read back; a resume falls back to the one before it."""


def _with_defaults(cls: type, saved: Any) -> dict[str, Any]:
    """``saved`` (a config dict from a checkpoint) with the fields it predates at their defaults."""
    if not isinstance(saved, dict):
        raise _Damaged(f"its {cls.__name__} is not a mapping")
    return {**{f.name: f.default for f in fields(cls)}, **saved}


def _step_of(path: Path) -> int:
    return int(path.name[len("step-"):])


def _all_finite(tensors: list[torch.Tensor]) -> bool:
    # One device sync for all tensors, not one each.
    return not tensors or bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


def _restore(params: list[torch.Tensor], saved: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for param, value in zip(params, saved):
            param.copy_(value)


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
    ``follows``: the verifiers of open answers (``hyperlora.open_eval.instruct_follows``); given, evaluation
    reports instruction following and the KL gap closed (``open_answer_metrics``) instead of exact match.
    """

    def __init__(self, hyper: HyperLoRA, train_records: list[Record], config: TrainerConfig,
                 eval_sets: dict[str, list[Record]] | None = None, teacher: nn.Module | None = None,
                 logger: MetricsLogger | None = None, max_length: int = 512, rank: int = 0, world: int = 1,
                 distill: DistillConfig | None = None, prompt_layout: str = "user",
                 follows: Follows | None = None) -> None:
        self.hyper, self.config = hyper, config
        self.distill = distill if distill is not None else DistillConfig()
        self.teacher = (teacher if teacher is not None else hyper.student).eval()
        self.rank, self.world = rank, world
        self.device = next(hyper.student.parameters()).device
        # prompt_layout: where the teacher reads the instruction (the user turn, or a system turn).
        self.collator = DistillCollator(hyper.tokenizer, max_length, prompt_layout)
        self.eval_sets = {k: v[: config.eval_examples] for k, v in (eval_sets or {}).items()}
        self.follows = follows
        self.answer_cache = AnswerCache()  # the teacher's and the base's answers, decoded once per run
        self._evaluated: tuple[int, bool, dict[str, float]] | None = None  # (step, exact match, metrics)
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
        # The step of the newest checkpoint this run wrote or resumed from (None: none yet): what an error
        # message may call intact, and whether the final weights still need saving.
        self.saved_step: int | None = None
        self.first_loss: float | None = None  # the reference of trainer.max_loss_ratio
        self._damaged: list[Path] = []  # checkpoints a resume skipped; pruned once a newer one exists
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
                    out = distill_forward(self.hyper, self.teacher, batch, self.device, self.hypernet,
                                          skip_unread_teacher=True)
                    losses = distillation_loss(
                        out.student, out.teacher, batch["labels"].to(self.device), objective.loss,
                        objective.temperature, objective.ce_weight, objective.loss_chunk,
                        adapters=out.adapters, adapter_l2=objective.adapter_l2,
                        verified=batch.get("verified_mask"), edited=batch.get("edited_mask"),
                        edit_weight=objective.edit_weight,
                    )
                (losses["loss"] / cfg.accumulation).backward()
            for key, value in losses.items():
                sums[key] = sums.get(key, 0.0) + value.item() / cfg.accumulation
        # Every check below comes before the weights change (or undoes the change): a stopped run leaves the
        # weights of its last good step in memory and the last checkpoint on disk untouched.
        problem = self._loss_problem(sums["loss"])
        if self._any_rank(problem is not None):  # the loss is per rank: all ranks stop together
            self._stop(problem or "another rank's loss was bad")
        params = self.hyper.trainable_parameters()
        # grad_clip=0: no clipping, but the norm (before clipping) is still measured and checked.
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip or math.inf))
        if not math.isfinite(grad_norm):
            self._stop(f"Non-finite gradient norm ({grad_norm})")
        before = [p.detach().clone() for p in params]
        lr = self.optimizer.param_groups[0]["lr"]
        try:
            self.optimizer.step()
        except RuntimeError as err:  # torch refuses an lr whose step overflows, after updating some tensors
            _restore(params, before)
            if "overflow" not in str(err):
                raise
            self._stop(f"The optimiser step overflows float (lr {lr:g})")
        if not _all_finite(params):  # an update that overflowed to inf or nan
            _restore(params, before)
            self._stop(f"Non-finite weights after the optimiser step (lr {lr:g})")
        del before
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if self.first_loss is None:
            self.first_loss = sums["loss"]
        return {**sums, "grad_norm": grad_norm, "lr": self.scheduler.get_last_lr()[0]}

    def _loss_problem(self, loss: float) -> str | None:
        if not math.isfinite(loss):
            return f"Non-finite loss ({loss})"
        ratio, first = self.config.max_loss_ratio, self.first_loss
        if ratio and first is not None and loss > ratio * max(first, LOSS_FLOOR):
            return (f"The loss exploded ({loss:.4g}, more than trainer.max_loss_ratio={ratio:g} times the run's "
                    f"first loss {first:.4g}, floor {LOSS_FLOOR:g})")
        return None

    def _any_rank(self, flag: bool) -> bool:
        if self.world == 1:
            return flag
        import torch.distributed as dist

        value = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def _stop(self, problem: str, step: int | None = None,
              done: str = "training stopped before the weights changed") -> None:
        """Raise ``FloatingPointError``: what went wrong, at which step, what is intact and what to do."""
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.config.lr
        if self.saved_step is None:
            where = ("no checkpoint was saved yet; start again with a lower trainer.lr (now "
                     f"{lr:g}) or more trainer.warmup_steps")
        else:
            where = (f"the last checkpoint, {self.checkpoint_dir / f'step-{self.saved_step:06d}'} (step "
                     f"{self.saved_step}), is intact; continue from it with trainer.resume=true "
                     f"trainer.lr=<lower than {lr:g}>")
        raise FloatingPointError(f"{problem} at step {self.step + 1 if step is None else step}: {done}; {where}.")

    # -- evaluation ----------------------------------------------------------
    def evaluate(self, with_exact_match: bool = True) -> dict[str, float]:
        """Per split: held-out KL and greedy exact match of student, teacher and base (the toy suite),
        or, with ``follows``, the figures of ``hyperlora.open_eval.open_answer_metrics``.

        ``with_exact_match=False``: the KL alone. An evaluation at a step already evaluated returns
        the same figures without decoding again (the weights have not changed since).
        """
        if self._evaluated is not None and self._evaluated[:2] == (self.step, with_exact_match):
            return dict(self._evaluated[2])
        self.hyper.eval()
        cfg = self.config
        metrics: dict[str, float] = {}
        try:
            for split, records in self.eval_sets.items():
                if self.follows is not None and with_exact_match:
                    figures = open_answer_metrics(self.hyper, self.teacher, records, self.collator, self.follows,
                                                  self.answer_cache, cfg.eval_batch_size, cfg.max_new_tokens)
                    metrics.update({f"{split}/{key}": value for key, value in figures.items()})
                    continue
                metrics[f"{split}/kl"] = heldout_kl(self.hyper, self.teacher, records, self.collator,
                                                    cfg.eval_batch_size)
                if with_exact_match:
                    for who, value in exact_match(self.hyper, self.teacher, records, cfg.eval_batch_size,
                                                  cfg.max_new_tokens).items():
                        metrics[f"{split}/em_{who}"] = value
        finally:  # an evaluation that raises must not leave LoRA dropout off for the training that follows
            self.hyper.train()
        self._evaluated = (self.step, with_exact_match, dict(metrics))
        return metrics

    # -- checkpoints ---------------------------------------------------------
    def save_checkpoint(self) -> Path | None:
        """Write ``step-NNNNNN`` (rank 0), then prune to ``keep_last``.

        Raises:
            FloatingPointError: the hypernetwork holds a non-finite value; nothing is written.
        """
        bad = [k for k, v in self.hyper.hypernet.state_dict().items() if v.is_floating_point() and not _all_finite([v])]
        if bad:
            shown = ", ".join(bad[:3]) + (" ..." if len(bad) > 3 else "")
            self._stop(f"Non-finite weights ({shown})", self.step, "nothing was saved")
        if self.rank != 0:
            self.saved_step = self.step
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
            "first_loss": self.first_loss,
        }
        with atomic_directory(path, overwrite=True) as tmp:
            self.hyper.save_pretrained(tmp / "hyperlora")
            save_state(state, tmp / STATE_STEM)
        self.saved_step = self.step
        self._prune(path)
        return path

    def _prune(self, written: Path) -> None:
        """Keep ``written`` and the ``keep_last - 1`` newest intact checkpoints before it.

        Only older checkpoints are candidates: a newer one is left from before a resume fell back past it
        (a damaged one, overwritten when this run reaches its step); counting it would delete the checkpoint
        just written. Checkpoints the resume found damaged go first.
        """
        step = _step_of(written)
        older = [p for p in self.checkpoints() if _step_of(p) < step]
        intact = [p for p in older if p not in self._damaged]
        keep = set(intact[-(self.config.keep_last - 1):]) if self.config.keep_last > 1 else set()
        for old in older:
            if old not in keep:
                shutil.rmtree(old, ignore_errors=True)

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first by step number (temporary folders never match the name)."""
        if not self.checkpoint_dir.is_dir():
            return []
        # By number, not name: step-1000000 sorts after step-999999.
        found = [p for p in self.checkpoint_dir.iterdir()
                 if re.fullmatch(r"step-\d{6,}", p.name) and (p / STATE_NAME).is_file()]
        return sorted(found, key=_step_of)

    def _resume(self) -> None:
        """Continue from the newest intact checkpoint; refuse, by name, a config a resume may not change.

        What may change is ``hyperlora.resume_policy.RESUMABLE``: the schedule's numbers (``lr``,
        ``warmup_steps``, ``min_lr_ratio``, ``max_steps``) apply from the resumed step on, as if the run had
        been started with them; everything else that shapes the weights (batch, seed, weight decay, the loss,
        the LoRA spec and the hypernetwork's parts) must equal the checkpoint's.
        A checkpoint that cannot be read is skipped, for the one before it (one line on stderr says so).
        """
        existing = self.checkpoints()
        if not existing:
            return  # nothing to resume: a fresh run
        skipped: list[str] = []
        for path in reversed(existing):
            try:
                state, hypernet = self._read_checkpoint(path)
                break
            except _Damaged as err:
                skipped.append(f"{path.name}: {str(err).splitlines()[0] if str(err) else 'unreadable'}")
                self._damaged.append(path)
        else:
            raise ValueError(f"None of the {len(existing)} checkpoints in {self.checkpoint_dir} can be resumed from "
                             f"({'; '.join(skipped)}); start a new run in another trainer.out_dir.")
        # Said only when a fall-back succeeded: a refusal carries its reasons in its own one line.
        for reason in skipped:
            print(f"hyperlora: skipped checkpoint {reason}; resuming from {path.name}.", file=sys.stderr)
        self.hyper.hypernet.load_state_dict(hypernet)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        # The checkpoint's lr came back with the optimiser and scheduler states: the current config's schedule
        # applies instead. For an unchanged config these are the very numbers LambdaLR computed (bit-identical).
        lr_at = self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
        self.scheduler.base_lrs = [self.config.lr for _ in self.optimizer.param_groups]
        for group in self.optimizer.param_groups:
            group["initial_lr"] = self.config.lr
            group["lr"] = self.config.lr * lr_at
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        self.stream.load_state_dict(state["stream"])
        _set_rng_state(state["rng"])
        self.step = int(state["step"])
        self.saved_step = self.step
        first = state.get("first_loss")
        self.first_loss = float(first) if isinstance(first, (int, float)) and math.isfinite(first) else None

    def _read_checkpoint(self, path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """(trainer state, hypernetwork weights) of ``path``.

        Raises:
            _Damaged: a file is missing, truncated or holds non-finite weights.
            ValueError: the checkpoint was made with settings a resume may not change (every one named).
        """
        try:
            state = load_state(path / STATE_STEM)
            meta = read_checkpoint_config(path / "hyperlora")
            saved_hyper = HyperLoRAConfig.from_dict(meta["config"]).to_dict()
        except (StateError, ValueError, TypeError, OSError) as err:
            raise _Damaged(str(err)) from None
        if not all(isinstance(state.get(k), dict) for k in ("optimizer", "scheduler", "stream", "rng")):
            raise _Damaged(f"{path / STATE_NAME} lacks part of the training state")
        saved = {"trainer": _with_defaults(TrainerConfig, state.get("config")),
                 "distill": _with_defaults(DistillConfig, state.get("distill")),
                 **{k: v for k, v in saved_hyper.items() if k != "base_model"}}
        current = {"trainer": asdict(self.config), "distill": asdict(self.distill),
                   **{k: v for k, v in self.hyper.config.to_dict().items() if k != "base_model"}}
        changed = changed_keys(saved, current)
        if changed:
            old, new = flatten(saved), flatten(current)
            shown = ", ".join(f"{k} ({old.get(k)!r} -> {new.get(k)!r})" for k in changed)
            raise ValueError(f"Cannot resume from {path}: {shown} changed since it was saved, and a resume may change "
                             "only the schedule, cadence, logging and output settings; set them back or start a new "
                             "run in another trainer.out_dir.")
        try:  # the student is checked against the checkpoint's target registry here
            loaded = HyperLoRA.from_pretrained(path / "hyperlora", student=self.hyper.student,
                                               tokenizer=self.hyper.tokenizer)
        except (ValueError, OSError, RuntimeError) as err:
            raise _Damaged(str(err).splitlines()[0] if str(err) else type(err).__name__) from None
        hypernet = loaded.hypernet.state_dict()
        bad = [k for k, v in hypernet.items() if v.is_floating_point() and not _all_finite([v])]
        if bad:
            raise _Damaged(f"non-finite weights in {bad[0]}")
        return state, hypernet

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
        if self.saved_step != self.step:
            self.save_checkpoint()  # the final weights are always on disk (checked finite first)
        return history
