"""Verified targets: the model's own answer to the bare request, rewritten to follow the instruction.

For every example of the instruction suite (``hyperlora.instruct``) whose instruction types all
have a rewriter, the labelling model answers the request *without* the instruction (a
``Record`` with ``prompt=None``, labelled and cached by ``label_missing`` under its own key), and
``Example.rewrite`` turns that answer into one that passes the instruction's verifiers. The result
is a ``Record(target="verified")``: the student learns it by cross-entropy, so it can learn to
follow instructions that the model cannot follow from its context.

Where no rewrite is made (a type no rewriter serves, such as a named language), the model's answer
*with* the instruction in context is taken instead when it passes the verifiers (``from_teacher``):
filtered distillation, the teacher's hits without its misses.

A rewritten answer is a whole answer the verifiers judged, so it is ``complete`` (it ends with the
end-of-turn token). It must also be one a student can write within the answer length it is judged
at: most bare answers run into the labelling length, and a closing phrase, a P.S. or a closing
quote added after 160 tokens is never reached by a student that decodes 160. So the bare answer is
first cut at a sentence or line end (``fit_rewrite``), the unfinished last sentence of a cut answer
always, and further sentences until the rewrite fits ``max_tokens`` (words, where sentences do not
fit). The record keeps the bare answer the target departs from (``Record.rewritten_from``), so the
loss can weight what the instruction changed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hyperlora.data.format import response_ids
from hyperlora.data.label import label_missing
from hyperlora.data.records import Record
from hyperlora.instruct.verifiers import sentence_spans

__all__ = ["VerifiedCounts", "cut_points", "fit_rewrite", "verified_targets"]

# A last line that is only a list marker ("2.", "-", "*"): a sentence end to the splitter, no end to a reader.
_BARE_MARKER = re.compile(r"(?:^|\n)[ \t]*(?:\d+[.)]|[*\-+•])$")


@dataclass(frozen=True)
class VerifiedCounts:
    """How many examples became verified records, and why the others did not."""

    examples: int
    kept: int  # rewritten answers and passing teacher answers together
    from_teacher: int  # of ``kept``: the teacher's answer, where no rewrite was made
    dropped: int  # no rewrite (no rewriter, a failed rewrite, no cut that fits) and no passing teacher answer

    def __str__(self) -> str:
        return (f"verified targets: kept {self.kept} of {self.examples} records ({self.kept - self.from_teacher} "
                f"rewritten, {self.from_teacher} teacher answers that pass); dropped {self.dropped} that neither "
                "a rewrite nor the teacher could follow within the length")


def cut_points(answer: str, complete: bool) -> list[int]:
    """Where ``answer`` may be cut, best first: after a sentence end or at a line end, longest first; then,
    for an answer without enough of those, after any word, longest first.

    ``complete=False`` (the writer was stopped at a length limit): the end of the text is no cut point,
    so the unfinished last sentence (or word) always goes.
    """
    ends = {e for _, e in sentence_spans(answer)} | {i for i, c in enumerate(answer) if c == "\n"}
    words = {m.end() for m in re.finditer(r"\S+", answer)}
    if complete:
        ends.add(len(answer))
    for cuts in (ends, words):
        cuts.discard(0)
        if not complete:
            cuts.discard(len(answer))

    def keeps_text(end: int) -> bool:  # not empty, and not ending in a list marker alone ("...\n\n2.")
        kept = answer[:end].rstrip()
        return bool(kept) and not _BARE_MARKER.search(kept)

    best = sorted((e for e in ends if keeps_text(e)), reverse=True)
    return best + sorted((e for e in words - ends if keeps_text(e)), reverse=True)


def fit_rewrite(answer: str, complete: bool, rewrite: Callable[[str], str | None], check: Callable[[str], bool],
                n_tokens: Callable[[str], int], max_tokens: int | None) -> tuple[str, str] | None:
    """``(source, rewritten)`` for the longest cut ``source`` of ``answer`` whose rewrite passes ``check`` and
    has at most ``max_tokens`` tokens (``n_tokens``, the end token included), or ``None`` when no cut does.

    ``max_tokens=None``: no length limit; only the unfinished end of a cut answer is dropped.
    """
    for cut in cut_points(answer, complete):
        source = answer[:cut].rstrip()
        text = rewrite(source)
        if text is None or not check(text):
            continue
        if max_tokens is None or n_tokens(text) <= max_tokens:
            return source, text
    return None


def verified_targets(examples: Sequence[Any], model: Any, tokenizer: Any, cache_file: str | Path,
                     max_tokens: int | None = None, from_teacher: bool = True,
                     **label_options: Any) -> tuple[list[Record], VerifiedCounts]:
    """``Record(instruction, question, answer that passes, target="verified")`` per example that has one, and counts.

    ``examples``: ``hyperlora.instruct.Example``s. ``model`` answers each bare question
    (``label_missing`` with ``prompt=None``; ``label_options`` are its keyword arguments), and the
    answer is rewritten (``fit_rewrite``). ``from_teacher``: an example without a rewrite (a type no
    rewriter serves, such as a named language, or a rewrite that failed) takes the model's answer with the
    instruction in context instead, when that answer passes the verifiers (cut at a sentence end to fit,
    like a bare answer). Either way ``rewritten_from`` is the bare answer the target departs from.
    ``max_tokens``: the longest target, in response tokens with the end token (None: no limit).
    """
    questions = [Record(None, e.question) for e in examples]  # type: ignore[arg-type]  # no prompt: the bare request
    bare = label_missing(questions, model, tokenizer, cache_file, **label_options)

    def n_tokens(text: str) -> int:
        return len(response_ids(tokenizer, text, complete=True))

    targets: dict[int, tuple[str, str]] = {}  # example index -> (target, the bare answer it departs from)
    for i, (example, answer) in enumerate(zip(examples, bare)):
        if example.rewritable:
            fitted = fit_rewrite(answer.output, answer.complete, example.rewrite, example.check, n_tokens,
                                 max_tokens)
            if fitted is not None:
                targets[i] = (fitted[1], fitted[0])
    rewritten = len(targets)
    if from_teacher:
        from hyperlora.instruct import as_records

        todo = [i for i in range(len(examples)) if i not in targets]
        answers = label_missing(as_records(examples[i] for i in todo), model, tokenizer, cache_file, **label_options)
        for i, answer in zip(todo, answers):
            fitted = fit_rewrite(answer.output, answer.complete, lambda a: a, examples[i].check, n_tokens, max_tokens)
            if fitted is not None:
                targets[i] = (fitted[1], bare[i].output)
    records = [Record(examples[i].instruction, examples[i].question, text, complete=True, target="verified",
                      rewritten_from=source) for i, (text, source) in sorted(targets.items())]
    counts = VerifiedCounts(len(examples), len(records), len(records) - rewritten, len(examples) - len(records))
    return records, counts
