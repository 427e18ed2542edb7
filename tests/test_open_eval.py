"""The trainer's evaluation of open answers (``hyperlora.open_eval``) on a tiny random Llama with a real
BPE tokenizer and chat template (``tests/bpe_fixture.py``), on records of the instruction suite.

- ``instruct_follows``: the verdicts of each record's own ``Example``; a record no example made is refused;
- ``open_answer_metrics``: its KL figures equal ``kl_gap_closed``'s; its instruction-following and agreement
  figures are recomputed from the answers themselves (the cache's teacher and base answers, the student's
  decoded here with its adapters); a second call with the same cache decodes no teacher or base answer.
"""

from __future__ import annotations

import math

import pytest
import torch

from bpe_fixture import bpe_model, bpe_tokenizer
from hyperlora.answer_metrics import AnswerCache, instruction_following, kl_gap_closed, rouge_l
from hyperlora.config import HyperLoRAConfig
from hyperlora.data.collate import DistillCollator
from hyperlora.data.format import prefix_ids
from hyperlora.data.label import label_missing
from hyperlora.data.records import Record
from hyperlora.decoding import greedy_decode
from hyperlora.encoder import EncoderConfig
from hyperlora.fingerprint import model_fingerprint
from hyperlora.generator import GeneratorConfig
from hyperlora.instruct import as_records, build_split
from hyperlora.lora import LoRASpec
from hyperlora.model import HyperLoRA
from hyperlora.open_eval import instruct_follows, open_answer_metrics

NEW_TOKENS = 8  # per answer: enough for distinct gibberish, fast on a CPU
KEYS = {"kl", "kl_base", "gap_closed", "if_student", "if_instr_student", "if_teacher", "if_instr_teacher",
        "if_base", "if_instr_base", "rouge_student", "rouge_base", "on_topic_student", "on_topic_teacher"}


# -- instruct_follows -------------------------------------------------------------------------------------


def test_instruct_follows_gives_each_records_own_verdicts() -> None:
    examples = build_split("heldout_type", 6, 0) + build_split("train_unseen_questions", 6, 0)
    follows = instruct_follows(iter(examples))  # any iterable, read once
    text = "First, a plain sentence. Then another one, with a comma.\nAnd a second line"
    seen: set[bool] = set()
    for example, record in zip(examples, as_records(examples)):
        answers = ["", "hello", "HELLO WORLD", text, text.lower()]
        rewritten = example.rewrite(text)
        if rewritten is not None:
            answers.append(rewritten)
        for answer in answers:
            got = follows(record, answer)
            assert got == example.follows(answer), (record, answer)
            seen.update(got[1])
    assert seen == {True, False}  # the answers above are followed and not followed: the verdicts are not constant


def test_instruct_follows_refuses_a_record_no_example_made() -> None:
    examples = build_split("heldout_type", 3, 0)
    follows = instruct_follows(examples)
    known = as_records(examples)[0]
    for stranger in (Record("Say it in Klingon.", "Hello?"), Record(known.prompt, "Another request entirely.")):
        with pytest.raises(KeyError, match="no verifiers") as err:
            follows(stranger, "an answer")
        assert repr(stranger.prompt) in str(err.value) and repr(stranger.input) in str(err.value)


