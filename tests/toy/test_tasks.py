"""The built-in instruction suite: hand-computed transformations, determinism, split rules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hyperlora.data.records import write_jsonl
from hyperlora.toy import tasks
from hyperlora.toy.tasks import (
    CONNECTIVES,
    TASK_FAMILIES,
    HELDOUT_PAIRS,
    SPLITS,
    TRAIN_PAIRS,
    WORDS,
    build_split,
    compose_tasks,
    get_family,
    list_families,
    make_task,
    as_records,
)

N = 2000  # large enough that every family, parameter and pair shows up in a split


@pytest.fixture(scope="module")
def splits() -> dict[str, list[tasks.Example]]:
    return {split: build_split(split, N, seed=0) for split in SPLITS}


def _unordered(families: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted(families))


# --- families ---------------------------------------------------------------------------


def test_at_least_20_families_with_4_distinct_phrasings() -> None:
    assert len(list_families()) >= 20
    assert list_families() == list(TASK_FAMILIES)
    templates = [p for fam in TASK_FAMILIES.values() for p in fam.phrasings]
    assert all(len(fam.phrasings) >= 4 for fam in TASK_FAMILIES.values())
    # A held-out wording of one family must not be a trained wording of another.
    assert len(templates) == len(set(templates))


def test_vocabulary_is_short_lowercase_words() -> None:
    assert len(WORDS) == len(set(WORDS)) >= 150
    assert all(w.isalpha() and w.islower() and 2 <= len(w) <= 5 for w in WORDS)
    # remove_vowels must never erase a whole word.
    assert all(any(c not in "aeiou" for c in w) for w in WORDS)


@pytest.mark.parametrize(
    ("family", "text", "param", "expected"),
    [
        ("reverse_words", "the cat sat", None, "sat cat the"),
        ("sort_words", "pear apple fig", None, "apple fig pear"),
        ("sort_desc", "pear apple fig", None, "pear fig apple"),
        ("upper_alternate", "one two three four", None, "ONE two THREE four"),
        ("upper_all", "red hat", None, "RED HAT"),
        ("capitalize", "red hat", None, "Red Hat"),
        ("reverse_letters", "dog star", None, "god rats"),
        ("shift_letters", "abc z", 1, "bcd a"),
        ("shift_letters", "xyz", 3, "abc"),
        ("keep_first_n", "a b c d", 2, "a b"),
        ("keep_last_n", "a b c d", 3, "b c d"),
        ("drop_first_n", "a b c d", 1, "b c d"),
        ("replace_word", "the cat and the dog", ("the", "a"), "a cat and a dog"),
        ("count_words", "one two three four five", None, "5"),
        ("count_letter", "banana apple", "a", "4"),
        ("first_letters", "portable network graphics", None, "png"),
        ("last_letters", "cat dog bee", None, "tge"),
        ("last_word", "cat dog bee", None, "bee"),
        ("duplicate_words", "hi yo", None, "hi hi yo yo"),
        ("remove_vowels", "house tree sky", None, "hs tr sky"),
        ("sort_by_length", "apple ox tea it", None, "ox it tea apple"),
        ("swap_first_last", "one two three", None, "three two one"),
        ("join_with", "a b c", "-", "a-b-c"),
        ("repeat_first", "go home", 3, "go go go"),
        ("rotate_words", "a b c d e", 2, "c d e a b"),
        ("remove_letter", "tea tree", "e", "ta tr"),
        ("word_lengths", "a cat house", None, "1 3 5"),
    ],
)
def test_family_on_hand_computed_example(family: str, text: str, param: object, expected: str) -> None:
    assert get_family(family)(text.split(), param) == expected


def test_letter_families_work_after_upper_casing() -> None:
    # In compositions these run on "HOUSE"-style words; case must be kept, not broken.
    assert get_family("shift_letters")(["Zoo", "ABC"], 1) == "App BCD"
    assert get_family("count_letter")(["BANANA"], "a") == "3"
    assert get_family("remove_vowels")(["HOUSE", "Tree"], None) == "HS Tr"
    assert get_family("sort_words")(["Pear", "apple"], None) == "apple Pear"


def test_every_template_renders_with_every_parameter() -> None:
    for fam in TASK_FAMILIES.values():
        rng = tasks.random.Random(0)
        values = (fam.train_params + fam.heldout_params) or (None,)
        for value in values:
            param = fam.bind(rng, value) if fam.bind else value
            for i in range(len(fam.phrasings)):
                text = fam.render(param, i)
                assert "{" not in text and "}" not in text, (fam.name, text)
                if param is not None:
                    shown = param[1] if isinstance(param, tuple) else str(param)
                    assert shown in text or tasks._NUMBER_WORDS[param] in text, (fam.name, text)


def test_parameter_pools_are_disjoint() -> None:
    parameterised = [fam for fam in TASK_FAMILIES.values() if fam.parameterised]
    assert len(parameterised) >= 8
    for fam in parameterised:
        assert fam.heldout_params and not set(fam.train_params) & set(fam.heldout_params), fam.name


def test_make_task_refuses_bad_arguments() -> None:
    with pytest.raises(KeyError, match="unknown task family"):
        make_task("no_such_family")
    with pytest.raises(ValueError, match="needs a parameter"):
        make_task("shift_letters")
    with pytest.raises(ValueError, match="takes no parameter"):
        make_task("reverse_words", 3)
    with pytest.raises(ValueError, match="phrasings"):
        make_task("reverse_words", phrasing=99)


def test_compose_applies_in_order_and_words_both_steps() -> None:
    first = make_task("keep_first_n", 2, phrasing=0)
    second = make_task("reverse_letters", phrasing=1)
    task = compose_tasks(first, second, connective=0)
    assert task.instruction == "Keep only the first 2 words, then spell every word backwards."
    assert task.family == "keep_first_n+reverse_letters"
    assert task.apply("cat dog sun") == "tac god"
    # Order matters: reverse-then-keep and keep-then-reverse differ.
    assert compose_tasks(make_task("reverse_words"), first).apply("cat dog sun") == "sun dog"
    assert compose_tasks(first, make_task("reverse_words")).apply("cat dog sun") == "dog cat"
    with pytest.raises(ValueError, match="first step"):
        compose_tasks(make_task("count_words"), first)
    assert len(CONNECTIVES) >= 3


def test_make_task_renders_sentence() -> None:
    task = make_task("replace_word", ("cat", "dog"), phrasing=0)
    assert task.instruction == "Replace the word 'cat' with 'dog'."
    assert task.apply("my cat sat") == "my dog sat"


# --- determinism --------------------------------------------------------------------------


def test_same_seed_same_examples_different_seed_different() -> None:
    for split in SPLITS:
        a, b = build_split(split, 200, seed=3), build_split(split, 200, seed=3)
        assert a == b
        c = build_split(split, 200, seed=4)
        assert [e.input for e in a] != [e.input for e in c]
        assert [e.prompt for e in a] != [e.prompt for e in c]


def test_same_examples_and_pairs_in_other_processes_with_other_hash_seeds(tmp_path: Path) -> None:
    # Catches any reliance on hash() or set order, which PYTHONHASHSEED changes.
    code = (
        "import sys; from hyperlora.toy.tasks import build_split, as_records, SPLITS, TRAIN_PAIRS, HELDOUT_PAIRS\n"
        "from hyperlora.data.records import write_jsonl\n"
        "write_jsonl(as_records(e for s in SPLITS for e in build_split(s, 300, seed=7)), sys.argv[1])\n"
        "print(TRAIN_PAIRS, HELDOUT_PAIRS)\n"
    )
    outputs = []
    for hash_seed in ("1", "2"):
        path = tmp_path / f"run{hash_seed}.jsonl"
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        argv = [sys.executable, "-c", code, str(path)]
        run = subprocess.run(argv, check=True, env=env, capture_output=True, text=True)
        assert run.stdout.strip() == f"{TRAIN_PAIRS} {HELDOUT_PAIRS}"
        outputs.append(path.read_text())
    local = tmp_path / "local.jsonl"
    write_jsonl(as_records(e for s in SPLITS for e in build_split(s, 300, seed=7)), local)
    assert outputs[0] == outputs[1] == local.read_text()


# --- splits ---------------------------------------------------------------------------


def test_every_split_gives_n_correct_examples(splits: dict[str, list[tasks.Example]]) -> None:
    for split, examples in splits.items():
        assert len(examples) == N
        assert build_split(split, 0) == [] and len(build_split(split, 7)) == 7
        for e in examples:
            assert e.split == split
            assert e.prompt == e.task.instruction and e.family == e.task.family
            assert e.output == e.task.apply(e.input), e
            assert e.output, e
            assert len(e.input) <= tasks.MAX_INPUT_CHARS
            words = e.input.split()
            assert tasks.MIN_WORDS <= len(words) <= tasks.MAX_WORDS and set(words) <= set(WORDS)


def test_text_fits_the_character_tokenizer(splits: dict[str, list[tasks.Example]]) -> None:
    from hyperlora.toy.tokenizer import CHARACTERS

    for examples in splits.values():
        for e in examples:
            assert set(e.prompt + e.input + e.output) <= set(CHARACTERS), e


def test_unknown_split_and_negative_n_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown split"):
        build_split("test", 10)
    with pytest.raises(ValueError, match="n must be"):
        build_split("train", -1)


def test_train_covers_every_family_and_uses_only_train_choices(splits: dict[str, list[tasks.Example]]) -> None:
    train = splits["train"]
    singles = [e.task for e in train if not e.task.is_composition]
    pairs = [e.task for e in train if e.task.is_composition]
    assert {t.families[0] for t in singles} == set(TASK_FAMILIES)
    assert 0.15 < len(pairs) / len(train) < 0.35
    assert {t.families for t in pairs} <= set(TRAIN_PAIRS)
    for t in singles + pairs:
        for name, param, phrasing in zip(t.families, t.params, t.phrasings):
            fam = TASK_FAMILIES[name]
            assert phrasing in fam.train_phrasings
            value = param[1] if isinstance(param, tuple) else param
            assert value in fam.train_params if fam.parameterised else value is None


def test_heldout_phrasing_prompts_never_in_train(splits: dict[str, list[tasks.Example]]) -> None:
    held = splits["heldout_phrasing"]
    train_prompts = {e.prompt for e in splits["train"]}
    assert {e.family for e in held} == set(TASK_FAMILIES)
    for e in held:
        fam = TASK_FAMILIES[e.family]
        assert e.task.phrasings == fam.heldout_phrasings
        assert e.prompt not in train_prompts
        # Trained parameters: only the wording is new.
        value = e.task.params[0][1] if isinstance(e.task.params[0], tuple) else e.task.params[0]
        assert value in fam.train_params if fam.parameterised else value is None
    # Beyond the samples: no train template of any family equals a held-out one.
    held_templates = {fam.phrasings[i] for fam in TASK_FAMILIES.values() for i in fam.heldout_phrasings}
    train_templates = {fam.phrasings[i] for fam in TASK_FAMILIES.values() for i in fam.train_phrasings}
    assert not held_templates & train_templates


def test_heldout_param_values_never_in_train(splits: dict[str, list[tasks.Example]]) -> None:
    held = splits["heldout_param"]
    seen: dict[str, set[object]] = {}
    for e in splits["train"] + splits["train_unseen_inputs"]:
        for name, param in zip(e.task.families, e.task.params):
            seen.setdefault(name, set()).add(param[1] if isinstance(param, tuple) else param)
    assert {e.family for e in held} == {f.name for f in TASK_FAMILIES.values() if f.parameterised}
    for e in held:
        fam = TASK_FAMILIES[e.family]
        param = e.task.params[0]
        value = param[1] if isinstance(param, tuple) else param
        assert value in fam.heldout_params and value not in seen[e.family], e
        assert e.task.phrasings[0] in fam.train_phrasings
        assert e.prompt not in {t.prompt for t in splits["train"]}


def test_heldout_compose_pairs_never_in_train(splits: dict[str, list[tasks.Example]]) -> None:
    assert HELDOUT_PAIRS and TRAIN_PAIRS
    trained = {_unordered(p) for p in TRAIN_PAIRS}
    assert not trained & {_unordered(p) for p in HELDOUT_PAIRS}
    train_seen = {_unordered(e.task.families) for e in splits["train"] if e.task.is_composition}
    held = splits["heldout_compose"]
    assert all(e.task.is_composition for e in held)
    assert {e.task.families for e in held} == set(HELDOUT_PAIRS)
    for e in held:
        assert _unordered(e.task.families) not in train_seen
        # Each step on its own is a trained family.
        assert all(name in TASK_FAMILIES for name in e.task.families)


def test_pairs_are_well_formed() -> None:
    for a, b in TRAIN_PAIRS + HELDOUT_PAIRS:
        assert a != b and TASK_FAMILIES[a].keeps_words and TASK_FAMILIES[b].plant is None
    # Redundant pairs are left out: sorting twice, or counting words after reordering them.
    assert ("sort_words", "sort_desc") not in TRAIN_PAIRS + HELDOUT_PAIRS
    assert ("reverse_words", "count_words") not in TRAIN_PAIRS + HELDOUT_PAIRS


def test_inputs_come_from_their_side_of_the_partition(splits: dict[str, list[tasks.Example]]) -> None:
    # The disjointness guarantee rests on this, not on seeds happening to differ.
    for split, examples in splits.items():
        assert all(tasks._is_reserved(e.input) == (split != "train") for e in examples), split


def test_train_unseen_inputs_same_instructions_new_inputs(splits: dict[str, list[tasks.Example]]) -> None:
    train, unseen = splits["train"], splits["train_unseen_inputs"]
    assert [e.task for e in unseen] == [e.task for e in train]
    assert not {e.input for e in unseen} & {e.input for e in train}
    # The partition holds for any seed: a train set from another seed still never overlaps.
    other_train = build_split("train", N, seed=11)
    assert not {e.input for e in unseen} & {e.input for e in other_train}
    # And no evaluation split reuses a train input.
    for split in ("heldout_phrasing", "heldout_param", "heldout_compose"):
        assert not {e.input for e in splits[split]} & {e.input for e in train}


# --- files ----------------------------------------------------------------------------


def test_write_jsonl_round_trips_without_leftovers(tmp_path: Path) -> None:
    examples = build_split("heldout_compose", 50, seed=2)
    path = tmp_path / "sub" / "data.jsonl"
    path.parent.mkdir()
    path.write_text("old content\n")
    write_jsonl(as_records(examples), path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == [{"prompt": e.prompt, "input": e.input, "output": e.output} for e in examples]
    assert sorted(p.name for p in path.parent.iterdir()) == ["data.jsonl"]
