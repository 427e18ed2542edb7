"""Verified targets a student can finish, and the weight of what a rewrite changed.

- ``cut_points`` / ``fit_rewrite``: a bare answer cut at its length limit loses its unfinished end; a
  rewrite longer than ``max_tokens`` is made from a shorter cut of the answer (sentences first, words last);
- ``verified_targets`` on a real (tiny) model: every target fits, passes its verifiers and keeps its source;
- ``edited_tokens`` and the collator's ``edited_mask``: the tokens a rewrite inserted or replaced;
- the weighted cross-entropy against ``F.cross_entropy`` with per-token weights;
- the settings: ``data.verified_max_tokens`` and ``distill.edit_weight``, and ``rewritten_from`` in JSONL.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from bpe_fixture import bpe_model, bpe_tokenizer

from hyperlora.data.collate import DistillCollator, edited_tokens
from hyperlora.data.format import response_ids
from hyperlora.data.records import Record, read_jsonl, write_jsonl
from hyperlora.data.verified import cut_points, fit_rewrite, verified_targets
from hyperlora.distill.config import DistillConfig
from hyperlora.distill.losses import cross_entropy_loss, distillation_loss
from hyperlora.instruct import build_split
from hyperlora.train_config import DataConfig


def words(text: str) -> int:  # a stand-in token count: one token per word
    return len(text.split())


def end_with(phrase: str):
    return (lambda a: f"{a}\n\n{phrase}"), (lambda a: a.endswith(phrase))


ANSWER = "Tea is a drink. It comes from leaves. People brew it hot and some drink it with milk"


def test_cut_points_of_a_cut_answer_never_keep_its_unfinished_end():
    # sentences first (longest first), then the words of the rest
    complete = cut_points(ANSWER, complete=True)
    assert complete[:3] == [len(ANSWER), ANSWER.index("leaves.") + 7, ANSWER.index("drink.") + 6]
    cut = cut_points(ANSWER, complete=False)
    assert len(ANSWER) not in cut
    assert cut[:2] == [ANSWER.index("leaves.") + 7, ANSWER.index("drink.") + 6]
    assert ANSWER.index(" with") in cut  # a word end, for answers without enough sentences
    assert cut_points("one two", complete=False) == [3]  # the last word may be cut mid-word: it goes
    assert cut_points("\n\n", complete=True) == []
    # A cut never leaves a list marker alone on the last line (the splitter reads "2." as a sentence end).
    listed = "Keep it cool.\n\n1. Water it.\n\n2. Give it light"
    kept = list(dict.fromkeys(listed[:c].rstrip() for c in cut_points(listed, complete=False)))
    assert kept[:2] == ["Keep it cool.\n\n1. Water it.", "Keep it cool."]
    assert not any(k.endswith(("1.", "2.")) for k in kept)


def test_fit_rewrite_cuts_the_source_until_the_rewrite_fits():
    rewrite, check = end_with("Thank you.")
    # No limit: the whole answer when it was complete, its finished sentences when it was cut.
    assert fit_rewrite(ANSWER, True, rewrite, check, words, None) == (ANSWER, rewrite(ANSWER))
    source, text = fit_rewrite(ANSWER, False, rewrite, check, words, None)
    assert source == "Tea is a drink. It comes from leaves." and text == rewrite(source)
    # A limit: the longest cut whose rewrite fits (the rewrite adds two words).
    source, text = fit_rewrite(ANSWER, True, rewrite, check, words, 6)
    assert source == "Tea is a drink." and words(text) == 6
    # Only a word cut fits: taken when no sentence does.
    source, _ = fit_rewrite(ANSWER, True, rewrite, check, words, 4)
    assert source == "Tea is"
    assert fit_rewrite(ANSWER, True, rewrite, check, words, 2) is None  # the phrase alone is too long
    # A rewrite that fails its check is never returned, however it fits.
    assert fit_rewrite(ANSWER, True, rewrite, lambda a: False, words, None) is None


def test_verified_targets_fit_the_limit_pass_and_keep_their_source(tmp_path):
    tok = bpe_tokenizer()
    model = bpe_model(tok)
    examples = [e for e in build_split("train", 40, 0) if e.rewritable][:12]
    limit = 24
    records, counts = verified_targets(examples, model, tok, tmp_path / "labels.jsonl", max_tokens=limit,
                                       max_new_tokens=20, batch_size=8, progress=False)
    assert counts.kept == len(records) > 0 and counts.examples == 12
    by_record = {(e.instruction, e.question): e for e in examples}
    for record in records:
        assert record.target == "verified" and record.complete
        assert len(response_ids(tok, record.output)) <= limit
        assert by_record[(record.prompt, record.input)].check(record.output)
        assert record.rewritten_from is not None and record.rewritten_from.strip()


def test_edited_tokens_mark_inserted_and_replaced_tokens_only():
    source = [5, 6, 7, 8, 9]
    assert edited_tokens(source, [1, 5, 6, 7, 8, 9, 2, 3]) == [True] + [False] * 5 + [True, True]
    assert edited_tokens(source, [5, 6, 70, 8, 9]) == [False, False, True, False, False]
    assert edited_tokens(source, [50, 60, 70]) == [True] * 3
    assert edited_tokens([], [1, 2]) == [True, True]


def test_the_collator_marks_the_tokens_the_rewrite_changed():
    tok = bpe_tokenizer()
    own = "Drink water every day."
    records = [Record("p", "Name a fruit.", "an apple"),
               Record("End with Thank you.", "How to stay healthy?", f"{own}\n\nThank you.", target="verified",
                      rewritten_from=own)]
    batch = DistillCollator(tok)(records)
    first = len(response_ids(tok, "an apple"))
    edited = batch["edited_mask"].tolist()
    assert edited[:first] == [False] * first  # a distill record has no edits
    response = response_ids(tok, records[1].output)
    assert edited[first:] == edited_tokens(response_ids(tok, own), response)
    added = [t for t, e in zip(response, edited[first:]) if e]
    assert "Thank" in tok.decode(added) and "water" not in tok.decode(added)
    # No source anywhere in the batch: no mask, the batch is what it was.
    assert "edited_mask" not in DistillCollator(tok)([records[0], Record("p", "i", "o", target="verified")])


def test_the_weighted_cross_entropy_matches_a_dense_reference():
    torch.manual_seed(0)
    student, teacher = torch.randn(10, 13, requires_grad=True), torch.randn(10, 13)
    labels = torch.randint(0, 13, (10,))
    verified = torch.tensor([True] * 7 + [False] * 3)
    edited = torch.tensor([False, True, True, False, False, False, True, True, False, False])
    out = distillation_loss(student, teacher, labels, verified=verified, edited=edited, edit_weight=5.0, chunk=3)
    per_token = F.cross_entropy(student[:7], labels[:7], reduction="none")
    w = torch.tensor([1.0, 5.0, 5.0, 1.0, 1.0, 1.0, 5.0])
    assert torch.allclose(out["verified_ce"], (per_token * w).sum() / w.sum(), atol=1e-6)
    # A weight of 1 is the plain mean, exactly; so is a batch without the mask.
    plain = distillation_loss(student, teacher, labels, verified=verified, chunk=3)
    same = distillation_loss(student, teacher, labels, verified=verified, edited=edited, edit_weight=1.0, chunk=3)
    assert torch.equal(plain["verified_ce"], same["verified_ce"])
    assert torch.allclose(plain["verified_ce"], per_token.mean(), atol=1e-6)
    out["loss"].backward()
    assert torch.isfinite(student.grad).all()
    assert torch.allclose(cross_entropy_loss(student, labels, 4, torch.ones(10)), cross_entropy_loss(student, labels))
    with pytest.raises(ValueError, match="edited mask"):
        distillation_loss(student, teacher, labels, verified=verified, edited=edited[:4], edit_weight=2.0)


def test_the_settings_are_checked_and_rewritten_from_round_trips(tmp_path):
    assert DataConfig(label_max_new_tokens=160).verified_token_limit() == 120
    assert DataConfig(label_max_new_tokens=160, verified_max_tokens=100).verified_token_limit() == 100
    with pytest.raises(ValueError, match="data.verified_max_tokens"):
        DataConfig(verified_max_tokens=1)
    for bad in (0, -1.0, float("nan"), True):
        with pytest.raises(ValueError, match="distill.edit_weight"):
            DistillConfig(edit_weight=bad)
    records = [Record("p", "i", "o"), Record("p", "j", "o!", target="verified", rewritten_from="o")]
    write_jsonl(records, tmp_path / "r.jsonl")
    assert "rewritten_from" not in (tmp_path / "r.jsonl").read_text().splitlines()[0]
    assert read_jsonl(tmp_path / "r.jsonl") == records


def test_examples_without_a_rewrite_take_the_teachers_passing_answer(tmp_path, monkeypatch):
    """A named language has no rewriter: its target is the teacher's answer when (and only when) it passes."""
    from hyperlora.data import verified

    examples = [e for e in build_split("train", 400, 0) if e.types == ("language",)][:2]
    assert len(examples) == 2 and not any(e.rewritable for e in examples)
    from hyperlora.instruct.languages import STOP_WORDS

    words = sorted(STOP_WORDS[examples[0].instructions[0].params["language"]])
    followed = " ".join(words[:10]).capitalize() + ". " + " ".join(words[10:20]) + "."
    fixed = {None: "Plain English answer. It stays in English."}

    def fake_label(records, *args, **kwargs):  # the bare answer, and a teacher that follows only the first one
        out = []
        for r in records:
            if r.prompt is None:
                text = fixed[None]
            elif r.prompt == examples[0].instruction:
                text = followed
            else:
                text = "An answer in English again. Still English."
            out.append(Record(r.prompt, r.input, text, complete=True))
        return out

    monkeypatch.setattr(verified, "label_missing", fake_label)
    tok = bpe_tokenizer()
    assert examples[0].check(followed) and not examples[1].check("An answer in English again. Still English.")
    records, counts = verified.verified_targets(examples, None, tok, tmp_path / "l.jsonl", max_tokens=None)
    assert counts.kept == 1 and counts.from_teacher == 1 and counts.dropped == 1
    assert records[0].prompt == examples[0].instruction and records[0].output == followed
    assert records[0].rewritten_from == fixed[None]  # the bare answer it departs from
    _, counts = verified.verified_targets(examples, None, tok, tmp_path / "l.jsonl", from_teacher=False)
    assert counts.kept == 0 and counts.dropped == 2
