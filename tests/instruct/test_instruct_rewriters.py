"""Rewriters turn realistic plain answers into passing ones while keeping the answer's own words."""

from __future__ import annotations

import itertools
import re

import pytest
from instruct_answers import PLAIN_ANSWERS

from hyperlora.instruct.instructions import INSTRUCTION_TYPES, TRAIN_TYPES, compatible
from hyperlora.instruct.rewriters import REWRITE_ORDER, REWRITERS, SYNONYMS, rewrite_all

REWRITABLE = [n for n, t in INSTRUCTION_TYPES.items() if t.rewritable]
TRUNCATING = {"max_words", "max_sentences"}


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _kept(original: str, rewritten: str) -> float:
    """Share of the original's words (as a multiset) that are still in the rewrite."""
    left = _words(rewritten)
    kept = 0
    for w in _words(original):
        if w in left:
            left.remove(w)
            kept += 1
    return kept / max(1, len(_words(original)))


def _params(name: str, request: str, held_out: bool = True) -> list[dict]:
    kind = INSTRUCTION_TYPES[name]
    values = list(kind.train_params + (kind.heldout_params if held_out else ())) or [{}]
    return [{**v, "request": request} if kind.needs_request else v for v in values]


def test_which_types_are_rewritable() -> None:
    assert set(REWRITERS) == set(REWRITE_ORDER) == set(REWRITABLE)
    assert len(REWRITABLE) >= 15
    # No honest rewrite makes an answer French, longer, or full of a letter.
    for name in ("language", "min_words", "letter_frequency", "placeholders"):
        assert not INSTRUCTION_TYPES[name].rewritable
        with pytest.raises(ValueError, match="cannot be satisfied by rewriting"):
            INSTRUCTION_TYPES[name].rewrite("text", {})


@pytest.mark.parametrize("name", REWRITABLE)
def test_rewrite_passes_the_verifier_and_keeps_the_answer(name: str) -> None:
    kind = INSTRUCTION_TYPES[name]
    assert len(PLAIN_ANSWERS) >= 5
    for request, answer in PLAIN_ANSWERS:
        for params in _params(name, request):
            out = kind.rewrite(answer, params, request)
            assert kind.verify(out, params) is True, (name, params, out)
            if name in TRUNCATING:
                # A limit cuts the answer: what is left is the answer's own beginning.
                assert re.sub(r"\.\.\.$", "", out) and answer.startswith(re.sub(r"\.\.\.$", "", out)), (name, out)
                assert _words(out) and _kept(out, answer) == 1.0
            else:
                assert _kept(answer, out) >= 0.9, (name, params, out)
                # ... and adds little of its own (a title, a closing phrase, "SECTION 1" headers).
                assert len(_words(out)) <= len(_words(answer)) + 25, (name, params, out)


def test_rewrite_is_identity_where_the_answer_already_follows() -> None:
    kind = INSTRUCTION_TYPES
    already = "SURE. IT WORKS.\n\nP.S. BYE"
    assert kind["uppercase"].rewrite(already, {}) == already
    assert kind["start_with"].rewrite(already, {"phrase": "Sure"}) == already
    assert kind["postscript"].rewrite(already, {"marker": "P.S."}) == already
    assert kind["max_words"].rewrite(already, {"n": 20}) == already
    assert kind["quotes"].rewrite('"x y"', {}) == '"x y"'


def test_small_rewrites_do_what_they_say() -> None:
    kind = INSTRUCTION_TYPES
    assert kind["no_comma"].rewrite("We sold 1,000 cups, plates, and bowls.", {}) == "We sold 1000 cups plates and bowls."
    assert kind["avoid_word"].rewrite("Very nice, VERY good and very easy.", {"word": "very"}) == (
        "Quite nice, QUITE good and quite easy."
    )
    assert kind["start_with"].rewrite("Paris is the capital.", {"phrase": "Sure"}) == "Sure. Paris is the capital."
    assert kind["start_with"].rewrite("* a\n* b", {"phrase": "Sure"}) == "Sure\n* a\n* b"
    assert kind["max_words"].rewrite("One two three. Four five six seven.", {"n": 5}) == "One two three."
    assert kind["max_words"].rewrite("One two three four five six seven.", {"n": 5}) == "One two three four five..."
    assert kind["bullets"].rewrite("Red car. Blue bus. Green van.", {"n": 2}) == "* Red car. Blue bus.\n* Green van."
    assert kind["bullets"].rewrite("Red car and blue bus.", {"n": 2}) == "* Red car\n* and blue bus."
    assert kind["title"].rewrite("Text.", {}, "Explain how a compass works.").startswith("<<Explain How A Compass Works>>")
    assert kind["json"].rewrite('Say "hi".\nBye.', {}) == '{"answer": "Say \\"hi\\".\\nBye."}'


def test_synonyms_cover_every_forbidden_word_and_never_reintroduce_it() -> None:
    words = {p["word"] for p in INSTRUCTION_TYPES["avoid_word"].train_params + INSTRUCTION_TYPES["avoid_word"].heldout_params}
    assert words <= set(SYNONYMS)
    assert all(w not in _words(SYNONYMS[w]) for w in words)


def test_every_compatible_pair_rewrites_to_pass_both() -> None:
    names = [n for n in TRAIN_TYPES if INSTRUCTION_TYPES[n].rewritable]
    pairs = [p for p in itertools.combinations(names, 2) if compatible(*p)]
    assert len(pairs) >= 60
    for a, b in pairs:
        for request, answer in PLAIN_ANSWERS:
            # Compositions are asked with train values (heldout_compose); held-out values are covered alone.
            for pa, pb in itertools.product(_params(a, request, False), _params(b, request, False)):
                out = rewrite_all(answer, [(a, pa), (b, pb)], request)
                assert out is not None, (a, pa, b, pb, request)
                assert INSTRUCTION_TYPES[a].verify(out, pa) and INSTRUCTION_TYPES[b].verify(out, pb)


def test_rewrite_all_gives_none_when_it_cannot() -> None:
    assert rewrite_all("Bonjour.", [("language", {"language": "French"})]) is None
    assert rewrite_all("", [("bullets", {"n": 3})]) is None  # nothing to make three bullets of
    assert rewrite_all("One two.", [("max_words", {"n": 1}), ("end_phrase", {"phrase": "Thanks for reading."})]) is None