# -- open_answer_metrics ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    """A HyperLoRA with a perturbed generator over a sharp tiny BPE Llama, another such Llama as teacher,
    and eight records of the suite labelled by the teacher."""
    tok = bpe_tokenizer()
    student, teacher = bpe_model(tok, seed=0, init=0.2), bpe_model(tok, seed=1, init=0.2)
    config = HyperLoRAConfig(lora=LoRASpec(4, 8.0),
                             encoder=EncoderConfig(d_ctx=32, d_model=32, n_heads=4, max_length=256),
                             generator=GeneratorConfig(d_emb=16, d_hidden=64))
    torch.manual_seed(0)
    hyper = HyperLoRA(student, tok, config)
    with torch.no_grad():  # off the zero start: the student is not the base
        for p in hyper.hypernet.generator.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    hyper.eval()
    examples = build_split("heldout_type", 4, 0) + build_split("train_unseen_questions", 4, 0)
    records = label_missing(as_records(examples), teacher, tok, tmp_path_factory.mktemp("labels") / "labels.jsonl",
                            max_new_tokens=NEW_TOKENS, progress=False)
    return hyper, teacher, records, examples


def _cached(cache: AnswerCache, model, prefixes: list[list[int]]) -> list[str]:
    fingerprint = model_fingerprint(model)
    return [cache.answers[(fingerprint, tuple(p), NEW_TOKENS)] for p in prefixes]


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def test_open_answer_metrics_against_their_parts(setting) -> None:
    hyper, teacher, records, examples = setting
    tok, collator, follows = hyper.tokenizer, DistillCollator(hyper.tokenizer, 512), instruct_follows(examples)
    cache = AnswerCache()
    got = open_answer_metrics(hyper, teacher, records, collator, follows, cache, batch_size=len(records),
                              max_new_tokens=NEW_TOKENS)
    assert set(got) == KEYS and all(math.isfinite(v) for v in got.values())

    # The KL figures are kl_gap_closed's, on the same records; the adapters move the student off the base.
    gap = kl_gap_closed(hyper, teacher, records, collator, batch_size=3)
    assert got["kl"] == pytest.approx(gap.kl_student, rel=1e-5)
    assert got["kl_base"] == pytest.approx(gap.kl_base, rel=1e-5)
    assert got["gap_closed"] == pytest.approx(gap.gap_closed, rel=1e-4, abs=1e-6)
    assert got["gap_closed"] == pytest.approx(1 - got["kl"] / got["kl_base"])
    assert abs(got["kl"] - got["kl_base"]) > 1e-3

    # Each model's answers: the teacher's and the base's from the cache, the student's decoded here.
    bare = [prefix_ids(tok, None, r.input) for r in records]
    teacher_answers = _cached(cache, teacher, [prefix_ids(tok, r.prompt, r.input) for r in records])
    base_answers = _cached(cache, hyper.student, bare)
    with hyper.inject(hyper.adapters([r.prompt for r in records])):
        student_answers = greedy_decode(hyper.student, tok, bare, NEW_TOKENS)
    assert student_answers != base_answers
    for who, answers in (("teacher", teacher_answers), ("base", base_answers), ("student", student_answers)):
        rates = instruction_following(records, answers, follows)
        assert (got[f"if_{who}"], got[f"if_instr_{who}"]) == (rates.prompt_level, rates.instruction_level), who
        # Independently: IFEval's rates straight from each example's verifiers.
        verdicts = [e.follows(a)[1] for e, a in zip(examples, answers)]
        assert got[f"if_{who}"] == pytest.approx(_mean(all(v) for v in verdicts))
        assert got[f"if_instr_{who}"] == pytest.approx(sum(map(sum, verdicts)) / sum(map(len, verdicts)))
    assert got["rouge_student"] == pytest.approx(_mean(map(rouge_l, student_answers, teacher_answers)))
    assert got["rouge_base"] == pytest.approx(_mean(map(rouge_l, base_answers, teacher_answers)))
    assert got["on_topic_student"] == pytest.approx(_mean(map(rouge_l, student_answers, base_answers)))
    assert got["on_topic_teacher"] == pytest.approx(_mean(map(rouge_l, teacher_answers, base_answers)))

    # Verifiers that tell these gibberish answers apart, so that each model's rates differ: every figure
    # must be its own model's (the cache serves the teacher and the base again).
    def by_letters(record: Record, answer: str) -> tuple[bool, list[bool]]:
        verdicts = [len(answer) % 2 == 0, "e" in answer, " " in answer]
        return all(verdicts), verdicts

    again = open_answer_metrics(hyper, teacher, records, collator, by_letters, cache, batch_size=len(records),
                                max_new_tokens=NEW_TOKENS)
    for who, answers in (("teacher", teacher_answers), ("base", base_answers), ("student", student_answers)):
        verdicts = [by_letters(r, a)[1] for r, a in zip(records, answers)]
        assert again[f"if_{who}"] == pytest.approx(_mean(all(v) for v in verdicts)), who
        assert again[f"if_instr_{who}"] == pytest.approx(sum(map(sum, verdicts)) / sum(map(len, verdicts))), who
    assert len({again["if_instr_student"], again["if_instr_teacher"], again["if_instr_base"]}) == 3


def test_a_second_call_decodes_only_the_student(setting, monkeypatch) -> None:
    hyper, teacher, records, examples = setting
    collator, follows = DistillCollator(hyper.tokenizer, 512), instruct_follows(examples)
    cache = AnswerCache()
    first = open_answer_metrics(hyper, teacher, records, collator, follows, cache, batch_size=3,
                                max_new_tokens=NEW_TOKENS)
    decoded, hits = cache.decoded, cache.hits
    assert decoded == len(cache) > 0

    # Count what greedy_decode sees from here on: only the student's rows (under its adapters) may be decoded.
    import hyperlora.answer_metrics as answer_metrics

    calls: list[int] = []
    original = answer_metrics.greedy_decode

    def counting(model, tokenizer, prefixes, *args, **kwargs):
        calls.append(len(prefixes))
        return original(model, tokenizer, prefixes, *args, **kwargs)

    monkeypatch.setattr(answer_metrics, "greedy_decode", counting)
    second = open_answer_metrics(hyper, teacher, records, collator, follows, cache, batch_size=3,
                                 max_new_tokens=NEW_TOKENS)
    assert cache.decoded == decoded and len(cache) == decoded
    assert cache.hits == hits + 2 * len(records)  # every teacher and base answer served from the cache
    assert calls == [3, 3, 2]  # the student, in batches of 3
    assert second == first
