"""The marks that make a folder the project's own: each predicate against the folder its writer makes."""

from __future__ import annotations

from pathlib import Path

from hyperlora.model import CONFIG_NAME
from hyperlora.ownership import (
    RUN_MARK,
    TEACHER_MARK,
    is_checkpoint,
    is_run_entry,
    is_run_folder,
    is_teacher_folder,
    is_trainer_checkpoint,
)
from hyperlora.toy.teacher import REPORT_NAME
from hyperlora.trainer import STATE_NAME


def test_the_marks_are_the_names_the_writers_use() -> None:
    assert (CONFIG_NAME, REPORT_NAME, STATE_NAME) == ("hyperlora_config.json", TEACHER_MARK, "trainer_state.json")
    assert RUN_MARK == "run.json"


def test_each_predicate_recognises_only_its_own_mark(tmp_path: Path) -> None:
    user = tmp_path / "user"
    (user / "hyperlora").mkdir(parents=True)
    (user / "hyperlora" / "__init__.py").write_text("")  # a package source is no checkpoint
    (user / "README.md").write_text("")
    for check in (is_checkpoint, is_run_folder, is_teacher_folder, is_trainer_checkpoint):
        assert not check(user) and not check(user / "hyperlora") and not check(tmp_path / "missing")
    for mark, check in ((CONFIG_NAME, is_checkpoint), (RUN_MARK, is_run_folder), (TEACHER_MARK, is_teacher_folder)):
        folder = tmp_path / mark
        folder.mkdir()
        (folder / mark).write_text("{}")
        assert check(folder)
    step = tmp_path / "step-000002"
    (step / "hyperlora").mkdir(parents=True)
    (step / "hyperlora" / CONFIG_NAME).write_text("{}")
    assert is_trainer_checkpoint(step) and not is_checkpoint(step)


def test_run_entries_are_what_a_run_writes() -> None:
    for name in ("checkpoints", "hyperlora", "metrics.jsonl", "final_metrics.json", "teacher_outputs.jsonl"):
        assert is_run_entry(name)
    for name in ("notes.txt", "run.json", ".lock", "hyperlora.bak", "src", "metrics.jsonl.bak"):
        assert not is_run_entry(name)
