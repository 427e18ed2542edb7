"""The distillation collator (teacher/student alignment), the text format and the JSONL records."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from hyperlora.data.collate import DistillCollator
from hyperlora.data.format import prefix_ids, prefix_text, response_ids
from hyperlora.data.records import Record, RecordError, read_jsonl, write_jsonl
from hyperlora.toy.tokenizer import char_tokenizer

RECORDS = [
    Record("Reverse the order of the words.", "cat dog sun", "sun dog cat"),
    Record("Write it in capitals.", "hi", "HI"),
]


@pytest.fixture(params=["chat", "plain"])
def tokenizer(request):
    tok = char_tokenizer()
    if request.param == "plain":
        tok.chat_template = None
    return tok


def _expected_response(tok, text: str) -> list[int]:
    # Independent of hyperlora.data.format: the tokenizer's own ids, then EOS.
    return tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


def test_labels_are_the_response_ids_selected_by_both_masks(tokenizer):
    batch = DistillCollator(tokenizer, max_length=128)(RECORDS)
    expected = sum((_expected_response(tokenizer, r.output) for r in RECORDS), [])
    assert batch["labels"].tolist() == expected
    for who in ("teacher", "student"):
        ids, mask = batch[f"{who}_input_ids"], batch[f"{who}_loss_mask"]
        # Position t predicts token t+1: the masked positions' next tokens are the labels, in order.
        assert torch.equal(ids[:, 1:][mask[:, :-1]], batch["labels"]), who
        assert not mask[:, -1].any()
        assert mask.sum().item() == len(expected)
    # Row by row too: each row's selected next tokens are exactly its own response.
    for i, record in enumerate(RECORDS):
        for who in ("teacher", "student"):
            ids, mask = batch[f"{who}_input_ids"][i], batch[f"{who}_loss_mask"][i]
            assert ids[1:][mask[:-1]].tolist() == _expected_response(tokenizer, record.output)
    assert batch["prompts"] == [r.prompt for r in RECORDS]


def test_teacher_sees_the_prompt_and_the_student_does_not(tokenizer):
    batch = DistillCollator(tokenizer, max_length=128)(RECORDS)
    for i, record in enumerate(RECORDS):
        n_t = int(batch["teacher_attention_mask"][i].sum())
        n_s = int(batch["student_attention_mask"][i].sum())
        teacher_text = tokenizer.decode(batch["teacher_input_ids"][i, :n_t], skip_special_tokens=True)
        student_text = tokenizer.decode(batch["student_input_ids"][i, :n_s], skip_special_tokens=True)
        assert record.prompt in teacher_text and record.input in teacher_text
        assert record.prompt not in student_text and record.input in student_text
        assert teacher_text.endswith(record.output) and student_text.endswith(record.output)
        # The teacher's sequence is the student's plus the prompt (and its separator).
        assert n_t > n_s + len(record.prompt) - 1


def test_plain_format_without_chat_template():
    tok = char_tokenizer()
    tok.chat_template = None
    assert prefix_text(tok, "Do it.", "abc") == "Do it.\n\nabc\n"
    assert prefix_text(tok, None, "abc") == "abc\n"
    batch = DistillCollator(tok, max_length=128)(RECORDS[:1])
    r = RECORDS[0]
    assert tok.decode(batch["teacher_input_ids"][0]) == f"{r.prompt}\n\n{r.input}\n{r.output}</s>"
    assert tok.decode(batch["student_input_ids"][0]) == f"{r.input}\n{r.output}</s>"


def test_chat_format_uses_the_template():
    tok = char_tokenizer()
    expected = tok.apply_chat_template([{"role": "user", "content": "Do it.\n\nabc"}], tokenize=False,
                                       add_generation_prompt=True)
    assert prefix_text(tok, "Do it.", "abc") == expected
    assert prefix_ids(tok, "Do it.", "abc") == tok(expected, add_special_tokens=False)["input_ids"]
    assert response_ids(tok, "ok") == _expected_response(tok, "ok")


def test_right_padding_with_pad_id_and_zero_attention(tokenizer):
    batch = DistillCollator(tokenizer, max_length=128)(RECORDS)
    pad = tokenizer.pad_token_id
    for who in ("teacher", "student"):
        ids, attn, loss = batch[f"{who}_input_ids"], batch[f"{who}_attention_mask"], batch[f"{who}_loss_mask"]
        lengths = attn.sum(1)
        assert lengths[0] != lengths[1], "the two rows must differ in length for this test"
        assert ids.shape[1] == int(lengths.max())
        for i in range(2):
            n = int(lengths[i])
            assert attn[i, :n].eq(1).all() and attn[i, n:].eq(0).all()  # right padding
            assert ids[i, n:].eq(pad).all()
            assert not loss[i, n:].any()
            assert ids[i, n - 1].item() == tokenizer.eos_token_id  # last real token is EOS
        assert ids.dtype == torch.long and loss.dtype == torch.bool


def test_record_without_output_raises():
    collator = DistillCollator(char_tokenizer(), max_length=128)
    with pytest.raises(ValueError, match="Record 1 has no output"):
        collator([RECORDS[0], Record("Do it.", "abc", None)])


def test_over_max_length_raises_naming_the_limit():
    tok = char_tokenizer()
    long = Record("Repeat.", "word " * 10, "word " * 10)
    DistillCollator(tok, max_length=128)([long])  # fits
    with pytest.raises(ValueError, match="max_length=40"):
        DistillCollator(tok, max_length=40)([long])
    # The teacher row is the longer one; a limit between the two still refuses it.
    batch = DistillCollator(tok, max_length=128)([long])
    n_student = int(batch["student_attention_mask"].sum())
    n_teacher = int(batch["teacher_attention_mask"].sum())
    with pytest.raises(ValueError, match=f"teacher row 0 is {n_teacher} tokens"):
        DistillCollator(tok, max_length=n_student)([long])


# -- records -----------------------------------------------------------------------


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GOOD = [
    json.dumps({"prompt": "Sort.", "input": "b a", "output": "a b"}),
    json.dumps({"prompt": "Upper.", "input": "x"}),
]


@pytest.mark.parametrize(
    "bad, message",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"prompt": "Sort."}), "'input' is missing"),
        (json.dumps({"input": "a"}), "'prompt' is missing"),
        (json.dumps({"prompt": "Sort.", "input": "a", "output": 3}), "'output' must be a string"),
        (json.dumps({"prompt": "  ", "input": "a"}), "'prompt' is empty"),
        (json.dumps(["Sort.", "a"]), "expected a JSON object"),
    ],
)
def test_read_jsonl_names_file_and_line(tmp_path, bad, message):
    path = _write(tmp_path / "data.jsonl", GOOD + [bad])
    with pytest.raises(RecordError, match=message) as info:
        read_jsonl(path)
    assert f"{path}:3" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_blank_lines_keep_line_numbers(tmp_path):
    path = _write(tmp_path / "data.jsonl", [GOOD[0], "", "   ", "{oops"])
    with pytest.raises(RecordError, match=r"data\.jsonl:4"):
        read_jsonl(path)


def test_skip_warns_and_returns_the_good_lines(tmp_path):
    path = _write(tmp_path / "data.jsonl", [GOOD[0], "{bad", GOOD[1], json.dumps({"prompt": "", "input": "a"})])
    with pytest.warns(UserWarning) as caught:
        records = read_jsonl(path, on_error="skip")
    assert records == [Record("Sort.", "b a", "a b"), Record("Upper.", "x", None)]
    messages = [str(w.message) for w in caught]
    assert any(f"{path}:2" in m for m in messages) and any(f"{path}:4" in m for m in messages)
    with pytest.raises(ValueError, match="on_error"):
        read_jsonl(path, on_error="ignore")


def test_only_bad_lines_is_an_error_even_when_skipping(tmp_path):
    path = _write(tmp_path / "data.jsonl", ["{bad"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="no usable records"):
            read_jsonl(path, on_error="skip")


def test_write_jsonl_round_trips(tmp_path):
    records = [Record("Sort.", "b a", "a b"), Record("Ünïcode ✓", "x\ny", None), Record("Q", "", "")]
    path = tmp_path / "sub" / "out.jsonl"
    write_jsonl(records, path)
    assert read_jsonl(path) == records
    lines = path.read_text(encoding="utf-8").splitlines()
    assert "output" not in json.loads(lines[1])  # None is left out, not written as null
    assert "Ünïcode ✓" in lines[1]
    assert not [p for p in path.parent.iterdir() if p.name != "out.jsonl"]  # no temporary file left


def test_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_jsonl(tmp_path / "nope.jsonl")


# -- issue 14: a bad byte costs its line, a truncated line is placed where it ends --------------------------------


def test_invalid_utf8_is_reported_per_line(tmp_path):
    from hyperlora.data.records import scan_jsonl

    path = tmp_path / "data.jsonl"
    path.write_bytes(b"\n".join([GOOD[0].encode(), b'{"prompt": "Sort.", "input": "\xff"}', GOOD[1].encode()]) + b"\n")
    records, errors = scan_jsonl(path)
    assert [r.prompt for r in records] == ["Sort.", "Upper."]  # the good lines on either side survive
    assert errors == [f"{path}:2: not valid UTF-8 (byte 0xff at column 31); save the file as UTF-8."]
    with pytest.raises(RecordError, match=r"data\.jsonl:2: not valid UTF-8"):
        read_jsonl(path)  # training stops on it too, by line, before any work


@pytest.mark.parametrize("line_end", ["\n", "\r\n", ""])
def test_truncated_line_is_reported_at_its_real_column(tmp_path, line_end):
    path = tmp_path / "data.jsonl"
    path.write_bytes((GOOD[0] + "\n" + '{"prompt": "Sort.", "input": "b a"' + line_end).encode())
    with pytest.raises(RecordError) as info:
        read_jsonl(path)
    message = str(info.value)
    assert f"{path}:2: not valid JSON" in message and "column 35" in message and "truncated" in message
    assert "column 1)" not in message


def test_bom_and_crlf_are_not_errors(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + (GOOD[0] + "\r\n" + GOOD[1] + "\r\n").encode())
    assert [r.prompt for r in read_jsonl(path)] == ["Sort.", "Upper."]


def test_a_folder_is_not_a_missing_file(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a folder"):
        read_jsonl(tmp_path)


# -- issue 15: a label cut at its length limit gets no end token; Record.complete round-trips through JSONL ----------


def test_an_incomplete_response_gets_no_end_token(tokenizer):
    cut = Record(RECORDS[0].prompt, RECORDS[0].input, RECORDS[0].output, complete=False)
    batch = DistillCollator(tokenizer, max_length=128)([cut, RECORDS[1]])
    text = tokenizer(cut.output, add_special_tokens=False)["input_ids"]
    assert batch["labels"].tolist() == text + _expected_response(tokenizer, RECORDS[1].output)
    for who in ("teacher", "student"):
        ids, mask = batch[f"{who}_input_ids"], batch[f"{who}_loss_mask"]
        assert ids[0, 1:][mask[0, :-1]].tolist() == text  # nothing after the cut text is learnt
        assert tokenizer.eos_token_id not in ids[0].tolist()
        assert int(mask[0].sum()) == len(text)


def test_write_jsonl_keeps_an_incomplete_flag_and_leaves_the_default_out(tmp_path):
    path = tmp_path / "out.jsonl"
    write_jsonl([Record("Sort.", "b a", "a", complete=False), Record("Sort.", "b a", "a b")], path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == [{"prompt": "Sort.", "input": "b a", "output": "a", "complete": False},
                    {"prompt": "Sort.", "input": "b a", "output": "a b"}]


def test_complete_round_trips_through_jsonl_and_is_checked(tmp_path):
    from hyperlora.data.records import RecordError, parse_record

    records = [Record("P", "x", "cut sho", complete=False), Record("P", "y", "done")]
    path = tmp_path / "r.jsonl"
    write_jsonl(records, path)
    assert read_jsonl(path) == records
    with pytest.raises(RecordError, match="r.jsonl:3: field 'complete' must be true or false"):
        parse_record('{"prompt": "P", "input": "x", "complete": "no"}', "r.jsonl:3")
