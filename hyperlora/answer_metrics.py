"""Metrics for open answers: instruction following, the KL gap closed, agreement with a reference.

Exact match (``hyperlora.evaluate``) suits the toy suite, whose answers are short and
unique. A real instruct model's answers are open text, so they are judged by

* **instruction following** (IFEval, Zhou et al. 2023): a verifier per instruction says
  whether an answer follows it. Strict *prompt-level* accuracy is the fraction of prompts
  whose instructions are all followed; *instruction-level* accuracy the fraction of all
  instructions (over all prompts) that are followed. The *loose* variant also accepts an
  instruction when it is followed by the answer with its first line, its last line, both,
  or its ``*`` markup removed (IFEval's eight variants; an empty variant never counts);
* **the KL gap closed** on held-out responses, token-weighted over every response token
  of every record::

      KL_s = Σ_tokens KL(teacher ‖ student) / N      student: adapter, no instruction
      KL_b = Σ_tokens KL(teacher ‖ base)    / N      base:    no adapter, no instruction
      gap_closed = 1 − KL_s / KL_b                   (1: the student is the teacher; 0: it is the base)

* **agreement with a reference answer** (the teacher's greedy answer): ROUGE-L F-measure and
  SQuAD-style token F1 over the same tokens (``answer_tokens``).

``compare_models`` decodes the student, the teacher, the base and, optionally, a
prompt-agnostic LoRA greedily and gives each of them these figures. The teacher's and the
base's answers never change while the hypernetwork trains, so they go through an
``AnswerCache`` the caller keeps between evaluations.
"""

from __future__ import annotations

import math
import string
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn

from hyperlora.data.collate import DistillCollator
from hyperlora.data.format import prefix_ids
from hyperlora.decoding import greedy_decode
from hyperlora.distill import distill_forward, kl_loss, logits_at
from hyperlora.fingerprint import model_fingerprint

__all__ = [
    "AnswerCache",
    "FollowingRates",
    "Follows",
    "KLGap",
    "ModelAnswers",
    "answer_tokens",
    "compare_models",
    "gap_closed",
    "instruction_following",
    "kl_gap_closed",
    "lcs_length",
    "loose_variants",
    "rouge_l",
    "token_f1",
]

# ``follows(record, answer) -> (prompt_followed, [instruction_followed, ...])``: the verifiers of
# the instruction suite, given as a parameter so these metrics serve any suite.
Follows = Callable[[Any, str], tuple[bool, list[bool]]]


# -- agreement with a reference answer -------------------------------------------------------

_ASCII_PUNCTUATION = set(string.punctuation)


def _is_punctuation(ch: str) -> bool:
    # Unicode punctuation (P*: « » — ¿ …) and ASCII's symbols too ($ + < = > ^ ` | ~), as SQuAD strips them.
    return ch in _ASCII_PUNCTUATION or unicodedata.category(ch).startswith("P")


