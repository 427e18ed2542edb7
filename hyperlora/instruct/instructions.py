"""The instruction types: verifier, phrasings, parameter pools, rewriter and conflicts of each.

A type is a kind of verifiable instruction in the style of IFEval ("answer in all
capitals", "exactly N bullet points"). Parameters are plain dicts of JSON values
(``{"n": 3}``, ``{"phrase": "Of course"}``); each parameterised type has train values
and held-out values that never overlap (for ``heldout_param``). ``HELDOUT_TYPES`` are
never trained at all (for ``heldout_type``). ``CONFLICTS`` lists the pairs that cannot or
should not be asked together (lowercase and capitals, JSON and a title, ...);
``compatible`` is what ``heldout_compose`` and the train compositions draw from.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable

from hyperlora.data.suites import PooledKind, check_pools
from hyperlora.instruct.phrasings import PHRASINGS
from hyperlora.instruct.rewriters import REWRITERS, Rewriter
from hyperlora.instruct.verifiers import VERIFIERS

__all__ = [
    "InstructionType",
    "INSTRUCTION_TYPES",
    "HELDOUT_TYPES",
    "TRAIN_TYPES",
    "CONFLICTS",
    "get_type",
    "compatible",
    "render",
]

Params = dict[str, Any]
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


@dataclass(frozen=True)
class InstructionType(PooledKind):
    """One verifiable instruction type. The last phrasing is held out (``heldout_phrasing``)."""

    name: str
    verify: Callable[[str, Mapping[str, Any]], bool]
    phrasings: tuple[str, ...]
    train_params: tuple[Params, ...] = ()
    heldout_params: tuple[Params, ...] = ()
    rewriter: Rewriter | None = None
    needs_request: bool = False  # params carry the user's request (bound per example)
    ifeval: str | None = None  # the IFEval instruction id it mirrors, if any

    def __post_init__(self) -> None:
        check_pools(f"type {self.name!r}", self.phrasings, 5, self.train_params, self.heldout_params)

    @property
    def rewritable(self) -> bool:
        return self.rewriter is not None

    def sample_params(self, rng: random.Random, held_out: bool = False) -> Params:
        """A parameter dict from the train (or held-out) pool; ``{}`` for unparameterised types."""
        if not self.parameterised:
            return {}
        return dict(rng.choice(self.heldout_params if held_out else self.train_params))

    def rewrite(self, answer: str, params: Mapping[str, Any], request: str = "") -> str:
        if self.rewriter is None:
            raise ValueError(f"type {self.name!r} cannot be satisfied by rewriting an answer")
        return self.rewriter(answer, params, request)


def render(type_name: str, params: Mapping[str, Any], phrasing: int) -> str:
    """The instruction sentence: template ``phrasing`` of the type, its slots filled from ``params``."""
    fields: dict[str, str] = {k: str(v) for k, v in params.items() if k != "request"}
    if "n" in params:
        n = params["n"]
        fields["n_word"] = _NUMBER_WORDS[n] if 0 <= n < len(_NUMBER_WORDS) else str(n)
        fields["s"] = "" if n == 1 else "s"
    if "keywords" in params:
        fields["keywords"] = " and ".join(f"'{k}'" for k in params["keywords"])
    text = INSTRUCTION_TYPES[type_name].phrasings[phrasing].format(**fields)
    # A quoted phrase that ends a sentence already carries its full stop: "'Hope this helps!'." reads badly.
    return re.sub(r"([.!?])'\.$", r"\1'", text)


def _ns(*values: int) -> tuple[Params, ...]:
    return tuple({"n": v} for v in values)


def _each(key: str, *values: Any) -> tuple[Params, ...]:
    return tuple({key: v} for v in values)


def _keyword_pairs(words: tuple[str, ...]) -> tuple[Params, ...]:
    return tuple({"keywords": [a, b]} for a, b in itertools.combinations(words, 2))


_TRAIN_KEYWORDS = ("balance", "budget", "routine", "patience", "practice", "energy", "community", "future")
_HELDOUT_KEYWORDS = ("curiosity", "harmony", "resilience", "sunlight")

# Phrases contain no comma and none of the words avoid_word may forbid, so they compose.
_TRAIN_START = ("Sure", "Of course", "Here is my answer", "Good question", "Okay", "Well", "In short", "To start")
_HELDOUT_START = ("Certainly", "Happy to share", "Let me explain")
_TRAIN_END = (
    "Is there anything else I can help with?",
    "Let me know if you have other questions.",
    "Hope this helps!",
    "That is all for now.",
    "Thanks for reading.",
)
_HELDOUT_END = ("Any other questions?", "Have a nice day!", "Talk soon.")
_TRAIN_AVOID = ("very", "really", "also", "just", "important", "many", "always", "best")
_HELDOUT_AVOID = ("great", "often", "simple", "usually")


def _types() -> dict[str, InstructionType]:
    table: list[tuple[str, tuple[Params, ...], tuple[Params, ...], str | None]] = [
        ("lowercase", (), (), "change_case:english_lowercase"),
        ("uppercase", (), (), "change_case:english_capital"),
        ("no_comma", (), (), "punctuation:no_comma"),
        ("max_words", _ns(20, 40, 60, 100), _ns(30, 50, 80), "length_constraints:number_words"),
        ("min_words", _ns(40, 80, 150), _ns(60, 120), "length_constraints:number_words"),
        ("max_sentences", _ns(1, 2, 3, 5), _ns(4), "length_constraints:number_sentences"),
        ("bullets", _ns(2, 3, 5), _ns(4, 6), "detectable_format:number_bullet_lists"),
        ("paragraphs", _ns(2, 3, 5), _ns(4), "length_constraints:number_paragraphs"),
        (
            "sections",
            tuple({"splitter": s, "n": n} for s in ("SECTION", "Section") for n in (2, 3)),
            ({"splitter": "PART", "n": 2}, {"splitter": "SECTION", "n": 4}),
            "detectable_format:multiple_sections",
        ),
        ("highlights", _ns(1, 2, 3), _ns(4), "detectable_format:number_highlighted_sections"),
        ("start_with", _each("phrase", *_TRAIN_START), _each("phrase", *_HELDOUT_START), None),
        ("end_phrase", _each("phrase", *_TRAIN_END), _each("phrase", *_HELDOUT_END), "startend:end_checker"),
        (
            "include_keywords",
            _keyword_pairs(_TRAIN_KEYWORDS),
            _keyword_pairs(_HELDOUT_KEYWORDS),
            "keywords:existence",
        ),
        ("avoid_word", _each("word", *_TRAIN_AVOID), _each("word", *_HELDOUT_AVOID), "keywords:forbidden_words"),
        (
            "letter_frequency",
            tuple({"letter": c, "n": n} for c in ("z", "q", "j", "x") for n in (2, 3, 5)),
            tuple({"letter": c, "n": n} for c in ("v", "k") for n in (2, 4)),
            "keywords:letter_frequency",
        ),
        ("capital_words", _ns(2, 3, 5), _ns(4, 8), "change_case:capital_word_frequency"),
        ("quotes", (), (), "startend:quotation"),
        ("json", (), (), "detectable_format:json_format"),
        ("title", (), (), "detectable_format:title"),
        ("postscript", _each("marker", "P.S."), _each("marker", "P.P.S"), "detectable_content:postscript"),
        (
            "language",
            _each("language", "French", "Spanish", "German"),
            _each("language", "Italian", "Portuguese"),
            "language:response_language",
        ),
        ("repeat_request", (), (), "combination:repeat_prompt"),
        ("placeholders", _ns(1, 2, 3), _ns(4), "detectable_content:number_placeholders"),
    ]
    out = {}
    for name, train, held, ifeval in table:
        out[name] = InstructionType(
            name=name,
            verify=VERIFIERS[name],
            phrasings=PHRASINGS[name],
            train_params=train,
            heldout_params=held,
            rewriter=REWRITERS.get(name),
            needs_request=name == "repeat_request",
            ifeval=ifeval,
        )
    return out


INSTRUCTION_TYPES: dict[str, InstructionType] = _types()

# Never trained; each has a trained sibling (capitals, max words, title, ...) to generalise from.
HELDOUT_TYPES: tuple[str, ...] = ("lowercase", "max_sentences", "highlights", "placeholders")
TRAIN_TYPES: tuple[str, ...] = tuple(n for n in INSTRUCTION_TYPES if n not in HELDOUT_TYPES)


def _conflicts() -> frozenset[frozenset[str]]:
    pairs: set[frozenset[str]] = set()

    def add(a: str, *others: str) -> None:
        pairs.update(frozenset((a, b)) for b in others)

    everything = tuple(INSTRUCTION_TYPES)
    # Contradictions, and pairs where one makes the other trivial.
    add("lowercase", "uppercase", "capital_words", "sections")
    add("uppercase", "capital_words", "sections")
    add("max_words", "min_words", "repeat_request")
    add("max_sentences", "min_words", "repeat_request", "bullets", "paragraphs", "sections")
    add("max_sentences", "include_keywords", "postscript", "end_phrase", "title", "highlights")
    add("start_with", "repeat_request", "max_sentences")
    # Quotes around a list push the first bullet off its line start; around the request they hide it.
    add("quotes", "bullets", "repeat_request", "json")
    # The request may hold commas or the forbidden word, and must be repeated unchanged.
    add("repeat_request", "no_comma", "avoid_word", "json", "language")
    # English phrases added to, or English words checked in, an answer in another language.
    add("language", "start_with", "end_phrase", "include_keywords", "avoid_word", "postscript", "title")
    add("language", "letter_frequency", "capital_words", "uppercase", "lowercase")
    # One structure per answer: a list cut into sections or paragraphs is asking two layouts at once.
    add("bullets", "paragraphs", "sections")
    add("paragraphs", "sections")
    # JSON is only compatible with constraints on the text inside it.
    json_ok = {"lowercase", "no_comma", "include_keywords", "avoid_word", "max_words", "min_words", "letter_frequency"}
    add("json", *(t for t in everything if t not in json_ok and t != "json"))
    return frozenset(pairs)


CONFLICTS: frozenset[frozenset[str]] = _conflicts()


def compatible(a: str, b: str) -> bool:
    """``a`` and ``b`` can be asked together: different types and not a listed conflict."""
    return a != b and frozenset((a, b)) not in CONFLICTS


def get_type(name: str) -> InstructionType:
    """The type called ``name``; a ``KeyError`` that lists the known names otherwise."""
    try:
        return INSTRUCTION_TYPES[name]
    except KeyError:
        raise KeyError(f"unknown instruction type {name!r}; known: {', '.join(INSTRUCTION_TYPES)}") from None
