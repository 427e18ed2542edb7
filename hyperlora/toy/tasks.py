"""The built-in instruction suite: seeded text transformations with natural-language instructions.

Every example is ``(prompt, input, output)``: the prompt is an instruction ("Sort the
words alphabetically."), the input a short sequence of lowercase words from
``WORDS`` and the output the instruction applied to the input. Nothing is
downloaded; the same ``(split, n, seed)`` gives the same examples in every process
(randomness comes only from ``random.Random`` seeded with strings, which Python
hashes with SHA-512, never with the per-process ``hash()``).

Splits (``SPLITS``), each probing one kind of generalisation:

- ``train``: single families and the compositions in ``TRAIN_PAIRS``, with the
  train phrasings (all but the last template of each family) and train parameters.
- ``train_unseen_inputs``: the very same instructions as ``train`` (element by
  element, for the same ``n`` and ``seed``) on inputs that ``train`` never uses.
- ``heldout_phrasing``: every family, worded only with its held-out (last) template.
- ``heldout_param``: parameterised families with parameter values train never uses.
- ``heldout_compose``: compositions in ``HELDOUT_PAIRS``, pairs that never appear
  (in either order) in train.

How inputs never overlap: the space of input strings is cut in two by a stable
checksum (``zlib.crc32(text) % INPUT_MODULUS == 0`` is the *reserved* side). ``train``
only draws inputs from the other side, every other split only from the reserved
side, so no evaluation input is ever a train input, for any ``n`` and any seed.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hyperlora.data.records import Record
from hyperlora.data.suites import PooledKind, check_pools, check_split_request

__all__ = [
    "WORDS",
    "SPLITS",
    "CONNECTIVES",
    "TASK_FAMILIES",
    "TRAIN_PAIRS",
    "HELDOUT_PAIRS",
    "TaskFamily",
    "Task",
    "Example",
    "list_families",
    "get_family",
    "make_task",
    "compose_tasks",
    "build_split",
    "as_records",
]

SPLITS: tuple[str, ...] = ("train", "train_unseen_inputs", "heldout_phrasing", "heldout_param", "heldout_compose")

# Short common words (2-5 letters, each with at least one consonant so removing vowels
# never erases a word). At most 6 words of at most 5 letters keeps inputs under 40 chars.
WORDS: tuple[str, ...] = tuple(
    """
    act add age ago air all and ant any arm art ask bad bag bat bed bee big bit box
    boy bus but buy can cap car cat cow cry cup cut day dog dry ear eat egg end eye
    far fat few fix fly fog for fox fun gas get gum hat hen her him hit hop hot how
    ice ink jam jar jet job joy key kid kit lab lap leg let lid lip log low map mat
    men mix mud net new nod not now nut oak odd off oil old one our out owl own pan
    pen pet pig pin pot put rag ram ran rat raw red rib rug run sad sat saw say sea
    see set she sit six sky son sun tag tan tap tea ten tie tin tip toe top toy try
    tub two use van vet wax way web wet who why win yes yet you zoo
    able aunt baby back bake ball band bank barn bell bird boat bone book bowl cake
    calm card cold cook corn crab desk door duck dust farm fish flag frog gate gift
    girl goat gold hand hill home horn lake lamp leaf lion milk moon nest note park
    pear rain road rock rope salt seed ship shoe snow soap song star swim tail tent
    tree wall wind wolf wood yard
    apple bread brick chair cloud dream field glass grape green house juice lemon
    light mouse music night ocean paper plant river robot sheep shirt smile stone
    storm sugar table tiger towel train water whale
    """.split()
)

MIN_WORDS, MAX_WORDS = 3, 6
MAX_INPUT_CHARS = 40
# Longest possible single-step output is duplicate_words on 6 five-letter words (71);
# the cap only guards against a future family that grows text without bound.
MAX_OUTPUT_CHARS = 80
INPUT_MODULUS = 8  # 1 in 8 input strings is reserved for evaluation splits
COMPOSE_FRACTION = 0.25  # share of train examples that are two-step compositions
HELDOUT_PAIR_FRACTION = 0.2
_MAX_ATTEMPTS = 10_000
# The suite's structure (which pairs are held out) is fixed, independent of any sample seed.
_STRUCTURE_SEED = "hyperlora.tasks/structure/v1"

# "{first}" and "{second}" are the two steps' lowercase phrasings.
CONNECTIVES: tuple[str, ...] = (
    "{first}, then {second}",
    "{first}, and after that {second}",
    "first {first}; then {second}",
    "{first}. Next, {second}",
)

_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_VOWELS = "aeiou"


# --- the transformations: (words, param) -> text ---------------------------------------


def _sort_key(word: str) -> tuple[str, str]:
    # Case-insensitive first, so a capitalised word sorts where a reader expects it.
    return (word.lower(), word)


def _shift_char(ch: str, k: int) -> str:
    if "a" <= ch <= "z":
        return chr((ord(ch) - ord("a") + k) % 26 + ord("a"))
    if "A" <= ch <= "Z":
        return chr((ord(ch) - ord("A") + k) % 26 + ord("A"))
    return ch


def _strip_letters(words: list[str], letters: str) -> str:
    # Words that lose every letter are dropped, so the output stays a clean word sequence.
    kept = ("".join(c for c in w if c.lower() not in letters) for w in words)
    return " ".join(w for w in kept if w)


def _rotate(words: list[str], k: int) -> str:
    k %= len(words)
    return " ".join(words[k:] + words[:k])


def _swap_first_last(words: list[str], _: None) -> str:
    if len(words) < 2:
        return " ".join(words)
    return " ".join([words[-1], *words[1:-1], words[0]])


def _bind_replace(rng: random.Random, y: str) -> tuple[str, str]:
    # The pool holds the replacement y; the replaced word x may be any other word.
    return (rng.choice([w for w in WORDS if w != y]), y)


def _plant_word(words: list[str], param: tuple[str, str], rng: random.Random) -> list[str]:
    # "Replace x with y" only teaches something when x is in the input.
    x = param[0]
    if x in words:
        return words
    out = list(words)
    out[rng.randrange(len(out))] = x
    return out


# --- families -------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskFamily(PooledKind):
    """One kind of transformation, its phrasings and its parameter values.

    Phrasings are lowercase imperative phrases without final punctuation, with
    placeholders filled by ``render``: ``{param}`` (the value), ``{param_word}`` (an
    integer spelled out), ``{s}`` (plural suffix for an integer), ``{x}``/``{y}`` (a
    pair). The last phrasing is held out for ``heldout_phrasing``.
    """

    name: str
    fn: Callable[[list[str], Any], str]
    phrasings: tuple[str, ...]
    train_params: tuple[Any, ...] = ()
    heldout_params: tuple[Any, ...] = ()
    keeps_words: bool = True  # output is again a word sequence, so it can feed a second step
    bind: Callable[[random.Random, Any], Any] | None = None  # pool value -> full parameter
    plant: Callable[[list[str], Any, random.Random], list[str]] | None = None  # make the input fit

    def __post_init__(self) -> None:
        check_pools(f"family {self.name!r}", self.phrasings, 4, self.train_params, self.heldout_params)

    def __call__(self, words: Sequence[str], param: Any = None) -> str:
        return self.fn(list(words), param)

    def sample_param(self, rng: random.Random, held_out: bool = False) -> Any:
        """A parameter from the train (or held-out) pool; ``None`` for unparameterised families."""
        if not self.parameterised:
            return None
        value = rng.choice(self.heldout_params if held_out else self.train_params)
        return self.bind(rng, value) if self.bind is not None else value

    def render(self, param: Any, phrasing: int) -> str:
        """The phrasing ``phrasing`` with ``param`` filled in (lowercase, no final period)."""
        return self.phrasings[phrasing].format(**_fields(param))


def _fields(param: Any) -> dict[str, str]:
    if param is None:
        return {}
    if isinstance(param, tuple):
        x, y = param
        return {"x": x, "y": y}
    if isinstance(param, int):
        word = _NUMBER_WORDS[param] if 0 <= param < len(_NUMBER_WORDS) else str(param)
        return {"param": str(param), "param_word": word, "s": "" if param == 1 else "s"}
    return {"param": str(param)}


def _families() -> dict[str, TaskFamily]:
    counts = (1, 2, 4), (3,)  # keep/last: 3 sits between train values (interpolation)
    letters = ("a", "e", "o", "t", "s"), ("n", "r")
    fams = [
        TaskFamily("reverse_words", lambda w, _: " ".join(reversed(w)), (
            "reverse the order of the words",
            "write the words in reverse order",
            "put the words in backwards order",
            "list the words from last to first",
            "flip the word order around",
        )),
        TaskFamily("sort_words", lambda w, _: " ".join(sorted(w, key=_sort_key)), (
            "sort the words alphabetically",
            "put the words in alphabetical order",
            "arrange the words from a to z",
            "order the words as a dictionary would",
            "alphabetize the words",
        )),
        TaskFamily("sort_desc", lambda w, _: " ".join(sorted(w, key=_sort_key, reverse=True)), (
            "sort the words in reverse alphabetical order",
            "arrange the words from z to a",
            "put the words in descending alphabetical order",
            "order the words alphabetically, starting from the end of the alphabet",
            "alphabetize the words backwards, z first",
        )),
        TaskFamily("upper_alternate", lambda w, _: " ".join(x.upper() if i % 2 == 0 else x for i, x in enumerate(w)), (
            "write every other word in capital letters, starting with the first",
            "upper-case the words in odd positions: first, third, and so on",
            "capitalize every second word entirely, beginning with the first word",
            "alternate between upper-case and lower-case words, starting with upper case",
            "make every other word uppercase, starting from word one",
        )),
        TaskFamily("upper_all", lambda w, _: " ".join(x.upper() for x in w), (
            "convert the text to upper case",
            "write every word in capital letters",
            "make all the letters uppercase",
            "shout the text in all caps",
            "turn every letter into a capital letter",
        )),
        TaskFamily("capitalize", lambda w, _: " ".join(x[:1].upper() + x[1:] for x in w), (
            "capitalize the first letter of each word",
            "start every word with a capital letter",
            "write the words in title case",
            "make the initial letter of every word uppercase",
            "give each word an upper-case first letter",
        )),
        TaskFamily("reverse_letters", lambda w, _: " ".join(x[::-1] for x in w), (
            "reverse the letters of each word",
            "spell every word backwards",
            "write each word back to front, keeping the word order",
            "mirror the letters inside every word",
            "flip the spelling of each word while leaving the words where they are",
        )),
        TaskFamily("shift_letters", lambda w, k: " ".join("".join(_shift_char(c, k) for c in x) for x in w), (
            "shift every letter {param} place{s} forward in the alphabet",
            "apply a caesar shift of {param} to the text",
            "replace each letter with the letter {param} step{s} later in the alphabet, wrapping from z to a",
            "move each letter forward by {param_word} in the alphabet",
            "encode the text with a rotation cipher of {param_word}",
        ), train_params=(1, 2, 3, 5), heldout_params=(4, 6)),
        TaskFamily("keep_first_n", lambda w, n: " ".join(w[:n]), (
            "keep only the first {param} word{s}",
            "return the first {param_word} word{s} and nothing else",
            "drop everything after the first {param} word{s}",
            "truncate the text to its first {param_word} word{s}",
            "output just the opening {param} word{s}",
        ), train_params=counts[0], heldout_params=counts[1]),
        TaskFamily("keep_last_n", lambda w, n: " ".join(w[-n:]), (
            "keep only the last {param} word{s}",
            "return the final {param_word} word{s}",
            "delete everything except the last {param} word{s}",
            "output the last {param_word} word{s} and nothing else",
            "cut the text down to its closing {param} word{s}",
        ), train_params=counts[0], heldout_params=counts[1]),
        TaskFamily("drop_first_n", lambda w, n: " ".join(w[n:]), (
            "remove the first {param} word{s}",
            "delete the opening {param_word} word{s} and keep the rest",
            "skip the first {param} word{s}",
            "drop the first {param_word} word{s}",
            "leave out the initial {param} word{s}",
        ), train_params=(1, 3), heldout_params=(2,)),
        TaskFamily("replace_word", lambda w, p: " ".join(p[1] if x == p[0] else x for x in w), (
            "replace the word '{x}' with '{y}'",
            "change every '{x}' to '{y}'",
            "swap out '{x}' for '{y}'",
            "substitute '{y}' for the word '{x}'",
            "wherever '{x}' appears, write '{y}' instead",
        ), train_params=(
            "ball", "bird", "book", "cake", "cat", "cup", "dog", "door", "fish", "frog", "hat", "key",
            "lamp", "milk", "moon", "pen", "rain", "ship", "star", "sun", "tree", "wind", "box", "egg",
        ), heldout_params=("apple", "lion", "owl", "robot", "sheep", "snow", "tiger", "whale"),
            bind=_bind_replace, plant=_plant_word),
        TaskFamily("count_words", lambda w, _: str(len(w)), (
            "count the words",
            "say how many words there are",
            "output the number of words",
            "give the word count as a number",
            "tell me how many words the text has",
        ), keeps_words=False),
        TaskFamily("count_letter", lambda w, c: str(sum(x.lower().count(c) for x in w)), (
            "count how many times the letter '{param}' appears",
            "output the number of '{param}' letters",
            "give the number of occurrences of the letter '{param}'",
            "count the '{param}'s in the text",
            "tally every '{param}' and output the total",
        ), train_params=letters[0], heldout_params=letters[1], keeps_words=False),
        TaskFamily("first_letters", lambda w, _: "".join(x[0] for x in w), (
            "write the first letter of each word, joined together",
            "make an acronym from the words",
            "output the initials of the words as one string",
            "take the first letter of every word and join them",
            "spell out the initial letters of the words with no spaces",
        ), keeps_words=False),
        TaskFamily("last_letters", lambda w, _: "".join(x[-1] for x in w), (
            "write the last letter of each word, joined together",
            "output the final letters of the words as one string",
            "take the last letter of every word and join them",
            "join the ending letter of each word with no spaces",
            "collect the final character of each word into one string",
        ), keeps_words=False),
        TaskFamily("last_word", lambda w, _: w[-1], (
            "output only the last word",
            "return the final word",
            "give me the word at the end",
            "keep just the last word and delete the rest",
            "write nothing but the closing word",
        ), keeps_words=False),
        TaskFamily("duplicate_words", lambda w, _: " ".join(f"{x} {x}" for x in w), (
            "write each word twice",
            "double every word",
            "repeat every word once, right after itself",
            "say each word two times in a row",
            "echo each word immediately after it appears",
        )),
        TaskFamily("remove_vowels", lambda w, _: _strip_letters(w, _VOWELS), (
            "remove all the vowels",
            "delete every a, e, i, o and u",
            "write the words without their vowels",
            "strip the vowels out of the text",
            "take out the vowel letters from each word",
        )),
        TaskFamily("sort_by_length", lambda w, _: " ".join(sorted(w, key=len)), (
            "sort the words by length, shortest first",
            "order the words from shortest to longest, keeping ties in their original order",
            "arrange the words by number of letters, ascending",
            "put shorter words before longer ones",
            "rank the words by how many letters they have, short to long",
        )),
        TaskFamily("swap_first_last", _swap_first_last, (
            "swap the first and last words",
            "exchange the first word with the last word",
            "switch the positions of the first and the final word",
            "trade places between the opening and closing words",
            "put the last word first and the first word last",
        )),
        TaskFamily("join_with", lambda w, sep: sep.join(w), (
            "join the words with '{param}'",
            "replace the spaces between words with '{param}'",
            "connect the words using '{param}' instead of spaces",
            "put '{param}' between the words with no spaces",
            "glue the words together with '{param}'",
        ), train_params=("-", "+", "_", "*"), heldout_params=("/", "="), keeps_words=False),
        TaskFamily("repeat_first", lambda w, n: " ".join([w[0]] * n), (
            "repeat the first word {param} times",
            "write the first word {param_word} times",
            "say the opening word {param} times, separated by spaces",
            "output the first word, {param_word} times over",
            "echo the initial word {param} times",
        ), train_params=(2, 3, 5), heldout_params=(4,), keeps_words=False),
        TaskFamily("rotate_words", lambda w, k: _rotate(w, k), (
            "move the first {param} word{s} to the end",
            "rotate the words left by {param}",
            "take the first {param_word} word{s} and move them to the end",
            "shift the words {param_word} position{s} to the left, wrapping around",
            "cycle the first {param} word{s} round to the back",
        ), train_params=(1, 3), heldout_params=(2,)),
        TaskFamily("remove_letter", lambda w, c: _strip_letters(w, c), (
            "remove every letter '{param}'",
            "delete all the '{param}'s",
            "write the text without the letter '{param}'",
            "strip out each '{param}'",
            "erase every occurrence of '{param}'",
        ), train_params=letters[0], heldout_params=letters[1]),
        TaskFamily("word_lengths", lambda w, _: " ".join(str(len(x)) for x in w), (
            "write the length of each word",
            "replace each word with its number of letters",
            "output how many letters every word has",
            "give the letter count of each word, separated by spaces",
            "measure each word and write its length",
        ), keeps_words=False),
    ]
    return {f.name: f for f in fams}


TASK_FAMILIES: dict[str, TaskFamily] = _families()


def list_families() -> list[str]:
    """Names of all families, in a fixed order."""
    return list(TASK_FAMILIES)


def get_family(name: str) -> TaskFamily:
    """The family called ``name``; a ``KeyError`` that lists the known names otherwise."""
    try:
        return TASK_FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown task family {name!r}; known: {', '.join(TASK_FAMILIES)}") from None


# --- tasks ----------------------------------------------------------------------------


def _sentence(phrase: str) -> str:
    return phrase[:1].upper() + phrase[1:] + "."


@dataclass(frozen=True)
class Task:
    """A family (or two, applied in order) with parameters, and its rendered instruction.

    Build one with ``make_task`` or ``compose_tasks``. ``phrasings`` are template indices,
    ``connective`` indexes ``CONNECTIVES`` for compositions (``None`` otherwise).
    """

    families: tuple[str, ...]
    params: tuple[Any, ...]
    phrasings: tuple[int, ...]
    instruction: str
    connective: int | None = None

    @property
    def family(self) -> str:
        """``"a"`` for a single family, ``"a+b"`` for a composition."""
        return "+".join(self.families)

    @property
    def is_composition(self) -> bool:
        return len(self.families) > 1

    def apply(self, text: str) -> str:
        """Run each step on the whitespace-split words of the previous step's output."""
        for name, param in zip(self.families, self.params):
            words = text.split()
            if not words:
                return ""
            text = TASK_FAMILIES[name](words, param)
        return text


