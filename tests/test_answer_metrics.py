"""Metrics for open answers (``hyperlora.answer_metrics``), each against an independent computation.

Agreement: ROUGE-L and token F1 on examples worked out by hand (the LCS written out), the LCS
against brute force. Instruction following: IFEval's strict and loose accuracies on verdict
tables counted by hand. KL gap closed: against full forwards of every record alone and
``F.kl_div``, and its two ends (student = teacher → 1, student = base → 0). The four-model
comparison: structure, agreement with direct greedy decodes, and the cache's decode counts.

Axis letters: B batch (rows), T tokens, V vocabulary.
"""

from __future__ import annotations

import itertools
import math
import random
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hyperlora.answer_metrics import (
    AnswerCache,
    ModelAnswers,
    answer_tokens,
    compare_models,
    gap_closed,
    instruction_following,
    kl_gap_closed,
    lcs_length,
    loose_variants,
    rouge_l,
    token_f1,
)
from hyperlora.config import HyperLoRAConfig
from hyperlora.data.collate import DistillCollator
from hyperlora.data.format import prefix_ids, response_ids
from hyperlora.data.records import Record
from hyperlora.decoding import greedy_decode
from hyperlora.encoder import EncoderConfig
from hyperlora.generator import GeneratorConfig
from hyperlora.lora import LoRASpec
from hyperlora.model import HyperLoRA
from hyperlora.toy.models import tiny_model
from hyperlora.toy.tokenizer import char_tokenizer

# -- agreement -------------------------------------------------------------------------------


def test_answer_tokens_lowercase_and_split_at_punctuation() -> None:
    assert answer_tokens("Hello, World! It's well-known.") == ["hello", "world", "it", "s", "well", "known"]
    assert answer_tokens("«Bonjour» — ¿Qué tal?  Très   bien…") == ["bonjour", "qué", "tal", "très", "bien"]
    assert answer_tokens("$5 + 3 = 8\n\t(maybe)") == ["5", "3", "8", "maybe"]
    assert answer_tokens(" ... !!! ") == []


def _lcs_brute_force(a: list[str], b: list[str]) -> int:
    """The longest subsequence of ``a`` that is also a subsequence of ``b``, by trying them all."""
    def is_subsequence(sub: tuple[str, ...], seq: list[str]) -> bool:
        it = iter(seq)
        return all(x in it for x in sub)

    for k in range(len(a), 0, -1):
        if any(is_subsequence(sub, b) for sub in itertools.combinations(a, k)):
            return k
    return 0


def test_lcs_length_equals_brute_force() -> None:
    rng = random.Random(0)
    for _ in range(200):
        a = [rng.choice("abc") for _ in range(rng.randint(0, 7))]
        b = [rng.choice("abc") for _ in range(rng.randint(0, 7))]
        assert lcs_length(a, b) == lcs_length(b, a) == _lcs_brute_force(a, b), (a, b)


def test_rouge_l_hand_computed() -> None:
    # candidate: the cat sat on the mat        reference: the cat is on the mat
    # LCS:       the cat     on the mat  (5)   P = 5/6, R = 5/6, F = 5/6
    assert rouge_l("The cat sat on the mat.", "the cat is on the mat") == pytest.approx(5 / 6)
    # candidate: the gunman police killed      reference: police killed the gunman
    # LCS:       police killed (or: the gunman) (2)   P = R = 2/4, F = 1/2   (order matters)
    assert rouge_l("the gunman police killed", "police killed the gunman") == pytest.approx(0.5)
    # candidate: a b c d e   reference: a x c   LCS: a c (2)   P = 2/5, R = 2/3
    # F = 2·(2/5)(2/3) / (2/5 + 2/3) = (8/15) / (16/15) = 1/2
    assert rouge_l("a b c d e", "a x c") == pytest.approx(0.5)
    # candidate: the the the   reference: the cat   LCS: the (1)   P = 1/3, R = 1/2, F = (1/3)/(5/6) = 2/5
    assert rouge_l("the the the", "the cat") == pytest.approx(0.4)
    assert rouge_l("Same answer!", "same ANSWER") == 1.0
    assert rouge_l("one two", "three four") == 0.0


