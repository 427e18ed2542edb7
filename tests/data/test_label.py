"""Teacher labels: cached per teacher, record and settings; saved batch by batch, so a kill loses at most one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import hyperlora.data.label as label_module
from hyperlora.data.format import prefix_ids
from hyperlora.data.label import label_missing, read_cache
from hyperlora.data.records import Record
from hyperlora.decoding import greedy_decode
from hyperlora.toy.models import tiny_model

TOKENS = 4  # new tokens per label: enough to tell two random teachers apart, fast on a CPU
RECORDS = [Record(f"Task {i}: repeat the input.", f"word{i}") for i in range(6)]


@pytest.fixture(scope="module")
def teachers():
    return tiny_model("llama", seed=0), tiny_model("llama", seed=1)


class CountingDecode:
    """``greedy_decode`` that counts the rows it decodes, and raises at batch ``fail_at`` (a kill, simulated)."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.rows, self.batches, self.fail_at = 0, 0, fail_at

    def __call__(self, model, tokenizer, prefixes, max_new_tokens, context=None):
        if self.batches == self.fail_at:
            raise KeyboardInterrupt("killed while labelling")
        self.batches += 1
        self.rows += len(prefixes)
        return greedy_decode(model, tokenizer, prefixes, max_new_tokens, context)


def _expected(teacher, tok, records=RECORDS, tokens=TOKENS) -> list[str]:
    return greedy_decode(teacher, tok, [prefix_ids(tok, r.prompt, r.input) for r in records], tokens)


def test_labels_are_the_teachers_greedy_answers_and_are_cached(teachers, tok, tmp_path: Path, monkeypatch) -> None:
    cache = tmp_path / "teacher_outputs.jsonl"
    decode = CountingDecode()
    monkeypatch.setattr(label_module, "greedy_decode", decode)
    done = [Record("given", "x", "kept"), *RECORDS]
    labelled = label_missing(done, teachers[0], tok, cache, max_new_tokens=TOKENS, batch_size=4)
    assert labelled[0].output == "kept"  # a record with an output is never relabelled
    assert [r.output for r in labelled[1:]] == _expected(teachers[0], tok)
    assert decode.rows == len(RECORDS) and len(read_cache(cache)) == len(RECORDS)
    again = label_missing(done, teachers[0], tok, cache, max_new_tokens=TOKENS, batch_size=4)
    assert again == labelled and decode.rows == len(RECORDS)  # nothing decoded twice


def test_another_teacher_relabels(teachers, tok, tmp_path: Path, monkeypatch) -> None:
    cache = tmp_path / "teacher_outputs.jsonl"
    first, second = teachers
    a = label_missing(RECORDS, first, tok, cache, max_new_tokens=TOKENS)
    assert [r.output for r in a] == _expected(first, tok)
    decode = CountingDecode()
    monkeypatch.setattr(label_module, "greedy_decode", decode)
    b = label_missing(RECORDS, second, tok, cache, max_new_tokens=TOKENS)
    assert decode.rows == len(RECORDS)  # the other teacher's labels are not reused
    assert [r.output for r in b] == _expected(second, tok) != [r.output for r in a]
    # Both stay cached: going back to the first teacher decodes nothing.
    assert label_missing(RECORDS, first, tok, cache, max_new_tokens=TOKENS) == a
    assert decode.rows == len(RECORDS)


def test_other_settings_relabel(teachers, tok, tmp_path: Path, monkeypatch) -> None:
    cache = tmp_path / "teacher_outputs.jsonl"
    label_missing(RECORDS, teachers[0], tok, cache, max_new_tokens=TOKENS)
    decode = CountingDecode()
    monkeypatch.setattr(label_module, "greedy_decode", decode)
    longer = label_missing(RECORDS, teachers[0], tok, cache, max_new_tokens=TOKENS + 2)
    assert decode.rows == len(RECORDS)
    assert [r.output for r in longer] == _expected(teachers[0], tok, tokens=TOKENS + 2)


def test_a_kill_during_labelling_keeps_the_finished_batches(teachers, tok, tmp_path: Path, monkeypatch) -> None:
    cache = tmp_path / "teacher_outputs.jsonl"
    monkeypatch.setattr(label_module, "greedy_decode", CountingDecode(fail_at=2))
    with pytest.raises(KeyboardInterrupt):
        label_missing(RECORDS, teachers[0], tok, cache, max_new_tokens=TOKENS, batch_size=2)
    assert len(read_cache(cache)) == 4  # two batches of two were on disk before the third one died
    decode = CountingDecode()
    monkeypatch.setattr(label_module, "greedy_decode", decode)
    labelled = label_missing(RECORDS, teachers[0], tok, cache, max_new_tokens=TOKENS, batch_size=2)
    assert decode.rows == 2  # only the batch in flight is decoded again
    assert [r.output for r in labelled] == _expected(teachers[0], tok)


def test_a_line_cut_by_a_kill_is_ignored_and_cut_before_the_next_append(teachers, tok, tmp_path: Path,
                                                                        monkeypatch) -> None:
    cache = tmp_path / "teacher_outputs.jsonl"
    label_missing(RECORDS[:3], teachers[0], tok, cache, max_new_tokens=TOKENS)
    with cache.open("a") as handle:
        handle.write('{"key": "0123abc", "outp')  # a kill in the middle of an append
    assert len(read_cache(cache)) == 3
    decode = CountingDecode()
    monkeypatch.setattr(label_module, "greedy_decode", decode)
    labelled = label_missing(RECORDS, teachers[0], tok, cache, max_new_tokens=TOKENS)
    assert decode.rows == 3 and [r.output for r in labelled] == _expected(teachers[0], tok)
    lines = cache.read_text().splitlines()
    assert len(lines) == 6 and all(json.loads(line)["key"] for line in lines)  # every line whole again
