"""Teacher labels: cached per teacher, record and settings; saved batch by batch, so a kill loses at most one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import hyperlora.data.label as label_module
from hyperlora.data.format import prefix_ids
from hyperlora.data.label import label_missing, read_cache
from hyperlora.data.records import Record
from hyperlora.decoding import decode_batch, greedy_decode
from hyperlora.toy.models import tiny_model

TOKENS = 4  # new tokens per label: enough to tell two random teachers apart, fast on a CPU
RECORDS = [Record(f"Task {i}: repeat the input.", f"word{i}") for i in range(6)]


@pytest.fixture(scope="module")
def teachers():
    return tiny_model("llama", seed=0), tiny_model("llama", seed=1)


class CountingDecode:
    """``decode_batch`` that counts the rows it decodes, and raises at batch ``fail_at`` (a kill, simulated)."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.rows, self.batches, self.fail_at = 0, 0, fail_at

    def __call__(self, model, tokenizer, prefixes, max_new_tokens, context=None, **options):
        if self.batches == self.fail_at:
            raise KeyboardInterrupt("killed while labelling")
        self.batches += 1
        self.rows += len(prefixes)
        return decode_batch(model, tokenizer, prefixes, max_new_tokens, context, **options)


def _expected(teacher, tok, records=RECORDS, tokens=TOKENS) -> list[str]:
    return greedy_decode(teacher, tok, [prefix_ids(tok, r.prompt, r.input) for r in records], tokens)


def test_labels_are_the_teachers_greedy_answers_and_are_cached(teachers, tok, tmp_path: Path, monkeypatch) -> None:
    cache = tmp_path / "teacher_outputs.jsonl"
    decode = CountingDecode()
    monkeypatch.setattr(label_module, "decode_batch", decode)
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
    monkeypatch.setattr(label_module, "decode_batch", decode)
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
    monkeypatch.setattr(label_module, "decode_batch", decode)
    longer = label_missing(RECORDS, teachers[0], tok, cache, max_new_tokens=TOKENS + 2)
    assert decode.rows == len(RECORDS)
    assert [r.output for r in longer] == _expected(teachers[0], tok, tokens=TOKENS + 2)


def test_a_kill_during_labelling_keeps_the_finished_batches(teachers, tok, tmp_path: Path, monkeypatch) -> None:
    cache = tmp_path / "teacher_outputs.jsonl"
    monkeypatch.setattr(label_module, "decode_batch", CountingDecode(fail_at=2))
    with pytest.raises(KeyboardInterrupt):
        label_missing(RECORDS, teachers[0], tok, cache, max_new_tokens=TOKENS, batch_size=2)
    assert len(read_cache(cache)) == 4  # two batches of two were on disk before the third one died
    decode = CountingDecode()
    monkeypatch.setattr(label_module, "decode_batch", decode)
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
    monkeypatch.setattr(label_module, "decode_batch", decode)
    labelled = label_missing(RECORDS, teachers[0], tok, cache, max_new_tokens=TOKENS)
    assert decode.rows == 3 and [r.output for r in labelled] == _expected(teachers[0], tok)
    lines = cache.read_text().splitlines()
    assert len(lines) == 6 and all(json.loads(line)["key"] for line in lines)  # every line whole again


# -- issue 15: cut labels, labelling options, sampling with a seed per record ---------------------------------------


def _teacher_that_always_says(token_id: int):
    """A tiny llama whose head always prefers ``token_id`` (EOS: it stops at once; a letter: it never stops)."""
    from model_helpers import always_says

    return always_says(tiny_model("llama"), token_id)


