"""Programmatic verifiers: ``verify(answer, params) -> bool`` for every instruction type.

Where IFEval (Zhou et al., 2023, ``instruction_following_eval/instructions.py``) has the
same check, the semantics are IFEval's, down to its regular expressions: words are
``\\w+`` runs, bullets are lines starting with ``*`` or ``-``, paragraphs are split by
``***``, highlights are ``*...*``, the postscript and title patterns, the JSON fence
stripping and the quotation and end-phrase rules. Two deliberate differences, both to
keep the checks free of downloads: the case checks do not also run ``langdetect``, and
the language check counts built-in stop words (``languages.py``). Relations are named by
the type (``max_words`` means at most N, ``min_words`` at least N).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from hyperlora.instruct.languages import is_language

__all__ = [
    "VERIFIERS",
    "count_words",
    "sentence_spans",
    "count_sentences",
    "count_bullets",
    "count_paragraphs",
    "count_highlights",
    "count_sections",
    "strip_json_fence",
]

Params = Mapping[str, Any]

_WORD = re.compile(r"\w+")
# Sentence ends that are not ends: titles and Latin abbreviations before a period.
_ABBREVIATIONS = frozenset("mr mrs ms dr prof st jr sr vs etc e.g i.e a.m p.m inc ltd co no approx".split())


def count_words(text: str) -> int:
    """IFEval's word count: runs of ``\\w`` characters (nltk's ``RegexpTokenizer(r"\\w+")``)."""
    return len(_WORD.findall(text))


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of each sentence of ``text``, ends included, in order.

    Like IFEval's ``split_into_sentences``: every run of ``.``, ``?`` or ``!`` ends a
    sentence, except a period inside a token (``3.5``, ``example.com``), after a single
    letter (an initial) or after a common abbreviation (``Dr.``, ``e.g.``); newlines are
    plain spaces, so an unpunctuated list is one sentence. Closing quotes and brackets
    stay with their sentence.
    """
    spans: list[tuple[int, int]] = []
    start, i, n = 0, 0, len(text)
    while i < n:
        if text[i] not in ".?!":
            i += 1
            continue
        j = i
        while j < n and text[j] in ".?!":
            j += 1
        while j < n and text[j] in "\"')]*»”’":
            j += 1
        inside_token = j < n and not text[j].isspace()
        word = re.search(r"([\w.]+)$", text[start:i])
        before = word.group(1).lower() if word else ""
        is_abbreviation = text[i] == "." and j == i + 1 and (
            before in _ABBREVIATIONS or (len(before) == 1 and before.isalpha())
        )
        if not inside_token and not is_abbreviation:
            if text[start:j].strip():
                spans.append((start, j))
            start = j
        i = j
    if text[start:].strip():
        spans.append((start, n))
    # Leading whitespace belongs to no sentence.
    return [(s + len(text[s:e]) - len(text[s:e].lstrip()), e) for s, e in spans]


def count_sentences(text: str) -> int:
    return len(sentence_spans(text))


def count_bullets(text: str) -> int:
    """IFEval ``detectable_format:number_bullet_lists``: lines starting with ``*`` (not ``**``) or ``-``."""
    stars = re.findall(r"^\s*\*[^\*].*$", text, flags=re.MULTILINE)
    dashes = re.findall(r"^\s*-.*$", text, flags=re.MULTILINE)
    return len(stars) + len(dashes)


def count_paragraphs(text: str) -> int | None:
    """IFEval ``length_constraints:number_paragraphs``: parts between ``***`` dividers.

    ``None`` when a paragraph in the middle is empty (IFEval fails such an answer
    whatever N is); an empty first or last part is not counted.
    """
    parts = re.split(r"\s?\*\s?\*\s?\*\s?", text)
    count = len(parts)
    for index, part in enumerate(parts):
        if not part.strip():
            if index in (0, len(parts) - 1):
                count -= 1
            else:
                return None
    return count


def count_highlights(text: str) -> int:
    """IFEval ``detectable_format:number_highlighted_sections``: non-empty ``*...*`` and ``**...**`` on one line."""
    singles = re.findall(r"\*[^\n\*]*\*", text)
    doubles = re.findall(r"\*\*[^\n\*]*\*\*", text)
    found = [h for h in singles if h.strip("*").strip()]
    found += [h for h in doubles if h.removeprefix("**").removesuffix("**").strip()]
    return len(found)


def count_sections(text: str, splitter: str) -> int:
    """IFEval ``detectable_format:multiple_sections``: parts after ``{splitter} {number}`` markers."""
    return len(re.split(r"\s?" + re.escape(splitter) + r"\s?\d+\s?", text)) - 1