def answer_tokens(text: str) -> list[str]:
    """The tokens both agreement metrics compare: lowercased, punctuation removed, split on whitespace.

    Every punctuation character becomes a space (so "well-known" is two tokens and
    "don't" is "don t", as in the ``rouge-score`` package); letters of any script and
    digits are kept. Unlike SQuAD's normalisation, articles (a, an, the) are kept: these
    are whole answers, not extracted spans.
    """
    return "".join(" " if _is_punctuation(ch) else ch for ch in text.lower()).split()


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of ``a`` and ``b`` (dynamic programming, O(|a|·|b|))."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F-measure (Lin 2004, β = 1) of ``candidate`` against ``reference`` over ``answer_tokens``.

    ``P = LCS / |candidate|``, ``R = LCS / |reference|``, ``F = 2PR / (P + R)`` (0 when LCS = 0).
    Two answers without tokens agree (1.0); one without tokens against one with them scores 0.
    """
    cand, ref = answer_tokens(candidate), answer_tokens(reference)
    if not cand or not ref:
        return float(not cand and not ref)
    lcs = lcs_length(cand, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(cand), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def token_f1(candidate: str, reference: str) -> float:
    """SQuAD's token F1: the harmonic mean of precision and recall of the bags of ``answer_tokens``.

    ``common = Σ_w min(count_cand(w), count_ref(w))``, ``P = common / |candidate|``,
    ``R = common / |reference|``, ``F1 = 2PR / (P + R)`` (0 when nothing is common).
    Empty answers as in SQuAD: both empty 1.0, one empty 0.0.
    """
    cand, ref = answer_tokens(candidate), answer_tokens(reference)
    if not cand or not ref:
        return float(not cand and not ref)
    common = sum((Counter(cand) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(cand), common / len(ref)
    return 2 * precision * recall / (precision + recall)


# -- instruction following -------------------------------------------------------------------

def loose_variants(answer: str) -> list[str]:
    """IFEval's eight loose variants of ``answer``: as is, without its first line, its last line, both,
    and each of those four with every ``*`` removed (markdown emphasis). The three cut ones are stripped."""
    lines = answer.split("\n")
    cut = [answer, "\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    return cut + [text.replace("*", "") for text in cut]


@dataclass
class FollowingRates:
    """IFEval's accuracies over a set of answers: ``prompt_level`` (all of a prompt's instructions
    followed), ``instruction_level`` (each instruction counted); ``*_loose`` with ``loose=True``."""

    prompt_level: float
    instruction_level: float  # nan when the prompts hold no instruction at all
    prompts: int
    instructions: int
    prompt_level_loose: float | None = None
    instruction_level_loose: float | None = None


def _verdicts(follows: Follows, record: Any, answer: str) -> list[bool]:
    prompt_ok, per_instruction = follows(record, answer)
    per_instruction = [bool(v) for v in per_instruction]
    if bool(prompt_ok) != all(per_instruction):
        raise ValueError(f"follows() said the prompt was {'followed' if prompt_ok else 'not followed'} but its "
                         f"instructions gave {per_instruction}: the prompt-level verdict must be all(instructions).")
    return per_instruction


def _loose_verdicts(follows: Follows, record: Any, answer: str, strict: list[bool]) -> list[bool]:
    """Per instruction: followed by any non-empty loose variant (IFEval: an empty one follows nothing,
    so an empty answer is loosely followed by nothing even where it strictly is)."""
    verdicts = [False] * len(strict)
    for i, variant in enumerate(loose_variants(answer)):
        if not variant.strip():
            continue
        again = strict if i == 0 else _verdicts(follows, record, variant)
        if len(again) != len(verdicts):
            raise ValueError(f"follows() gave {len(verdicts)} instructions for an answer and {len(again)} for its "
                             "loose variant: the count must depend on the record alone.")
        verdicts = [a or b for a, b in zip(verdicts, again)]
    return verdicts


def _rates(per_record: list[list[bool]]) -> tuple[float, float]:
    n_instructions = sum(map(len, per_record))
    prompt = sum(all(v) for v in per_record) / len(per_record)
    instruction = sum(map(sum, per_record)) / n_instructions if n_instructions else math.nan
    return prompt, instruction


def instruction_following(records: Sequence[Any], answers: Sequence[str], follows: Follows,
                          loose: bool = False) -> FollowingRates:
    """IFEval's strict (and with ``loose`` also loose) prompt- and instruction-level accuracy.

    ``follows(record, answer)`` returns ``(prompt_followed, per_instruction)``;
    ``prompt_followed`` must equal ``all(per_instruction)``::

        prompt_level      = #{records whose instructions are all followed} / #records
        instruction_level = Σ_records #followed instructions / Σ_records #instructions
    """
    if len(records) != len(answers):
        raise ValueError(f"Got {len(answers)} answers for {len(records)} records: give one answer per record.")
    if not records:
        raise ValueError("instruction_following needs at least one record.")
    strict = [_verdicts(follows, r, a) for r, a in zip(records, answers)]
    prompt, instruction = _rates(strict)
    rates = FollowingRates(prompt, instruction, len(records), sum(map(len, strict)))
    if loose:
        rates.prompt_level_loose, rates.instruction_level_loose = _rates(
            [_loose_verdicts(follows, r, a, s) for r, a, s in zip(records, answers, strict)])
    return rates


# -- the KL gap closed -----------------------------------------------------------------------

class KLGap(NamedTuple):
    kl_student: float  # token-weighted mean KL(teacher ‖ student with adapters)
    kl_base: float  # token-weighted mean KL(teacher ‖ student without adapters)
    gap_closed: float  # 1 − kl_student / kl_base (nan when kl_base is 0)


def gap_closed(kl_student: float, kl_base: float) -> float:
    """``1 − kl_student / kl_base``; nan when ``kl_base`` is 0 (the teacher is the base: no gap to close)."""
    return 1.0 - kl_student / kl_base if kl_base > 0 else math.nan


def _batches(records: Sequence[Any], size: int) -> list[Sequence[Any]]:
    if size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {size!r}.")
    return [records[i : i + size] for i in range(0, len(records), size)]


@torch.no_grad()
def kl_gap_closed(hyper: Any, teacher: nn.Module, records: Sequence[Any], collator: DistillCollator,
                  batch_size: int = 32) -> KLGap:
    """The KL gap closed by the adapters on ``records`` (labelled: each has an ``output``), see the module.

    All three models are scored on the same response tokens (the records' outputs): the
    teacher reads instruction + input, the student and the base the input alone; the base is
    the student's own forward without the adapters. Forward KL at temperature 1.
    """
    if not records:
        raise ValueError("kl_gap_closed needs at least one record.")
    student_total = base_total = 0.0
    tokens = 0
    device = next(hyper.student.parameters()).device
    for chunk in _batches(records, batch_size):
        batch = collator(list(chunk))
        out = distill_forward(hyper, teacher, batch, device)
        base = logits_at(hyper.student, batch["student_input_ids"].to(device),
                         batch["student_attention_mask"].to(device), batch["student_loss_mask"])
        n = out.student.shape[0]
        # kl_loss is a mean over the chunk's tokens: times n, it sums, so records weigh by their length.
        student_total += kl_loss(out.student, out.teacher).item() * n
        base_total += kl_loss(base, out.teacher).item() * n
        tokens += n
    kl_student, kl_base = student_total / max(tokens, 1), base_total / max(tokens, 1)
    return KLGap(kl_student, kl_base, gap_closed(kl_student, kl_base))


# -- decoding the models, with a cache for the ones that never change ------------------------

@dataclass
class AnswerCache:
    """Greedy answers of fixed models, keyed by ``(model fingerprint, prefix ids, max_new_tokens)``.

    The teacher and the base (the frozen student without adapters) answer the same way at
    every evaluation of a training run; keep one cache for the run and pass it to every
    ``compare_models`` call, so that they are decoded once. The fingerprint
    (``hyperlora.fingerprint.model_fingerprint``, computed once per ``decode`` call) keeps
    answers of another model, or of changed weights, from being served. Nothing is evicted:
    held-out sets are small and fixed. Answers are decoded in batches of the prefixes not yet
    held; a batch's left padding can move a near-tie, so an answer is the one of the batch it
    was first decoded in.
    """

    answers: dict[tuple[str, tuple[int, ...], int], str] = field(default_factory=dict)
    hits: int = 0  # answers served from the cache
    decoded: int = 0  # answers decoded (cache misses)

    def __len__(self) -> int:
        return len(self.answers)

    def clear(self) -> None:
        self.answers.clear()
        self.hits = self.decoded = 0

    def decode(self, model: nn.Module, tokenizer: Any, prefixes: Sequence[list[int]], max_new_tokens: int,
               batch_size: int = 32) -> list[str]:
        """``greedy_decode`` of every prefix, decoding only those not held (each distinct one once)."""
        fingerprint = model_fingerprint(model)
        keys = [(fingerprint, tuple(p), max_new_tokens) for p in prefixes]
        missing = list(dict.fromkeys(k for k in keys if k not in self.answers))
        for chunk in _batches(missing, batch_size):
            texts = greedy_decode(model, tokenizer, [list(k[1]) for k in chunk], max_new_tokens)
            self.answers.update(zip(chunk, texts))
        self.decoded += len(missing)
        self.hits += len(keys) - len(missing)
        return [self.answers[k] for k in keys]


@dataclass
class ModelAnswers:
    """One model's answers on the records and their figures.

    ``rouge_l`` and ``token_f1`` are means over records of the agreement with the teacher's
    greedy answer to the same record (the teacher's own are 1.0 by construction); ``on_topic``
    the mean ROUGE-L against the base's answer (the model's own answer without the instruction:
    a student trained on rewritten answers should stay close to it).
    """

    answers: list[str]
    prompt_level: float
    instruction_level: float
    rouge_l: float
    token_f1: float
    prompt_level_loose: float | None = None
    instruction_level_loose: float | None = None
    on_topic: float | None = None

    def figures(self) -> dict[str, float]:
        """The numbers alone (for a metrics logger); loose ones only when computed."""
        out = {"prompt_level": self.prompt_level, "instruction_level": self.instruction_level,
               "rouge_l": self.rouge_l, "token_f1": self.token_f1}
        if self.prompt_level_loose is not None and self.instruction_level_loose is not None:
            out["prompt_level_loose"] = self.prompt_level_loose
            out["instruction_level_loose"] = self.instruction_level_loose
        if self.on_topic is not None:
            out["on_topic"] = self.on_topic
        return out


def _adapted_answers(hyper: Any, prefixes: list[list[int]], prompts: list[str], max_new_tokens: int,
                     batch_size: int, cache: AnswerCache | None = None) -> list[str]:
    """Greedy answers with each prompt's adapter. A chunk whose adapters are all exactly zero (an untrained
    hypernetwork: its B heads start at zero) changes no logit, so its answers are the base's, from ``cache``."""
    answers: list[str] = []
    for start in range(0, len(prefixes), batch_size):
        adapters = hyper.adapters(prompts[start : start + batch_size])
        chunk = prefixes[start : start + batch_size]
        if cache is not None and all(not b.any() for _, b in adapters.values()):
            answers += cache.decode(hyper.student, hyper.tokenizer, chunk, max_new_tokens, batch_size)
            continue
        answers += greedy_decode(hyper.student, hyper.tokenizer, chunk, max_new_tokens, hyper.inject(adapters))
    return answers