def test_a_label_cut_at_the_limit_gets_no_end_token(tok, tmp_path: Path) -> None:
    from hyperlora.data.collate import DistillCollator

    cache = tmp_path / "teacher_outputs.jsonl"
    never_stops = _teacher_that_always_says(tok.convert_tokens_to_ids("a"))
    cut = label_missing(RECORDS[:2], never_stops, tok, cache, max_new_tokens=TOKENS, progress=False)
    assert [(r.output, r.complete) for r in cut] == [("a" * TOKENS, False)] * 2
    assert [json.loads(line)["finished"] for line in cache.read_text().splitlines()] == [False, False]
    batch = DistillCollator(tok, max_length=128)(cut)
    assert tok.eos_token_id not in batch["labels"].tolist()
    assert batch["labels"].tolist() == tok("a" * TOKENS, add_special_tokens=False)["input_ids"] * 2
    for who in ("teacher", "student"):
        assert int(batch[f"{who}_loss_mask"].sum()) == 2 * TOKENS  # the loss covers the cut text, no end token
    # Read back from the cache, the flag survives.
    assert label_missing(RECORDS[:2], never_stops, tok, cache, max_new_tokens=TOKENS, progress=False) == cut

    stops = _teacher_that_always_says(tok.eos_token_id)
    done = label_missing(RECORDS[:2], stops, tok, cache, max_new_tokens=TOKENS, progress=False)
    assert [(r.output, r.complete) for r in done] == [("", True)] * 2
    batch = DistillCollator(tok, max_length=128)(done)
    assert batch["labels"].tolist() == [tok.eos_token_id] * 2  # the stop is what it learns
    assert int(batch["teacher_loss_mask"].sum()) == 2


# The prompt layout changes the prefix, which is in the key (test_format checks the prefixes of both layouts).
@pytest.mark.parametrize("change", [dict(do_sample=True), dict(repetition_penalty=1.3),
                                    dict(max_new_tokens=TOKENS + 1)])
def test_every_labelling_setting_is_in_the_key(change, teachers, tok, tmp_path: Path, monkeypatch) -> None:
    cache = tmp_path / "teacher_outputs.jsonl"
    base = dict(max_new_tokens=TOKENS, progress=False)
    label_missing(RECORDS, teachers[0], tok, cache, **base)
    decode = CountingDecode()
    monkeypatch.setattr(label_module, "decode_batch", decode)
    label_missing(RECORDS, teachers[0], tok, cache, **{**base, **change})
    assert decode.rows == len(RECORDS)


def test_sampling_settings_are_in_the_key_and_greedy_ignores_them(teachers, tok, tmp_path: Path, monkeypatch) -> None:
    cache = tmp_path / "teacher_outputs.jsonl"
    sampled = dict(max_new_tokens=TOKENS, progress=False, do_sample=True)
    label_missing(RECORDS, teachers[0], tok, cache, **sampled)
    decode = CountingDecode()
    monkeypatch.setattr(label_module, "decode_batch", decode)
    for change in (dict(temperature=0.7), dict(top_p=0.9), dict(seed=1)):
        before = decode.rows
        label_missing(RECORDS, teachers[0], tok, cache, **sampled, **change)
        assert decode.rows == before + len(RECORDS), change
    label_missing(RECORDS, teachers[0], tok, cache, max_new_tokens=TOKENS, progress=False)
    before = decode.rows
    # Greedy: temperature, top-p and seed change nothing, so they relabel nothing.
    label_missing(RECORDS, teachers[0], tok, cache, max_new_tokens=TOKENS, progress=False, temperature=0.5, seed=3)
    assert decode.rows == before