def test_token_f1_hand_computed() -> None:
    # bags: {the: 2, cat, sat, on, mat} vs {the: 2, cat, is, on, mat}: common = 2 + 1 + 1 + 1 = 5 of 6 each
    assert token_f1("The cat sat on the mat.", "the cat is on the mat") == pytest.approx(5 / 6)
    # order does not matter to a bag: all four tokens common (ROUGE-L gave 1/2 above)
    assert token_f1("the gunman police killed", "police killed the gunman") == 1.0
    # common = min(3, 1) = 1 "the": P = 1/3, R = 1/2, F1 = 2/5
    assert token_f1("the the the", "the cat") == pytest.approx(0.4)
    # common = "a", "c": P = 2/5, R = 2/3, F1 = 1/2
    assert token_f1("a b c d e", "a x c") == pytest.approx(0.5)
    assert token_f1("one two", "three four") == 0.0


@pytest.mark.parametrize("metric", [rouge_l, token_f1])
def test_agreement_on_empty_answers(metric: Any) -> None:
    assert metric("", "") == 1.0  # SQuAD: both without tokens agree
    assert metric("", "an answer") == 0.0
    assert metric("an answer", "") == 0.0
    assert metric("?!", "") == 1.0  # punctuation alone has no tokens
    assert metric("  ", "...") == 1.0


# -- instruction following -------------------------------------------------------------------


def _table_follows(table: dict[str, list[bool]]) -> Any:
    """``follows`` reading each answer's verdicts from ``table`` (the prompt-level one is all of them)."""
    def follows(record: Any, answer: str) -> tuple[bool, list[bool]]:
        verdicts = table[answer]
        return all(verdicts), verdicts
    return follows


def test_strict_prompt_and_instruction_level_counted_by_hand() -> None:
    table = {"a": [True, True], "b": [True, False], "c": [False], "d": [True, True, True]}
    records = [Record("p", str(i)) for i in range(4)]
    rates = instruction_following(records, list("abcd"), _table_follows(table))
    # prompts followed: a, d -> 2 of 4; instructions followed: 2 + 1 + 0 + 3 = 6 of 2 + 2 + 1 + 3 = 8
    assert (rates.prompt_level, rates.instruction_level) == (0.5, 0.75)
    assert (rates.prompts, rates.instructions) == (4, 8)
    assert rates.prompt_level_loose is None and rates.instruction_level_loose is None


def test_records_without_instructions_count_as_followed_prompts() -> None:
    rates = instruction_following([Record("p", "x")], ["a"], _table_follows({"a": []}))
    assert rates.prompt_level == 1.0 and math.isnan(rates.instruction_level)


def test_refuses_inconsistent_verdicts_and_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="all\\(instructions\\)"):
        instruction_following([Record("p", "x")], ["a"], lambda r, a: (True, [True, False]))
    with pytest.raises(ValueError, match="one answer per record"):
        instruction_following([Record("p", "x")], ["a", "b"], _table_follows({"a": [True]}))
    with pytest.raises(ValueError, match="at least one record"):
        instruction_following([], [], _table_follows({}))


def test_loose_variants_are_ifeval_s_eight() -> None:
    answer = "Sure:\n**Yes** it is\nBye"
    assert loose_variants(answer) == [
        answer, "**Yes** it is\nBye", "Sure:\n**Yes** it is", "**Yes** it is",
        "Sure:\nYes it is\nBye", "Yes it is\nBye", "Sure:\nYes it is", "Yes it is",
    ]


def _two_rules(record: Any, answer: str) -> tuple[bool, list[bool]]:
    """Instruction 1: no asterisks. Instruction 2: start with "Answer". Instruction 3: no commas."""
    verdicts = ["*" not in answer, answer.startswith("Answer"), "," not in answer]
    return all(verdicts), verdicts


def test_loose_accepts_what_a_preamble_or_markup_hides() -> None:
    records = [Record("p", str(i)) for i in range(3)]
    answers = [
        "Sure, here it is:\nAnswer: *yes*",  # strict: F F F; without line 1 and '*': "Answer: yes" -> T T T
        "Answer: yes\nHope this helps, bye",  # strict: T T F; without the last line: T T T
        "",  # strict: T F T; loose: every variant is empty, so nothing is followed (IFEval)
    ]
    rates = instruction_following(records, answers, _two_rules, loose=True)
    # strict: prompts 0 of 3; instructions 0 + 2 + 2 = 4 of 9
    assert rates.prompt_level == 0.0 and rates.instruction_level == pytest.approx(4 / 9)
    # loose: prompts 2 of 3; instructions 3 + 3 + 0 = 6 of 9
    assert rates.prompt_level_loose == pytest.approx(2 / 3)
    assert rates.instruction_level_loose == pytest.approx(6 / 9)