def make_task(family: str, param: Any = None, phrasing: int = 0) -> Task:
    """A single-family task; ``phrasing`` indexes the family's templates."""
    fam = get_family(family)
    if fam.parameterised == (param is None):
        need = "needs a parameter" if fam.parameterised else "takes no parameter"
        raise ValueError(f"family {family!r} {need}, got param={param!r}")
    if not 0 <= phrasing < len(fam.phrasings):
        raise ValueError(f"family {family!r} has phrasings 0..{len(fam.phrasings) - 1}, got {phrasing}")
    return Task((family,), (param,), (phrasing,), _sentence(fam.render(param, phrasing)))


def compose_tasks(first: Task, second: Task, connective: int = 0) -> Task:
    """``first`` then ``second`` as one task, worded with ``CONNECTIVES[connective]``."""
    if first.is_composition or second.is_composition:
        raise ValueError("compose_tasks takes two single-family tasks")
    if not TASK_FAMILIES[first.families[0]].keeps_words:
        raise ValueError(f"{first.family!r} does not output words, so it cannot be a first step")
    phrases = [TASK_FAMILIES[t.families[0]].render(t.params[0], t.phrasings[0]) for t in (first, second)]
    text = CONNECTIVES[connective].format(first=phrases[0], second=phrases[1])
    return Task(
        first.families + second.families,
        first.params + second.params,
        first.phrasings + second.phrasings,
        _sentence(text),
        connective,
    )


