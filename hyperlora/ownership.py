"""Which folders are the project's own: the only ones a save may replace or a run may clean.

A save that replaces "whatever is at the target" once replaced a package's source with a
checkpoint (``trainer.out_dir=.`` in a checkout). Every folder the project writes carries a
mark, a file no user folder has by accident, and these predicates read it:

    HyperLoRA checkpoint  hyperlora_config.json   (``HyperLoRA.save_pretrained``)
    trainer checkpoint    trainer_state.json + hyperlora/   (``checkpoints/step-N``)
    run folder            run.json                (``hyperlora train``'s ``trainer.out_dir``)
    teacher folder        teacher_report.json     (``pretrain_teacher``)
    export folder         hyperlora_export.json   (``hyperlora export`` / ``merge``)

Pass one as ``replaceable=`` to ``hyperlora.atomic.atomic_directory``: an empty or missing
folder is always fine, a non-empty one only when the predicate recognises it.

``RUN_ENTRIES`` are the names a run writes into its folder: ``trainer.overwrite=true``
deletes those and nothing else.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CHECKPOINT_MARK", "EXPORT_MARK", "RUN_MARK", "TEACHER_MARK", "RUN_ENTRIES", "is_checkpoint", "is_export",
           "is_run_folder", "is_teacher_folder", "is_trainer_checkpoint", "is_run_entry"]

CHECKPOINT_MARK = "hyperlora_config.json"  # hyperlora.model.CONFIG_NAME (not imported: this module stays light)
RUN_MARK = "run.json"
TEACHER_MARK = "teacher_report.json"  # hyperlora.toy.teacher.REPORT_NAME
EXPORT_MARK = "hyperlora_export.json"  # beside a PEFT adapter or a merged model: which prompt made it
TRAINER_STATE_MARK = "trainer_state.json"  # hyperlora.trainer.STATE_NAME

# What `hyperlora train` writes into trainer.out_dir (run.json and the lock file are handled on their own).
RUN_ENTRIES = ("checkpoints", "hyperlora", "metrics.jsonl", "final_metrics.json")
_RUN_PREFIXES = ("teacher_outputs",)  # the teacher-label cache: teacher_outputs.jsonl


def is_checkpoint(path: str | os.PathLike[str]) -> bool:
    """A folder written by ``HyperLoRA.save_pretrained``."""
    return (Path(path) / CHECKPOINT_MARK).is_file()


def is_trainer_checkpoint(path: str | os.PathLike[str]) -> bool:
    """A ``checkpoints/step-N`` folder written by the trainer (its state and a HyperLoRA checkpoint)."""
    path = Path(path)
    return (path / TRAINER_STATE_MARK).is_file() or is_checkpoint(path / "hyperlora")


def is_run_folder(path: str | os.PathLike[str]) -> bool:
    """A ``trainer.out_dir`` that holds a run of ``hyperlora train``."""
    return (Path(path) / RUN_MARK).is_file()


def is_teacher_folder(path: str | os.PathLike[str]) -> bool:
    """A teacher written by ``hyperlora.toy.teacher.pretrain_teacher``."""
    return (Path(path) / TEACHER_MARK).is_file()


def is_export(path: str | os.PathLike[str]) -> bool:
    """A PEFT folder or merged model written by ``hyperlora export`` / ``merge`` (``--force`` replaces only these)."""
    return (Path(path) / EXPORT_MARK).is_file()


def is_run_entry(name: str) -> bool:
    """Whether ``name`` (an entry of a run folder) is one that ``hyperlora train`` writes."""
    return name in RUN_ENTRIES or name.startswith(_RUN_PREFIXES)