# -- the KL gap closed -----------------------------------------------------------------------

RECORDS = [
    Record("Reverse the words.", "red fox", "fox red"),
    Record("Answer in capitals, please.", "hello there", "HELLO THERE!"),
    Record("Count the letters!", "abc", "3"),
]


def _hyper(student: nn.Module, perturb: float = 0.05, prompt_agnostic: bool = False, seed: int = 0) -> HyperLoRA:
    torch.manual_seed(seed)
    config = HyperLoRAConfig(
        lora=LoRASpec(4, 8.0),
        encoder=EncoderConfig(d_ctx=32, d_model=32, n_heads=4, max_length=64),
        generator=GeneratorConfig(d_emb=16, d_hidden=64),
        prompt_agnostic=prompt_agnostic,
    )
    hyper = HyperLoRA(student, char_tokenizer(), config)
    with torch.no_grad():  # the B head starts at zero: perturb everything so the adapters are not
        for p in hyper.hypernet.parameters():
            p.add_(torch.randn_like(p) * perturb)
    return hyper.eval()


def _kl_sum(teacher_logits: Tensor, student_logits: Tensor) -> float:
    """Σ over rows of KL(teacher ‖ student), by ``F.kl_div`` on log-probabilities."""
    log_t = torch.log_softmax(teacher_logits.double(), -1)
    log_s = torch.log_softmax(student_logits.double(), -1)
    return F.kl_div(log_s, log_t, log_target=True, reduction="sum").item()


def _direct_kls(hyper: HyperLoRA, teacher: nn.Module, records: list[Record]) -> tuple[float, float]:
    """Token-weighted KL(teacher ‖ student) and KL(teacher ‖ base): every record alone, full forwards."""
    tok = hyper.tokenizer
    student_sum = base_sum = 0.0
    tokens = 0
    with torch.no_grad():
        for r in records:
            response = response_ids(tok, r.output)
            t_prefix, s_prefix = prefix_ids(tok, r.prompt, r.input), prefix_ids(tok, None, r.input)
            n = len(response)
            # position t predicts token t + 1: the response is predicted from the last prefix token on
            t_logits = teacher(torch.tensor([t_prefix + response])).logits[0, len(t_prefix) - 1 : len(t_prefix) - 1 + n]
            s_ids = torch.tensor([s_prefix + response])
            cut = slice(len(s_prefix) - 1, len(s_prefix) - 1 + n)
            with hyper.inject(hyper.adapters([r.prompt])):
                s_logits = hyper.student(s_ids).logits[0, cut]
            b_logits = hyper.student(s_ids).logits[0, cut]
            student_sum += _kl_sum(t_logits, s_logits)
            base_sum += _kl_sum(t_logits, b_logits)
            tokens += n
    return student_sum / tokens, base_sum / tokens


def test_kl_gap_closed_equals_full_forwards_record_by_record() -> None:
    hyper, teacher = _hyper(tiny_model("llama", seed=0)), tiny_model("llama", seed=1)
    collator = DistillCollator(hyper.tokenizer)
    got = kl_gap_closed(hyper, teacher, RECORDS, collator, batch_size=2)  # a padded pair and a single row
    kl_student, kl_base = _direct_kls(hyper, teacher, RECORDS)
    assert got.kl_student == pytest.approx(kl_student, rel=1e-4)
    assert got.kl_base == pytest.approx(kl_base, rel=1e-4)
    assert got.gap_closed == pytest.approx(1 - kl_student / kl_base, rel=1e-4, abs=1e-6)
    assert got.kl_student != pytest.approx(got.kl_base, rel=1e-3)  # the adapters do move the student