def strip_json_fence(text: str) -> str:
    """The answer without a surrounding Markdown code fence, as IFEval strips it."""
    value = text.strip()
    for prefix in ("```json", "```Json", "```JSON", "```"):
        value = value.removeprefix(prefix)
    return value.removesuffix("```").strip()


# --- the verifiers ---------------------------------------------------------------------------


def _lowercase(answer: str, _: Params) -> bool:
    return answer.islower()


def _uppercase(answer: str, _: Params) -> bool:
    return answer.isupper()


def _no_comma(answer: str, _: Params) -> bool:
    return "," not in answer


def _max_words(answer: str, p: Params) -> bool:
    return count_words(answer) <= p["n"]


def _min_words(answer: str, p: Params) -> bool:
    return count_words(answer) >= p["n"]


def _max_sentences(answer: str, p: Params) -> bool:
    return 0 < count_sentences(answer) <= p["n"]


def _bullets(answer: str, p: Params) -> bool:
    return count_bullets(answer) == p["n"]


def _paragraphs(answer: str, p: Params) -> bool:
    return count_paragraphs(answer) == p["n"]


def _sections(answer: str, p: Params) -> bool:
    return count_sections(answer, p["splitter"]) >= p["n"]


def _highlights(answer: str, p: Params) -> bool:
    return count_highlights(answer) >= p["n"]


def _starts_with(text: str, phrase: str) -> bool:
    # The phrase must end where a word ends: "Sure" is not the start of "Surely".
    head = text[: len(phrase)]
    rest = text[len(phrase) : len(phrase) + 1]
    return head.lower() == phrase.lower() and not (rest.isalnum() and phrase[-1:].isalnum())


def _start_with(answer: str, p: Params) -> bool:
    # Quotes around the whole answer are allowed, as IFEval allows them at the end.
    return _starts_with(answer.strip().lstrip('"').lstrip(), p["phrase"].strip())


def _end_phrase(answer: str, p: Params) -> bool:
    return answer.strip().strip('"').lower().endswith(p["phrase"].strip().lower())


def _include_keywords(answer: str, p: Params) -> bool:
    return all(re.search(re.escape(k), answer, flags=re.IGNORECASE) for k in p["keywords"])


def _avoid_word(answer: str, p: Params) -> bool:
    return not re.search(r"\b" + re.escape(p["word"]) + r"\b", answer, flags=re.IGNORECASE)


def _letter_frequency(answer: str, p: Params) -> bool:
    return answer.lower().count(p["letter"].lower()) >= p["n"]


def _capital_words(answer: str, p: Params) -> bool:
    return sum(w.isupper() for w in _WORD.findall(answer)) >= p["n"]


def _quotes(answer: str, _: Params) -> bool:
    value = answer.strip()
    return len(value) > 1 and value[0] == '"' and value[-1] == '"'


def _json(answer: str, _: Params) -> bool:
    try:
        json.loads(strip_json_fence(answer))
    except ValueError:
        return False
    return True


def _title(answer: str, _: Params) -> bool:
    return any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", answer))


def _postscript(answer: str, p: Params) -> bool:
    marker = p["marker"]
    if marker.startswith("P.P.S"):
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif marker == "P.S.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + re.escape(marker.lower()) + r".*$"
    return bool(re.findall(pattern, answer.lower(), flags=re.MULTILINE))


def _language(answer: str, p: Params) -> bool:
    return is_language(answer, p["language"])


def _repeat_request(answer: str, p: Params) -> bool:
    return answer.strip().lower().startswith(p["request"].strip().lower())


def _placeholders(answer: str, p: Params) -> bool:
    return len(re.findall(r"\[.*?\]", answer)) >= p["n"]


VERIFIERS = {
    "lowercase": _lowercase,
    "uppercase": _uppercase,
    "no_comma": _no_comma,
    "max_words": _max_words,
    "min_words": _min_words,
    "max_sentences": _max_sentences,
    "bullets": _bullets,
    "paragraphs": _paragraphs,
    "sections": _sections,
    "highlights": _highlights,
    "start_with": _start_with,
    "end_phrase": _end_phrase,
    "include_keywords": _include_keywords,
    "avoid_word": _avoid_word,
    "letter_frequency": _letter_frequency,
    "capital_words": _capital_words,
    "quotes": _quotes,
    "json": _json,
    "title": _title,
    "postscript": _postscript,
    "language": _language,
    "repeat_request": _repeat_request,
    "placeholders": _placeholders,
}
