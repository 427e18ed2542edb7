"""The resume policy: which changed settings make another run, named; the identity ignores the rest."""

from __future__ import annotations

import dataclasses

from hyperlora.resume_policy import changed_keys, flatten, run_identity
from hyperlora.train_config import TrainConfig


def _config(**changes: dict) -> dict:
    base = dataclasses.asdict(TrainConfig())
    for group, values in changes.items():
        base[group] = {**base[group], **values}
    return base


def test_flatten_gives_dotted_keys_and_keeps_lists() -> None:
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": {}}) == {"a.b": 1, "a.c": [1, 2], "d": {}}


def test_resumable_changes_are_allowed_and_keep_the_identity() -> None:
    before = _config()
    after = _config(trainer={"lr": 1e-5, "max_steps": 999, "save_every": 7, "out_dir": "elsewhere"},
                    logger={"kind": "none"}, data={"n_eval": 3})
    assert changed_keys(before, after) == []
    assert run_identity(before) == run_identity(after)


def test_changes_that_make_another_run_are_named() -> None:
    before = _config()
    after = _config(lora={"rank": 16}, trainer={"batch_size": 3, "seed": 9}, distill={"loss": "reverse_kl"})
    assert changed_keys(before, after) == ["distill.loss", "lora.rank", "trainer.batch_size", "trainer.seed"]
    assert run_identity(before) != run_identity(after)


def test_a_key_present_on_one_side_only_counts_as_changed() -> None:
    assert changed_keys({"model": {"path": "a"}}, {"model": {"path": "a", "new": 1}}) == ["model.new"]