class _AdaptedStudentAsTeacher(nn.Module):
    """A teacher whose predictions on the responses are exactly the adapted student's.

    It reads the teacher's rows of one known batch and answers, at the teacher's response
    positions, with the adapted student's logits at the student's response positions.
    """

    def __init__(self, hyper: HyperLoRA, batch: dict[str, Any]) -> None:
        super().__init__()
        self.hyper, self.batch = hyper, batch

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, use_cache: bool = False) -> Any:
        b = self.batch
        assert torch.equal(input_ids, b["teacher_input_ids"])
        with self.hyper.inject(self.hyper.adapters(b["prompts"])):
            logits = self.hyper.student(input_ids=b["student_input_ids"],
                                        attention_mask=b["student_attention_mask"]).logits
        out = torch.zeros(*input_ids.shape, logits.shape[-1])
        out[b["teacher_loss_mask"]] = logits[b["student_loss_mask"]]
        return SimpleNamespace(logits=out)


def test_student_equal_to_teacher_closes_the_whole_gap() -> None:
    hyper = _hyper(tiny_model("llama"))
    collator = DistillCollator(hyper.tokenizer)
    teacher = _AdaptedStudentAsTeacher(hyper, collator(RECORDS))
    got = kl_gap_closed(hyper, teacher, RECORDS, collator, batch_size=len(RECORDS))
    assert got.kl_student == pytest.approx(0.0, abs=1e-6)
    assert got.kl_base > 1e-3
    assert got.gap_closed == pytest.approx(1.0, abs=1e-5)


def test_student_equal_to_base_closes_nothing() -> None:
    hyper = _hyper(tiny_model("llama"), perturb=0.0)  # zero start: every adapter is ΔW = 0
    got = kl_gap_closed(hyper, tiny_model("llama", seed=1), RECORDS, DistillCollator(hyper.tokenizer), batch_size=2)
    assert got.kl_base > 1e-3
    assert got.kl_student == pytest.approx(got.kl_base, rel=1e-6)
    assert got.gap_closed == pytest.approx(0.0, abs=1e-6)


def test_gap_closed_formula_and_no_gap() -> None:
    assert gap_closed(0.25, 1.0) == 0.75
    assert gap_closed(2.0, 1.0) == -1.0  # worse than the base
    assert math.isnan(gap_closed(0.0, 0.0))  # the teacher is the base: nothing to close


# -- the four models compared ----------------------------------------------------------------

PROMPTS = ["Reverse the words.", "Answer in capitals, please.", "Count the letters!"]
INPUTS = ["red fox", "hello there"]
# Every prompt with every input: the base sees only the input, so it has 2 distinct prefixes, not 6.
GRID = [Record(p, x) for p in PROMPTS for x in INPUTS]


def _char_rule(record: Any, answer: str) -> tuple[bool, list[bool]]:
    """Fake verifiers: the answer is non-empty; it has fewer characters than twice the input."""
    verdicts = [bool(answer), len(answer) < 2 * len(record.input)]
    return all(verdicts), verdicts


def _count_generate(model: nn.Module) -> list[int]:
    """Count ``model.generate`` calls (and rows) in a list: one entry per call, its batch size."""
    calls: list[int] = []
    original = model.generate

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs["input_ids"].shape[0])
        return original(*args, **kwargs)

    model.generate = counting  # type: ignore[method-assign]
    return calls


