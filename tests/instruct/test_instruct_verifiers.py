"""Every verifier on hand-written passing and failing answers (IFEval's semantics where it has them)."""

from __future__ import annotations

import pytest

from hyperlora.instruct.instructions import INSTRUCTION_TYPES
from hyperlora.instruct.languages import detect_language
from hyperlora.instruct.verifiers import VERIFIERS, count_paragraphs, count_sentences, count_words

REQ = "Explain how a compass works."
FR = "Le soleil est une étoile. Il donne la lumière et la chaleur à la Terre, et nous en avons besoin pour vivre."
ES = "El sol es una estrella. Nos da luz y calor, y la vida en la Tierra depende de él para todo."
DE = "Die Sonne ist ein Stern. Sie gibt uns Licht und Wärme, und das Leben auf der Erde hängt von ihr ab."
IT = "Il sole è una stella. Ci dà luce e calore, e la vita sulla Terra dipende da lui per tutto."
PT = "O sol é uma estrela. Ele nos dá luz e calor, e a vida na Terra depende dele para tudo."
EN = "The sun is a star. It gives us light and heat, and life on Earth depends on it."

# (type, params, passing answers, failing answers)
CASES: list[tuple[str, dict, list[str], list[str]]] = [
    ("lowercase", {}, ["all lower case here.", "hello, world! 123"], ["Hello world.", "all lower but ONE", "123"]),
    ("uppercase", {}, ["ALL CAPS HERE.", "HELLO, WORLD 42!"], ["ALL CAPS but not this", "Hello", "..."]),
    ("no_comma", {}, ["No commas at all here.", "Lists\n* one\n* two"], ["One, two.", "1,000 people"]),
    ("max_words", {"n": 5}, ["One two three four five.", "Short."], ["One two three four five six.", "a b c d e f g"]),
    ("max_words", {"n": 3}, ["don't stop", "It's fine"], ["don't stop now", "it's really fine"]),  # \w+ runs
    ("min_words", {"n": 4}, ["One two three four.", "This has more than four words."], ["Too short here.", ""]),
    ("max_sentences", {"n": 2}, ["One. Two!", "Dr. Smith paid 3.50 dollars. That is all."], ["One. Two. Three.", ""]),
    ("bullets", {"n": 2}, ["* one\n* two", "Intro:\n- first\n- second\nThe end."], ["* one", "* a\n* b\n* c", "**bold**\n* a"]),
    ("paragraphs", {"n": 2}, ["First.\n***\nSecond.", "First.\n\n***\n\nSecond.\n***"], ["One only.", "A\n***\n***\nB", "A\n***\nB\n***\nC"]),
    ("sections", {"splitter": "SECTION", "n": 2}, ["SECTION 1\nIntro.\nSECTION 2\nMore.", "SECTION 1 a SECTION 2 b SECTION 3 c"], ["SECTION 1\nOnly one.", "Section 1 a Section 2 b"]),
    ("highlights", {"n": 2}, ["*one* and *two*", "**bold part** and *italic part*"], ["*one* only", "* * empty", "*across\nlines*"]),
    ("start_with", {"phrase": "Of course"}, ["Of course! Here it is.", '  "of course, yes"'], ["Sure, of course.", "Of coursework is hard."]),
    ("end_phrase", {"phrase": "Hope this helps!"}, ["Answer.\n\nHope this helps!", '"Answer. hope this helps!"  '], ["Hope this helps! More.", "Answer."]),
    ("include_keywords", {"keywords": ["budget", "routine"]}, ["A Budget and a routine.", "budgeting routines"], ["Only a budget.", "Nothing here."]),
    ("avoid_word", {"word": "very"}, ["It is quite good.", "Everything is fine."], ["It is very good.", "VERY nice."]),
    ("letter_frequency", {"letter": "z", "n": 3}, ["Zebras zigzag lazily.", "zzz"], ["A zebra.", "Nothing."]),
    ("capital_words", {"n": 2}, ["This is VERY IMPORTANT.", "I AM here."], ["Only ONE capital word.", "none here"]),
    ("quotes", {}, ['"Quoted answer."', '  "Also quoted"  '], ['"Only opening.', "No quotes", '"']),
    ("json", {}, ['{"answer": "yes"}', '```json\n{"a": [1, 2]}\n```'], ["{answer: yes}", "Here is JSON: {}"]),
    ("title", {}, ["<<My Title>>\nText.", "Text with <<a title>> inside."], ["<<>> empty", "<<split\ntitle>>", "No title."]),
    ("postscript", {"marker": "P.S."}, ["Answer.\n\nP.S. See you!", "Answer.\np.s. lowercase works too"], ["Answer.", "PS without dots"]),
    ("postscript", {"marker": "P.P.S"}, ["Answer.\nP.P.S more", "Answer.\nP. P. S. spaced"], ["Answer.\nP.S. only", "Answer."]),
    ("language", {"language": "French"}, [FR, FR.upper()], [EN, ES, IT]),
    ("language", {"language": "Spanish"}, [ES, ES.lower()], [EN, FR, PT]),
    ("language", {"language": "German"}, [DE, DE + " " + DE], [EN, FR]),
    ("language", {"language": "Italian"}, [IT, IT + " " + IT], [EN, ES, PT]),
    ("language", {"language": "Portuguese"}, [PT, PT + " " + PT], [EN, ES, IT]),
    ("repeat_request", {"request": REQ}, [REQ + "\n\nA compass...", "  explain how a compass works. It points north."], ["Sure. " + REQ, "Explain how a compass works"]),
    ("placeholders", {"n": 2}, ["Dear [name], see you at [place].", "[a][b][c]"], ["Dear [name].", "No placeholders."]),
]


def test_every_type_has_cases_both_ways() -> None:
    covered = {name for name, *_ in CASES}
    assert covered == set(INSTRUCTION_TYPES) == set(VERIFIERS)
    for name in covered:
        passing = [a for n, _, good, _ in CASES if n == name for a in good]
        failing = [a for n, _, _, bad in CASES if n == name for a in bad]
        assert len(passing) >= 2 and len(failing) >= 2, name


@pytest.mark.parametrize(("name", "params", "good", "bad"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_verifier_passes_and_fails(name: str, params: dict, good: list[str], bad: list[str]) -> None:
    verify = INSTRUCTION_TYPES[name].verify
    for answer in good:
        assert verify(answer, params) is True, (name, answer)
    for answer in bad:
        assert verify(answer, params) is False, (name, answer)


def test_counting_helpers_follow_ifeval() -> None:
    # \w+ runs, as nltk's RegexpTokenizer: It / s / a / well / known / fact / 3 / 5 / apples.
    assert count_words("It's a well-known fact: 3.5 apples.") == 9
    assert count_sentences("Hi. How are you? Fine!") == 3
    assert count_sentences("I met Mr. Brown at 3.30 p.m. today. It rained.") == 2
    assert count_sentences("a list\n- without\n- stops") == 1  # newlines are spaces, as in IFEval
    assert count_paragraphs("***\nA\n***\nB\n***") == 2  # empty first and last parts are not counted
    assert count_paragraphs("A\n***\n\n***\nB") is None  # an empty middle paragraph fails whatever N is


def test_language_detection_needs_a_clear_winner() -> None:
    assert detect_language(EN) == "English"
    assert detect_language("") is None
    assert detect_language("Paris Tokyo Lisbon") is None
    with pytest.raises(ValueError, match="unknown language"):
        VERIFIERS["language"](FR, {"language": "Klingon"})
