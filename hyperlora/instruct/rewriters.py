"""Rewriters: ``rewrite(answer, params, request) -> str`` turns a model's own answer, written
*without* the instruction, into one that passes the instruction's verifier.

Each changes the answer as little as it can, so that the rewrite stays on topic and
mostly in the model's own words: case is changed, not words; bullets, paragraphs and
sections regroup the answer's own sentences; a first phrase, a closing phrase, a title
or a postscript is added around it; a length limit cuts at a sentence (or word)
boundary. Types no rewrite can satisfy honestly (a named language, at least N words, a
letter count, placeholders) have none (``REWRITERS`` lacks them).

``rewrite_all`` applies several in ``REWRITE_ORDER`` (truncation first, then structure,
then additions at the front and the back, then word, case and wrapping changes), so
that a later rewrite never undoes an earlier one for the compatible pairs of the suite.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hyperlora.instruct.verifiers import VERIFIERS, count_words, sentence_spans

__all__ = [
    "REWRITERS",
    "REWRITE_ORDER",
    "SYNONYMS",
    "POSTSCRIPT_TEXT",
    "make_title",
    "rewrite_all",
]

Params = Mapping[str, Any]
Rewriter = Callable[[str, Params, str], str]

# Replacements for the words ``avoid_word`` may forbid (instructions.py draws only from these).
SYNONYMS: dict[str, str] = {
    "very": "quite",
    "really": "truly",
    "also": "additionally",
    "just": "simply",
    "important": "essential",
    "many": "numerous",
    "always": "consistently",
    "best": "finest",
    "great": "wonderful",
    "often": "frequently",
    "simple": "basic",
    "usually": "typically",
}
POSTSCRIPT_TEXT = "Let me know if you want more detail."
_BULLET_MARK = re.compile(r"^\s*(?:[*\-+•]|\d+[.)])\s+")
_TRAILING_PUNCT = ",;:-–— "


# --- helpers ----------------------------------------------------------------------------


def _plain(text: str) -> str:
    """Markdown stars removed (list stars become dashes): they would count as dividers or highlights."""
    text = re.sub(r"^(\s*)\*(\s+)", r"\1-\2", text, flags=re.MULTILINE)
    return text.replace("*", "")


def _units(text: str) -> list[str]:
    """The answer's sentences, one line each, list markers and stars removed."""
    units = []
    for line in _plain(text).splitlines():
        line = _BULLET_MARK.sub("", line).strip()
        if not line:
            continue
        units.extend(line[s:e].strip() for s, e in sentence_spans(line))
    return [u for u in units if u]


def _split_to(units: list[str], n: int) -> list[str]:
    """At least ``n`` units: the longest is cut in two at a word until there are enough."""
    units = list(units)
    while len(units) < n:
        longest = max(range(len(units)), key=lambda i: len(units[i].split())) if units else None
        if longest is None or len(units[longest].split()) < 2:
            break
        words = units[longest].split()
        half = len(words) // 2
        units[longest : longest + 1] = [" ".join(words[:half]), " ".join(words[half:])]
    return units


def _groups(units: list[str], n: int) -> list[list[str]]:
    """``units`` in ``n`` contiguous groups of near-equal size (earlier groups one larger)."""
    size, extra = divmod(len(units), n)
    out, at = [], 0
    for i in range(n):
        take = size + (1 if i < extra else 0)
        out.append(units[at : at + take])
        at += take
    return out


def _chunks(answer: str, n: int) -> list[str] | None:
    """The answer in ``n`` non-empty single-line chunks, or ``None`` when it has fewer than ``n`` words."""
    units = _split_to(_units(answer), n)
    if len(units) < n:
        return None
    return [" ".join(g) for g in _groups(units, n)]


def make_title(request: str, answer: str, max_words: int = 6) -> str:
    """A short title from the request (or the answer's first words): letters, digits and spaces only."""
    source = request.strip() or answer.strip()
    words = re.findall(r"[^\W_]+(?:'[^\W_]+)?", source)[:max_words]
    return " ".join(w[:1].upper() + w[1:] for w in words) or "Answer"