def test_compare_models_structure_answers_and_cache() -> None:
    student, teacher = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    hyper, agnostic = _hyper(student), _hyper(student, prompt_agnostic=True, seed=1)
    tok = hyper.tokenizer
    student_calls, teacher_calls = _count_generate(student), _count_generate(teacher)
    cache = AnswerCache()

    first = compare_models(hyper, teacher, GRID, _char_rule, agnostic=agnostic, cache=cache, batch_size=4,
                           max_new_tokens=6, loose=True)
    assert set(first) == {"student", "teacher", "base", "agnostic"}
    for result in first.values():
        assert isinstance(result, ModelAnswers) and len(result.answers) == len(GRID)
        rates = instruction_following(GRID, result.answers, _char_rule, loose=True)
        assert (result.prompt_level, result.instruction_level) == (rates.prompt_level, rates.instruction_level)
        assert result.prompt_level_loose == rates.prompt_level_loose
        assert result.rouge_l == pytest.approx(
            sum(rouge_l(a, t) for a, t in zip(result.answers, first["teacher"].answers)) / len(GRID))
        assert result.token_f1 == pytest.approx(
            sum(token_f1(a, t) for a, t in zip(result.answers, first["teacher"].answers)) / len(GRID))
        # on_topic: the mean ROUGE-L against the base's answer to the same record.
        assert result.on_topic == pytest.approx(
            sum(rouge_l(a, b) for a, b in zip(result.answers, first["base"].answers)) / len(GRID))
        assert set(result.figures()) == {"prompt_level", "instruction_level", "rouge_l", "token_f1",
                                         "prompt_level_loose", "instruction_level_loose", "on_topic"}
        assert result.figures()["on_topic"] == result.on_topic
    assert first["teacher"].rouge_l == first["teacher"].token_f1 == 1.0
    assert first["base"].on_topic == 1.0
    assert first["teacher"].on_topic < 1.0  # the teacher (another model) answers otherwise than the base

    # The answers are the models' own greedy decodes, each record alone.
    for i, r in enumerate(GRID):
        bare = [prefix_ids(tok, None, r.input)]
        assert first["teacher"].answers[i] == greedy_decode(teacher, tok, [prefix_ids(tok, r.prompt, r.input)], 6)[0]
        assert first["base"].answers[i] == greedy_decode(student, tok, bare, 6)[0]
        with hyper.inject(hyper.adapters([r.prompt])):
            assert first["student"].answers[i] == greedy_decode(student, tok, bare, 6)[0]
    # The base and the prompt-agnostic LoRA answer by input alone; the student by prompt too.
    for answers in (first["base"].answers, first["agnostic"].answers):
        assert answers[0::2] == [answers[0]] * 3 and answers[1::2] == [answers[1]] * 3
    assert len(set(first["student"].answers)) > 2
    student_calls.clear(), teacher_calls.clear()

    # The counted decodes: student 6 rows in batches of 4 (2 calls), agnostic likewise, base 2 distinct prefixes
    # (1 call); teacher 6 distinct prefixes (2 calls). Then again with the same cache: only student and agnostic.
    fresh_student, fresh_teacher = _count_generate(student), _count_generate(teacher)
    compare_models(hyper, teacher, GRID, _char_rule, agnostic=agnostic, cache=AnswerCache(), batch_size=4,
                   max_new_tokens=6)
    assert fresh_teacher == [4, 2] and sorted(fresh_student) == [2, 2, 2, 4, 4]
    fresh_student.clear(), fresh_teacher.clear()
    second = compare_models(hyper, teacher, GRID, _char_rule, agnostic=agnostic, cache=cache, batch_size=4,
                            max_new_tokens=6, loose=True)
    assert fresh_teacher == [] and fresh_student == [4, 2, 4, 2]  # student and agnostic only
    assert (cache.decoded, cache.hits, len(cache)) == (6 + 2, 4 + 6 + 6, 8)  # base: 4 repeats in the first call
    assert {k: v.answers for k, v in second.items()} == {k: v.answers for k, v in first.items()}


def test_figures_leave_out_what_was_not_computed() -> None:
    plain = ModelAnswers(["a"], 1.0, 0.5, 0.25, 0.125)
    assert plain.figures() == {"prompt_level": 1.0, "instruction_level": 0.5, "rouge_l": 0.25, "token_f1": 0.125}
    assert ModelAnswers(["a"], 1.0, 0.5, 0.25, 0.125, on_topic=0.75).figures()["on_topic"] == 0.75


def test_cache_keys_on_weights_and_length() -> None:
    model, tok = tiny_model("llama", seed=0), char_tokenizer()
    calls = _count_generate(model)
    cache = AnswerCache()
    prefixes = [prefix_ids(tok, None, "red fox")]
    cache.decode(model, tok, prefixes, 4)
    cache.decode(model, tok, prefixes, 4)
    assert len(calls) == 1
    cache.decode(model, tok, prefixes, 5)  # another length: another answer
    assert len(calls) == 2
    with torch.no_grad():
        model.lm_head.weight.add_(0.5)  # other weights: the fingerprint changes, the old answer is not served
    cache.decode(model, tok, prefixes, 4)
    assert len(calls) == 3 and (cache.decoded, cache.hits) == (3, 1)
    cache.clear()
    assert len(cache) == 0 and (cache.decoded, cache.hits) == (0, 0)