def test_sampled_labels_are_fixed_per_record_whatever_the_batch_and_a_resume(teachers, tok, tmp_path: Path,
                                                                              monkeypatch) -> None:
    options = dict(max_new_tokens=TOKENS, progress=False, do_sample=True, temperature=1.5)
    whole = label_missing(RECORDS, teachers[0], tok, tmp_path / "a.jsonl", batch_size=6, **options)
    monkeypatch.setattr(label_module, "decode_batch", CountingDecode(fail_at=1))
    with pytest.raises(KeyboardInterrupt):
        label_missing(RECORDS, teachers[0], tok, tmp_path / "b.jsonl", batch_size=4, **options)
    monkeypatch.setattr(label_module, "decode_batch", CountingDecode())
    resumed = label_missing(RECORDS[::-1], teachers[0], tok, tmp_path / "b.jsonl", batch_size=1, **options)
    assert resumed[::-1] == whole  # other batches, another order, a kill in between: the same labels
    greedy = label_missing(RECORDS, teachers[0], tok, tmp_path / "c.jsonl", batch_size=6, max_new_tokens=TOKENS,
                           progress=False)
    reseeded = label_missing(RECORDS, teachers[0], tok, tmp_path / "c.jsonl", batch_size=6, seed=1, **options)
    assert [r.output for r in whole] != [r.output for r in greedy]
    assert [r.output for r in whole] != [r.output for r in reseeded]


def test_progress_bar_can_be_turned_off(teachers, tok, tmp_path: Path, capsys) -> None:
    label_missing(RECORDS[:2], teachers[0], tok, tmp_path / "a.jsonl", max_new_tokens=TOKENS, progress=True)
    assert "label" in capsys.readouterr().err
    label_missing(RECORDS[:2], teachers[0], tok, tmp_path / "b.jsonl", max_new_tokens=TOKENS, progress=False)
    assert capsys.readouterr().err == ""


def test_data_config_passes_every_labelling_option(teachers, tok, tmp_path: Path, monkeypatch) -> None:
    import inspect

    from hyperlora.train_config import DataConfig

    config = DataConfig(label_max_new_tokens=TOKENS, label_do_sample=True, label_temperature=0.8, label_top_p=0.9,
                        label_repetition_penalty=1.1, label_seed=7, label_batch_size=2, label_progress=False)
    options = config.label_options()
    assert set(options) <= set(inspect.signature(label_missing).parameters)
    decode = CountingDecode()
    monkeypatch.setattr(label_module, "decode_batch", decode)
    label_missing(RECORDS, teachers[0], tok, tmp_path / "a.jsonl", **options)
    assert decode.rows == len(RECORDS) and decode.batches == 3  # label_batch_size
    for bad in (dict(label_max_new_tokens=0), dict(label_temperature=0.0), dict(label_top_p=1.5),
                dict(label_repetition_penalty=0.0), dict(label_seed=-1), dict(label_batch_size=0),
                dict(prompt_layout="assistant")):
        with pytest.raises(ValueError, match=next(iter(bad))):
            DataConfig(**bad)


# -- data.label_cache: one cache file shared by several runs ------------------------------------------------------


FOREIGN = {
    "text": b"hello\n",
    "a dataset line": b'{"prompt": "p", "input": "i", "output": "o"}\n',
    "a JSON list": b"[1, 2, 3]\n",
    "no newline": b"hello",
}


@pytest.mark.parametrize("content", FOREIGN.values(), ids=FOREIGN.keys())
def test_a_foreign_file_is_refused_and_left_untouched(content: bytes, tmp_path: Path) -> None:
    from hyperlora.data.label import check_cache_file

    path = tmp_path / "notes.txt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="not a hyperlora label cache"):
        check_cache_file(path)
    assert path.read_bytes() == content


def test_a_folder_is_refused(tmp_path: Path) -> None:
    from hyperlora.data.label import check_cache_file

    with pytest.raises(ValueError, match="is a folder"):
        check_cache_file(tmp_path)


def test_a_missing_an_empty_and_a_real_cache_are_accepted(teachers, tok, tmp_path: Path) -> None:
    from hyperlora.data.label import check_cache_file

    missing = tmp_path / "sub" / "labels.jsonl"
    assert check_cache_file(str(missing)) == missing and not missing.exists()  # nothing is created by the check
    empty = tmp_path / "empty.jsonl"
    empty.touch()
    assert check_cache_file(empty) == empty
    real = tmp_path / "real.jsonl"
    label_missing(RECORDS[:2], teachers[0], tok, real, max_new_tokens=TOKENS, progress=False)
    before = real.read_bytes()
    assert check_cache_file(real) == real and real.read_bytes() == before
    # A first append cut by a kill (no newline yet) is still ours; labelling then cuts the partial line.
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(before.splitlines(keepends=True)[0][:30])
    assert check_cache_file(cut) == cut
    label_missing(RECORDS[:2], teachers[0], tok, cut, max_new_tokens=TOKENS, progress=False)
    assert cut.read_bytes() == before


