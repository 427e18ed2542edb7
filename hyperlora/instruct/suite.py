"""The instruction suite for real LMs: IFEval-style instructions on everyday requests, in splits.

Every example is an instruction (one type, or two compatible types at once) and a user
request from ``questions.py``; there is no reference output: an answer is judged by the
types' verifiers (``Example.follows``), and a model's own answer can be turned into a
passing one by the rewriters (``Example.rewrite``). The same ``(split, n, seed)`` gives
the same examples in every process (``random.Random`` seeded with strings only).

Splits (``SPLITS``), each probing one kind of generalisation:

- ``train``: the types of ``TRAIN_TYPES`` with their train phrasings (all but the last)
  and train parameter values; a ``COMPOSE_FRACTION`` share asks two at once (``TRAIN_PAIRS``).
- ``train_unseen_questions``: the very same instructions as ``train``, element by element
  for the same ``n`` and ``seed``, on requests from ``UNSEEN_QUESTIONS``.
- ``heldout_phrasing``: every trained type worded with its held-out (last) phrasing.
- ``heldout_param``: parameterised trained types with held-out values (unseen N, phrases,
  keywords, words, letters, languages).
- ``heldout_type``: the ``HELDOUT_TYPES``, never trained in any form.
- ``heldout_compose``: two trained types at once, in pairs (``HELDOUT_PAIRS``) that never
  appear together in train, in either order.

Every split but ``train`` draws its requests from ``UNSEEN_QUESTIONS``, so no evaluation
request is ever a train request.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from hyperlora.data.records import Record
from hyperlora.data.suites import check_split_request
from hyperlora.instruct.instructions import (
    HELDOUT_TYPES,
    INSTRUCTION_TYPES,
    TRAIN_TYPES,
    compatible,
    render,
)
from hyperlora.instruct.questions import TRAIN_QUESTIONS, UNSEEN_QUESTIONS
from hyperlora.instruct.rewriters import rewrite_all

__all__ = [
    "SPLITS",
    "COMPOSE_FRACTION",
    "TRAIN_PAIRS",
    "HELDOUT_PAIRS",
    "Instruction",
    "Example",
    "build_split",
    "as_records",
    "index_by_record",
    "follows",
]

SPLITS: tuple[str, ...] = (
    "train",
    "train_unseen_questions",
    "heldout_phrasing",
    "heldout_param",
    "heldout_type",
    "heldout_compose",
)
COMPOSE_FRACTION = 0.2
HELDOUT_PAIR_FRACTION = 0.25
_STRUCTURE_SEED = "hyperlora.instruct/structure/v1"


@dataclass(frozen=True)
class Instruction:
    """One instruction: a type, its parameters (a plain JSON-able dict) and the phrasing index."""

    type: str
    params: dict[str, Any]
    phrasing: int

    @property
    def text(self) -> str:
        return render(self.type, self.params, self.phrasing)

    def verify(self, answer: str) -> bool:
        return INSTRUCTION_TYPES[self.type].verify(answer, self.params)


@dataclass(frozen=True)
class Example:
    """An instruction (one or two ``Instruction``s) and a user request; no reference answer."""

    instruction: str
    question: str
    instructions: tuple[Instruction, ...]
    split: str

    @property
    def types(self) -> tuple[str, ...]:
        return tuple(i.type for i in self.instructions)

    @property
    def rewritable(self) -> bool:
        return all(INSTRUCTION_TYPES[t].rewritable for t in self.types)

    def follows(self, answer: str) -> tuple[bool, list[bool]]:
        """(all instructions followed, one verdict per instruction): IFEval's prompt and instruction level."""
        each = [i.verify(answer) for i in self.instructions]
        return all(each), each

    def check(self, answer: str) -> bool:
        return self.follows(answer)[0]

    def rewrite(self, answer: str) -> str | None:
        """``answer`` (written without the instruction) rewritten to follow it, or ``None`` when impossible."""
        return rewrite_all(answer, [(i.type, i.params) for i in self.instructions], self.question)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form; ``Example.from_dict`` reads it back."""
        return {
            "instruction": self.instruction,
            "question": self.question,
            "split": self.split,
            "instructions": [{"type": i.type, "params": i.params, "phrasing": i.phrasing} for i in self.instructions],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Example:
        parts = tuple(Instruction(d["type"], dict(d["params"]), int(d["phrasing"])) for d in data["instructions"])
        return cls(data["instruction"], data["question"], parts, data["split"])


def follows(example: Example, answer: str) -> tuple[bool, list[bool]]:
    """IFEval's strict prompt-level verdict and the per-instruction verdicts of ``answer``."""
    return example.follows(answer)