# --- which pairs compose, and which are held out ----------------------------------------

# Six-word probes: a pair must give a non-empty output on each for every train parameter.
_PROBES: tuple[tuple[str, ...], ...] = (
    ("house", "cat", "apple", "sun", "tiger", "bed"),
    ("stone", "oak", "milk", "ship", "eye", "green"),
    ("zoo", "river", "tea", "bird", "lemon", "fog"),
)


def _pair_is_useful(a: TaskFamily, b: TaskFamily) -> bool:
    """Both steps visibly matter somewhere, and no parameter choice empties the output.

    Pairs where one step is redundant (sort then sort descending, reverse then count)
    would teach the hypernetwork that a stated step can be ignored.
    """
    rng = random.Random(_STRUCTURE_SEED + "/probe")
    params_a = [a.bind(rng, v) if a.bind else v for v in a.train_params] or [None]
    params_b = list(b.train_params) or [None]
    first_matters = second_matters = False
    for probe in _PROBES:
        for pa in params_a:
            words = a.plant(list(probe), pa, rng) if a.plant else list(probe)
            mid = a(words, pa)
            for pb in params_b:
                out = b(mid.split(), pb) if mid else ""
                if not out:
                    return False
                first_matters |= out != b(words, pb)
                second_matters |= out != mid
    return first_matters and second_matters