@torch.no_grad()
def compare_models(hyper: Any, teacher: nn.Module, records: Sequence[Any], follows: Follows, *,
                   agnostic: Any = None, cache: AnswerCache | None = None, batch_size: int = 32,
                   max_new_tokens: int = 64, loose: bool = False) -> dict[str, ModelAnswers]:
    """Greedy answers and figures of ``student``, ``teacher``, ``base`` (and ``agnostic``) on ``records``.

    * student: ``hyper``'s adapter for the record's prompt, input alone in context;
    * teacher: no adapter, prompt and input in context (``prefix_ids(tok, prompt, input)``);
    * base: ``hyper.student`` with neither;
    * agnostic (when given): a second ``HyperLoRA`` trained with ``prompt_agnostic=True``, input alone.

    ``records`` need ``prompt`` and ``input`` (no ``output``); ``follows`` judges each answer
    against its record's instructions (see ``instruction_following``). The teacher shares
    ``hyper.tokenizer``. Teacher and base answers go through ``cache`` (a fresh one when None:
    keep one across calls to decode them once). Call it with ``hyper`` in eval mode, as for
    ``hyperlora.evaluate``: in training mode the injector applies LoRA dropout.
    """
    if not records:
        raise ValueError("compare_models needs at least one record.")
    cache = AnswerCache() if cache is None else cache
    tok = hyper.tokenizer
    bare = [prefix_ids(tok, None, r.input) for r in records]
    prompts = [r.prompt for r in records]
    answers = {
        "student": _adapted_answers(hyper, bare, prompts, max_new_tokens, batch_size, cache),
        "teacher": cache.decode(teacher, tok, [prefix_ids(tok, r.prompt, r.input) for r in records],
                                max_new_tokens, batch_size),
        "base": cache.decode(hyper.student, tok, bare, max_new_tokens, batch_size),
    }
    if agnostic is not None:
        agnostic_bare = [prefix_ids(agnostic.tokenizer, None, r.input) for r in records]
        answers["agnostic"] = _adapted_answers(agnostic, agnostic_bare, prompts, max_new_tokens, batch_size)
    reference = answers["teacher"]
    results: dict[str, ModelAnswers] = {}
    for name, texts in answers.items():
        rates = instruction_following(records, texts, follows, loose)
        results[name] = ModelAnswers(
            answers=texts,
            prompt_level=rates.prompt_level,
            instruction_level=rates.instruction_level,
            rouge_l=sum(map(rouge_l, texts, reference)) / len(texts),
            token_f1=sum(map(token_f1, texts, reference)) / len(texts),
            prompt_level_loose=rates.prompt_level_loose,
            instruction_level_loose=rates.instruction_level_loose,
            on_topic=sum(map(rouge_l, texts, answers["base"])) / len(texts),
        )
    return results