# --- structure: which pairs compose, and which are held out ----------------------------------


def _pairs() -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]:
    unordered = [tuple(sorted(p)) for p in itertools.combinations(TRAIN_TYPES, 2) if compatible(*p)]
    random.Random(_STRUCTURE_SEED).shuffle(unordered)
    cut = round(HELDOUT_PAIR_FRACTION * len(unordered))
    return tuple(sorted(unordered[cut:])), tuple(sorted(unordered[:cut]))


TRAIN_PAIRS, HELDOUT_PAIRS = _pairs()


# --- sampling --------------------------------------------------------------------------------

_Spec = tuple[str, dict[str, Any], int]


def _single(rng: random.Random, name: str, heldout_phrasing: bool = False, heldout_param: bool = False) -> _Spec:
    kind = INSTRUCTION_TYPES[name]
    phrasing = rng.choice(kind.heldout_phrasings if heldout_phrasing else kind.train_phrasings)
    return name, kind.sample_params(rng, heldout_param), phrasing


def _pair(rng: random.Random, pair: tuple[str, str]) -> list[_Spec]:
    names = list(pair)
    rng.shuffle(names)  # either order of the two sentences
    return [_single(rng, n) for n in names]


def _sample(split: str, rng: random.Random) -> list[_Spec]:
    if split == "train":
        if rng.random() < COMPOSE_FRACTION:
            return _pair(rng, rng.choice(TRAIN_PAIRS))
        return [_single(rng, rng.choice(TRAIN_TYPES))]
    if split == "heldout_phrasing":
        return [_single(rng, rng.choice(TRAIN_TYPES), heldout_phrasing=True)]
    if split == "heldout_param":
        names = [n for n in TRAIN_TYPES if INSTRUCTION_TYPES[n].parameterised]
        return [_single(rng, rng.choice(names), heldout_param=True)]
    if split == "heldout_type":
        return [_single(rng, rng.choice(HELDOUT_TYPES))]
    if split == "heldout_compose":
        return _pair(rng, rng.choice(HELDOUT_PAIRS))
    raise AssertionError(split)


def _example(specs: list[_Spec], question: str, split: str) -> Example:
    parts = []
    for name, params, phrasing in specs:
        if INSTRUCTION_TYPES[name].needs_request:
            params = {**params, "request": question}
        parts.append(Instruction(name, params, phrasing))
    return Example(" ".join(p.text for p in parts), question, tuple(parts), split)


def build_split(split: str, n: int, seed: int = 0) -> list[Example]:
    """``n`` examples of ``split`` (one of ``SPLITS``), identical for the same arguments in any process.

    Instructions and requests come from two separate seeded streams;
    ``train_unseen_questions`` shares ``train``'s instruction stream, so its i-th
    instruction equals train's i-th for the same ``n`` and ``seed``.
    """
    check_split_request(split, n, SPLITS)
    task_split = "train" if split == "train_unseen_questions" else split
    task_rng = random.Random(f"hyperlora.instruct/{task_split}/{seed}/instructions")
    question_rng = random.Random(f"hyperlora.instruct/{split}/{seed}/questions")
    pool = TRAIN_QUESTIONS if split == "train" else UNSEEN_QUESTIONS
    return [_example(_sample(task_split, task_rng), question_rng.choice(pool), split) for _ in range(n)]


def as_records(examples: Iterable[Example]) -> list[Record]:
    """The examples as ``Record(prompt=instruction, input=question, output=None)``."""
    return [Record(e.instruction, e.question, None) for e in examples]


def index_by_record(examples: Iterable[Example]) -> dict[tuple[str, str], Example]:
    """``(prompt, input) -> Example``, to find the verifiers of a ``Record`` made by ``as_records``."""
    return {(e.instruction, e.question): e for e in examples}