def _pairs() -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]:
    candidates = [
        (a.name, b.name)
        for a in TASK_FAMILIES.values()
        for b in TASK_FAMILIES.values()
        # A planting family must come first: after another step its word may be gone.
        if a.name != b.name and a.keeps_words and b.plant is None and _pair_is_useful(a, b)
    ]
    # Hold out unordered pairs so that neither order of a held-out pair is ever trained.
    unordered = sorted({tuple(sorted(p)) for p in candidates})
    random.Random(_STRUCTURE_SEED).shuffle(unordered)
    held = set(unordered[: round(HELDOUT_PAIR_FRACTION * len(unordered))])
    train = tuple(p for p in candidates if tuple(sorted(p)) not in held)
    heldout = tuple(p for p in candidates if tuple(sorted(p)) in held)
    return train, heldout


TRAIN_PAIRS, HELDOUT_PAIRS = _pairs()


# --- examples and splits ----------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    """One instruction-following example, with the task that produced it."""

    prompt: str
    input: str
    output: str
    family: str  # "a" or "a+b" for a composition
    split: str
    task: Task = field(repr=False)


def _single(rng: random.Random, name: str, phrasings: Sequence[int], held_out_param: bool = False) -> Task:
    fam = TASK_FAMILIES[name]
    return make_task(name, fam.sample_param(rng, held_out_param), rng.choice(phrasings))


