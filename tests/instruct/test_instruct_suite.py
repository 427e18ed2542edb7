"""Splits of the real-LM instruction suite: deterministic, disjoint, held-out parts never trained."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from instruct_answers import PLAIN_ANSWERS

from hyperlora.data.records import Record
from hyperlora.instruct.instructions import HELDOUT_TYPES, INSTRUCTION_TYPES, TRAIN_TYPES, compatible, render
from hyperlora.instruct.questions import TRAIN_QUESTIONS, UNSEEN_QUESTIONS
from hyperlora.instruct.suite import (
    HELDOUT_PAIRS,
    SPLITS,
    TRAIN_PAIRS,
    Example,
    as_records,
    build_split,
    follows,
    index_by_record,
)

N = 1500


@pytest.fixture(scope="module")
def splits() -> dict[str, list[Example]]:
    return {split: build_split(split, N, seed=0) for split in SPLITS}


def _unordered(e: Example) -> tuple[str, ...]:
    return tuple(sorted(e.types))


def test_types_phrasings_and_parameters() -> None:
    assert len(INSTRUCTION_TYPES) >= 20
    assert len(HELDOUT_TYPES) == 4 and set(HELDOUT_TYPES) | set(TRAIN_TYPES) == set(INSTRUCTION_TYPES)
    templates = [p for t in INSTRUCTION_TYPES.values() for p in t.phrasings]
    assert all(len(t.phrasings) >= 5 for t in INSTRUCTION_TYPES.values())
    assert len(templates) == len(set(templates))  # a held-out wording is nobody's train wording
    for kind in INSTRUCTION_TYPES.values():
        assert not [p for p in kind.heldout_params if p in kind.train_params], kind.name
        for params in (kind.train_params + kind.heldout_params) or ({},):
            for i in range(len(kind.phrasings)):
                text = render(kind.name, params, i)
                assert "{" not in text and "}" not in text and text[:1].isupper(), (kind.name, text)
    assert not compatible("lowercase", "uppercase") and not compatible("json", "title")
    assert not compatible("bullets", "bullets")


def test_every_split_gives_n_well_formed_examples(splits: dict[str, list[Example]]) -> None:
    for split, examples in splits.items():
        assert len(examples) == N and build_split(split, 0) == [] and len(build_split(split, 3)) == 3
        for e in examples:
            assert e.split == split
            assert e.instruction == " ".join(i.text for i in e.instructions)
            assert all(INSTRUCTION_TYPES[i.type].verify(e.question, i.params) in (True, False) for i in e.instructions)
            if "repeat_request" in e.types:
                assert next(i for i in e.instructions if i.type == "repeat_request").params["request"] == e.question
    with pytest.raises(ValueError, match="unknown split"):
        build_split("test", 3)
    with pytest.raises(ValueError, match="n must be"):
        build_split("train", -1)


def test_same_arguments_same_examples_other_seed_other_examples() -> None:
    assert build_split("heldout_compose", 50, seed=3) == build_split("heldout_compose", 50, seed=3)
    assert build_split("train", 50, seed=3) != build_split("train", 50, seed=4)
    # A prefix does not depend on n.
    assert build_split("train", 20, seed=1) == build_split("train", 60, seed=1)[:20]


def test_questions_never_cross_the_cut(splits: dict[str, list[Example]]) -> None:
    assert {e.question for e in splits["train"]} <= set(TRAIN_QUESTIONS)
    for split in SPLITS[1:]:
        assert {e.question for e in splits[split]} <= set(UNSEEN_QUESTIONS), split


def test_train_unseen_questions_repeats_train_instructions(splits: dict[str, list[Example]]) -> None:
    train, unseen = splits["train"], splits["train_unseen_questions"]
    assert [e.instruction for e in train] == [e.instruction for e in unseen]
    assert [e.types for e in train] == [e.types for e in unseen]
    assert not {e.question for e in train} & {e.question for e in unseen}


def test_train_uses_only_train_types_phrasings_params_and_pairs(splits: dict[str, list[Example]]) -> None:
    train = splits["train"]
    singles = [e for e in train if len(e.instructions) == 1]
    pairs = [e for e in train if len(e.instructions) == 2]
    assert {e.types[0] for e in singles} == set(TRAIN_TYPES)  # every trained type shows up
    assert 0.1 < len(pairs) / N < 0.3
    for e in train:
        for i in e.instructions:
            kind = INSTRUCTION_TYPES[i.type]
            assert i.type not in HELDOUT_TYPES
            assert i.phrasing in kind.train_phrasings
            params = {k: v for k, v in i.params.items() if k != "request"}
            assert params == {} or params in kind.train_params
    assert {_unordered(e) for e in pairs} <= set(TRAIN_PAIRS)


def test_heldout_splits_hold_what_train_never_saw(splits: dict[str, list[Example]]) -> None:
    train_texts = {i.text for e in splits["train"] for i in e.instructions}
    phrasing = splits["heldout_phrasing"]
    assert {e.types[0] for e in phrasing} == set(TRAIN_TYPES)
    assert all(e.instructions[0].phrasing in INSTRUCTION_TYPES[e.types[0]].heldout_phrasings for e in phrasing)
    assert not {e.instruction for e in phrasing} & train_texts

    param = splits["heldout_param"]
    assert {e.types[0] for e in param} == {n for n in TRAIN_TYPES if INSTRUCTION_TYPES[n].parameterised}
    assert all(e.instructions[0].params in INSTRUCTION_TYPES[e.types[0]].heldout_params for e in param)
    assert not {e.instruction for e in param} & train_texts
    languages = {e.instructions[0].params["language"] for e in param if e.types == ("language",)}
    assert languages == {"Italian", "Portuguese"}

    held_type = splits["heldout_type"]
    assert {e.types[0] for e in held_type} == set(HELDOUT_TYPES)

    compose = splits["heldout_compose"]
    assert all(len(e.instructions) == 2 and compatible(*e.types) for e in compose)
    assert {_unordered(e) for e in compose} <= set(HELDOUT_PAIRS)
    assert not set(HELDOUT_PAIRS) & set(TRAIN_PAIRS) and len(HELDOUT_PAIRS) >= 20
    assert not {_unordered(e) for e in compose} & {_unordered(e) for e in splits["train"]}


def test_records_follows_and_rewrite() -> None:
    examples = build_split("heldout_compose", 200, seed=2) + build_split("train", 200, seed=2)
    records = as_records(examples)
    assert records[0] == Record(examples[0].instruction, examples[0].question, None)
    index = index_by_record(examples)
    request, answer = PLAIN_ANSWERS[1]
    for record, example in zip(records, examples):
        found = index[(record.prompt, record.input)]
        assert found.types == example.types
        prompt_level, each = follows(found, answer)
        assert prompt_level == all(each) and len(each) == len(example.instructions)
        rewritten = example.rewrite(answer)
        assert (rewritten is not None) == example.rewritable, example
        if rewritten is not None:
            assert example.follows(rewritten) == (True, [True] * len(example.instructions))
            assert example.check(rewritten)
        assert Example.from_dict(json.loads(json.dumps(example.to_dict()))) == example


def test_same_pool_and_splits_in_other_processes_with_other_hash_seeds() -> None:
    # Catches any reliance on hash() or set order, which PYTHONHASHSEED changes.
    code = (
        "import json; from hyperlora.instruct.suite import build_split, SPLITS, TRAIN_PAIRS, HELDOUT_PAIRS\n"
        "from hyperlora.instruct.questions import QUESTIONS, UNSEEN_QUESTIONS\n"
        "print(json.dumps([QUESTIONS, UNSEEN_QUESTIONS, TRAIN_PAIRS, HELDOUT_PAIRS,"
        " [e.to_dict() for s in SPLITS for e in build_split(s, 200, seed=7)]]))\n"
    )
    from hyperlora.instruct.questions import QUESTIONS

    local = json.dumps([QUESTIONS, UNSEEN_QUESTIONS, TRAIN_PAIRS, HELDOUT_PAIRS,
                        [e.to_dict() for s in SPLITS for e in build_split(s, 200, seed=7)]])
    hash_seed = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    run = subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True, text=True)
    assert run.stdout.strip() == local