def _match_case(word: str, like: str) -> str:
    if like.isupper() and len(like) > 1:
        return word.upper()
    if like[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def _truncate_words(text: str, n: int) -> str:
    """The longest prefix with at most ``n`` words, at a sentence end when that keeps most of it."""
    if count_words(text) <= n:
        return text
    matches = list(re.finditer(r"\w+", text))
    cut = matches[n].start()
    # Back up to whitespace so a word like "don't" is not cut into "don'".
    while cut > 0 and not text[cut - 1].isspace():
        cut -= 1
    ends = [e for _, e in sentence_spans(text) if e <= cut]
    if ends and count_words(text[: ends[-1]]) >= 0.6 * n:
        return text[: ends[-1]].rstrip()
    kept = text[:cut].rstrip().rstrip(_TRAILING_PUNCT)
    return kept + "..." if kept and kept[-1] not in ".!?" else kept


# --- the rewriters --------------------------------------------------------------------------


def _lowercase(answer: str, _: Params, __: str) -> str:
    return answer.lower()


def _uppercase(answer: str, _: Params, __: str) -> str:
    return answer.upper()


def _no_comma(answer: str, _: Params, __: str) -> str:
    text = re.sub(r"(?<=\d),(?=\d{3})", "", answer)  # 1,000 -> 1000
    text = re.sub(r"[ \t]*,[ \t]*", " ", text)  # never across a line end: lists keep their lines
    return re.sub(r"[ \t]+\n", "\n", text).strip()


def _max_words(answer: str, p: Params, __: str) -> str:
    return _truncate_words(answer, p["n"])


def _max_sentences(answer: str, p: Params, __: str) -> str:
    spans = sentence_spans(answer)
    if len(spans) <= p["n"]:
        return answer
    return answer[: spans[p["n"] - 1][1]].rstrip()


def _bullets(answer: str, p: Params, __: str) -> str:
    chunks = _chunks(answer, p["n"])
    return answer if chunks is None else "\n".join(f"* {c}" for c in chunks)


def _paragraphs(answer: str, p: Params, __: str) -> str:
    n = p["n"]
    # Keep the answer's own paragraphs when it has enough of them.
    paras = [q.strip() for q in re.split(r"\n\s*\n", _plain(answer)) if q.strip()]
    if len(paras) >= n:
        chunks = ["\n\n".join(g) for g in _groups(paras, n)]
    else:
        chunks = _chunks(answer, n)
        if chunks is None:
            return answer
    return "\n\n***\n\n".join(chunks)


def _sections(answer: str, p: Params, __: str) -> str:
    chunks = _chunks(answer, p["n"])
    if chunks is None:
        return answer
    return "\n\n".join(f"{p['splitter']} {i}\n{c}" for i, c in enumerate(chunks, start=1))


def _marker_end(line: str) -> int:
    mark = _BULLET_MARK.match(line)
    return mark.end() if mark else 0


def _highlights(answer: str, p: Params, __: str) -> str:
    # "* *text*" would read as an empty highlight "* *" to IFEval's pattern: star bullets become dashes
    # (still bullets to it). Candidate spans (line, start, end): star-free sentences inside one line, after any list
    # marker; star-free words when there are too few. Other stars (bold, dividers) stay.
    lines = re.sub(r"^(\s*)\*(\s+)", r"\1-\2", answer, flags=re.MULTILINE).split("\n")
    spans = []
    for k, line in enumerate(lines):
        at = _marker_end(line)
        spans += [(k, at + s, at + e) for s, e in sentence_spans(line[at:]) if "*" not in line[at + s : at + e]]
    if len(spans) < p["n"]:
        spans = []
        for k, line in enumerate(lines):
            at = _marker_end(line)
            spans += [(k, at + m.start(), at + m.end()) for m in re.finditer(r"[^\s*]+", line[at:])]
    for k, s, e in reversed(spans[: p["n"]]):  # right to left keeps earlier offsets valid
        line = lines[k]
        body = line[s:e].rstrip()
        lines[k] = line[:s] + "*" + body + "*" + line[s + len(body) :]
    return "\n".join(lines)


def _start_with(answer: str, p: Params, __: str) -> str:
    phrase = p["phrase"]
    body = answer.strip()
    if VERIFIERS["start_with"](body, p):
        return body
    if _BULLET_MARK.match(body) or body.startswith(("<<", "#")):
        return f"{phrase}\n{body}"  # a list's first line must stay a list line
    sep = " " if phrase[-1:] in ".!?:" else ". "
    return f"{phrase}{sep}{body}"


def _end_phrase(answer: str, p: Params, __: str) -> str:
    if VERIFIERS["end_phrase"](answer, p):
        return answer
    return f"{answer.rstrip()}\n\n{p['phrase']}"


def _include_keywords(answer: str, p: Params, __: str) -> str:
    missing = [k for k in p["keywords"] if not re.search(re.escape(k), answer, flags=re.IGNORECASE)]
    if not missing:
        return answer
    return f"{answer.rstrip()}\n\nKey words: {' and '.join(missing)}."


def _avoid_word(answer: str, p: Params, __: str) -> str:
    word = p["word"]
    replacement = SYNONYMS.get(word.lower(), "")

    def swap(m: re.Match[str]) -> str:
        return _match_case(replacement, m.group(0)) if replacement else ""

    text = re.sub(r"\b" + re.escape(word) + r"\b", swap, answer, flags=re.IGNORECASE)
    return re.sub(r"[ \t]{2,}", " ", text)


def _capital_words(answer: str, p: Params, __: str) -> str:
    need = p["n"] - sum(w.isupper() for w in re.findall(r"\w+", answer))
    if need <= 0:
        return answer

    def upper(m: re.Match[str]) -> str:
        nonlocal need
        word = m.group(0)
        if need > 0 and not word.isupper() and any(c.isalpha() for c in word):
            need -= 1
            return word.upper()
        return word

    return re.sub(r"\w+", upper, answer)


def _quotes(answer: str, _: Params, __: str) -> str:
    body = answer.strip()
    if len(body) > 1 and body[0] == '"' and body[-1] == '"':
        return body
    return f'"{body}"'


def _json(answer: str, _: Params, __: str) -> str:
    return json.dumps({"answer": answer.strip()}, ensure_ascii=False)


def _title(answer: str, _: Params, request: str) -> str:
    if VERIFIERS["title"](answer, {}):
        return answer
    return f"<<{make_title(request, answer)}>>\n\n{answer.lstrip()}"


def _postscript(answer: str, p: Params, __: str) -> str:
    if VERIFIERS["postscript"](answer, p):
        return answer
    return f"{answer.rstrip()}\n\n{p['marker']} {POSTSCRIPT_TEXT}"


def _repeat_request(answer: str, p: Params, request: str) -> str:
    request = p.get("request", request).strip()
    if VERIFIERS["repeat_request"](answer, {"request": request}):
        return answer
    return f"{request}\n\n{answer.lstrip()}"


REWRITERS: dict[str, Rewriter] = {
    "lowercase": _lowercase,
    "uppercase": _uppercase,
    "no_comma": _no_comma,
    "max_words": _max_words,
    "max_sentences": _max_sentences,
    "bullets": _bullets,
    "paragraphs": _paragraphs,
    "sections": _sections,
    "highlights": _highlights,
    "start_with": _start_with,
    "end_phrase": _end_phrase,
    "include_keywords": _include_keywords,
    "avoid_word": _avoid_word,
    "capital_words": _capital_words,
    "quotes": _quotes,
    "json": _json,
    "title": _title,
    "postscript": _postscript,
    "repeat_request": _repeat_request,
}

# Truncation, structure, front additions, back additions, word changes, case, wrapping.
# Capital words come before structure so that a "Section 1" header is not capitalised.
REWRITE_ORDER: tuple[str, ...] = (
    "max_words", "max_sentences",
    "capital_words",
    "bullets", "paragraphs", "sections", "highlights",
    "title", "start_with", "repeat_request",
    "include_keywords", "postscript", "end_phrase",
    "avoid_word", "lowercase", "uppercase", "no_comma",
    "json", "quotes",
)  # fmt: skip
assert set(REWRITE_ORDER) == set(REWRITERS)

_TRUNCATORS = {"max_words": count_words, "max_sentences": lambda t: len(sentence_spans(t))}


def rewrite_all(answer: str, specs: Sequence[tuple[str, Params]], request: str = "") -> str | None:
    """``answer`` rewritten for every ``(type, params)`` in ``specs``, or ``None`` when that fails.

    ``None`` when a type has no rewriter, or when the result does not pass every
    verifier (a degenerate answer: empty, or too short to make N bullets). Length limits
    are applied first; when later additions (a title, a closing phrase) push the answer
    over its limit, the limit is tightened by the excess and the whole rewrite redone.
    """
    if any(name not in REWRITERS for name, _ in specs):
        return None
    ordered = sorted(specs, key=lambda s: REWRITE_ORDER.index(s[0]))
    budgets = {name: p["n"] for name, p in ordered if name in _TRUNCATORS}
    for _ in range(8):
        text = answer
        kept: dict[str, int] = {}  # what each truncation actually kept (at most its budget)
        for name, params in ordered:
            if name in budgets:
                params = {**params, "n": budgets[name]}
            text = REWRITERS[name](text, params, request)
            if name in budgets:
                kept[name] = _TRUNCATORS[name](text)
        if all(VERIFIERS[name](text, params) for name, params in specs):
            return text
        over = {
            name: _TRUNCATORS[name](text) - p["n"]
            for name, p in ordered
            if name in budgets and _TRUNCATORS[name](text) > p["n"]
        }
        if not over:
            return None
        for name, excess in over.items():
            budgets[name] = min(budgets[name], kept[name]) - excess
            if budgets[name] < 1:
                return None
    return None