def _jsonl_data(tmp_path: Path, cache: Path | None):
    from hyperlora.data.records import write_jsonl
    from hyperlora.train_config import DataConfig

    write_jsonl(RECORDS[:4], tmp_path / "train.jsonl")
    write_jsonl(RECORDS[4:], tmp_path / "eval.jsonl")
    return DataConfig(source="jsonl", train=str(tmp_path / "train.jsonl"), eval={"held": str(tmp_path / "eval.jsonl")},
                      label_max_new_tokens=TOKENS, label_progress=False,
                      label_cache=None if cache is None else str(cache))


def test_two_runs_share_one_label_cache(teachers, tok, tmp_path: Path, monkeypatch) -> None:
    from hyperlora.train import LABEL_CACHE, load_data

    shared = tmp_path / "shared" / "labels.jsonl"
    data = _jsonl_data(tmp_path, shared)
    decode = CountingDecode()
    monkeypatch.setattr(label_module, "decode_batch", decode)
    run_a, run_b = tmp_path / "run_a", tmp_path / "run_b"
    train_a, evals_a = load_data(data, teachers[0], tok, run_a)
    assert decode.rows == len(RECORDS)
    assert [r.output for r in train_a + evals_a["held"]] == _expected(teachers[0], tok)
    assert len(read_cache(shared)) == len(RECORDS)

    monkeypatch.setattr(label_module, "decode_batch", lambda *a, **k: pytest.fail("decoded again"))
    train_b, evals_b = load_data(data, teachers[0], tok, run_b)
    assert (train_b, evals_b) == (train_a, evals_a)
    assert not (run_a / LABEL_CACHE).exists() and not (run_b / LABEL_CACHE).exists()
    assert len(read_cache(shared)) == len(RECORDS)  # nothing appended the second time

    # Without data.label_cache, the run's own folder holds the labels (and the shared file is not read).
    monkeypatch.setattr(label_module, "decode_batch", decode)
    load_data(_jsonl_data(tmp_path, None), teachers[0], tok, run_b)
    assert decode.rows == 2 * len(RECORDS) and len(read_cache(run_b / LABEL_CACHE)) == len(RECORDS)


def test_load_data_refuses_a_foreign_label_cache_before_decoding(teachers, tok, tmp_path: Path, monkeypatch) -> None:
    from hyperlora.train import load_data

    foreign = tmp_path / "notes.txt"
    foreign.write_bytes(b"hello\n")
    monkeypatch.setattr(label_module, "decode_batch", lambda *a, **k: pytest.fail("decoded"))
    with pytest.raises(ValueError, match="not a hyperlora label cache"):
        load_data(_jsonl_data(tmp_path, foreign), teachers[0], tok, tmp_path / "run")
    assert foreign.read_bytes() == b"hello\n"


def test_a_resume_may_change_the_label_cache() -> None:
    import dataclasses

    from hyperlora.resume_policy import changed_keys, run_identity
    from hyperlora.train_config import TrainConfig

    before = dataclasses.asdict(TrainConfig())
    shared = {**before, "data": {**before["data"], "label_cache": "/elsewhere/labels.jsonl"}}
    assert before["data"]["label_cache"] is None
    assert changed_keys(before, shared) == [] and changed_keys(shared, before) == []
    assert run_identity(before) == run_identity(shared)
    # A labelling setting still makes another run (the check is not blind to data.*).
    other = {**before, "data": {**before["data"], "label_max_new_tokens": 7}}
    assert changed_keys(before, other) == ["data.label_max_new_tokens"]
