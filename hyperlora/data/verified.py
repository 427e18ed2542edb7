"""Verified targets: the model's own answer to the bare request, rewritten to follow the instruction.

For every example of the instruction suite (``hyperlora.instruct``) whose instruction types all
have a rewriter, the labelling model answers the request *without* the instruction (a
``Record`` with ``prompt=None``, labelled and cached by ``label_missing`` under its own key), and
``Example.rewrite`` turns that answer into one that passes the instruction's verifiers. The result
is a ``Record(target="verified")``: the student learns it by cross-entropy, so it can learn to
follow instructions that the model cannot follow from its context.

A rewritten answer is a whole answer the verifiers judged, so it is ``complete`` (it ends with the
end-of-turn token) even where the bare answer was cut at the labelling length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hyperlora.data.label import label_missing
from hyperlora.data.records import Record

__all__ = ["VerifiedCounts", "verified_targets"]


@dataclass(frozen=True)
class VerifiedCounts:
    """How many examples became verified records, and why the others did not."""

    examples: int
    kept: int
    not_rewritable: int  # a type without a rewriter
    rewrite_failed: int  # the rewriter gave up, or its result failed a verifier (e.g. an empty answer)

    def __str__(self) -> str:
        return (f"verified targets: kept {self.kept} of {self.examples} records; dropped {self.not_rewritable} whose "
                f"instruction types cannot be rewritten and {self.rewrite_failed} whose rewrite failed")


def verified_targets(examples: Sequence[Any], model: Any, tokenizer: Any, cache_file: str | Path,
                     **label_options: Any) -> tuple[list[Record], VerifiedCounts]:
    """``Record(instruction, question, rewritten answer, target="verified")`` per rewritable example, and counts.

    ``examples``: ``hyperlora.instruct.Example``s. ``model`` answers each bare question
    (``label_missing`` with ``prompt=None``; ``label_options`` are its keyword arguments).
    """
    rewritable = [e for e in examples if e.rewritable]
    questions = [Record(None, e.question) for e in rewritable]  # type: ignore[arg-type]  # no prompt: the bare request
    bare = label_missing(questions, model, tokenizer, cache_file, **label_options)
    records: list[Record] = []
    for example, answer in zip(rewritable, bare):
        text = example.rewrite(answer.output)
        if text is not None and example.check(text):  # rewrite_all verifies too; a cheap second look
            records.append(Record(example.instruction, example.question, text, complete=True, target="verified"))
    counts = VerifiedCounts(len(examples), len(records), len(examples) - len(rewritable),
                            len(rewritable) - len(records))
    return records, counts