def _pair(rng: random.Random, pair: tuple[str, str]) -> Task:
    first, second = (_single(rng, name, TASK_FAMILIES[name].train_phrasings) for name in pair)
    return compose_tasks(first, second, rng.randrange(len(CONNECTIVES)))


def _sample_task(split: str, rng: random.Random) -> Task:
    names = list(TASK_FAMILIES)
    if split == "train":
        if rng.random() < COMPOSE_FRACTION:
            return _pair(rng, rng.choice(TRAIN_PAIRS))
        name = rng.choice(names)
        return _single(rng, name, TASK_FAMILIES[name].train_phrasings)
    if split == "heldout_phrasing":
        name = rng.choice(names)
        return _single(rng, name, TASK_FAMILIES[name].heldout_phrasings)
    if split == "heldout_param":
        name = rng.choice([n for n in names if TASK_FAMILIES[n].parameterised])
        return _single(rng, name, TASK_FAMILIES[name].train_phrasings, held_out_param=True)
    if split == "heldout_compose":
        return _pair(rng, rng.choice(HELDOUT_PAIRS))
    raise AssertionError(split)


def _is_reserved(text: str) -> bool:
    return zlib.crc32(text.encode("utf-8")) % INPUT_MODULUS == 0


def _sample_io(task: Task, rng: random.Random, reserved: bool) -> tuple[str, str]:
    """An input on the requested side of the partition, and the task's non-empty output."""
    first = TASK_FAMILIES[task.families[0]]
    for _ in range(_MAX_ATTEMPTS):
        words = rng.sample(WORDS, rng.randint(MIN_WORDS, MAX_WORDS))
        if first.plant is not None:
            words = first.plant(words, task.params[0], rng)
        text = " ".join(words)
        if _is_reserved(text) != reserved or len(text) > MAX_INPUT_CHARS:
            continue
        # Short inputs can leave nothing (drop 3 of 3 words); draw again rather than teach "".
        out = task.apply(text)
        if out and len(out) <= MAX_OUTPUT_CHARS:
            return text, out
    raise RuntimeError(f"no valid input found for task {task.family!r} ({task.instruction!r})")


def build_split(split: str, n: int, seed: int = 0) -> list[Example]:
    """``n`` examples of ``split`` (one of ``SPLITS``), identical for the same arguments.

    Tasks and inputs come from two separate seeded streams; ``train_unseen_inputs``
    shares ``train``'s task stream, so its i-th instruction equals train's i-th
    instruction for the same ``n`` and ``seed``, while its inputs come from the
    reserved side of the input partition (see the module docstring).
    """
    check_split_request(split, n, SPLITS)
    task_split = "train" if split == "train_unseen_inputs" else split
    task_rng = random.Random(f"hyperlora.tasks/{task_split}/{seed}/tasks")
    input_rng = random.Random(f"hyperlora.tasks/{split}/{seed}/inputs")
    examples = []
    for _ in range(n):
        task = _sample_task(task_split, task_rng)
        text, out = _sample_io(task, input_rng, reserved=split != "train")
        examples.append(Example(task.instruction, text, out, task.family, split, task))
    return examples


def as_records(examples: Iterable[Example]) -> list[Record]:
    """The examples as plain ``Record``s (what the trainer and ``write_jsonl`` take)."""
    return [Record(e.prompt, e.input, e.output) for e in examples]
