"""The trainer's evaluation of open answers (the instruction suite on a real model).

Per split, for the figures of ``hyperlora.answer_metrics``::

    kl, kl_base, gap_closed        KL(teacher ‖ student), KL(teacher ‖ base) and 1 − their ratio, token-weighted
    if_<who>, if_instr_<who>       IFEval strict prompt-level and instruction-level rates, who = student|teacher|base
    rouge_<who>                    ROUGE-L against the teacher's greedy answer (student, base)
    on_topic_<who>                 ROUGE-L against the base's greedy answer (student, teacher)

The teacher's and the base's answers never change while the hypernetwork trains: they are decoded
once per run (``AnswerCache``), so each later evaluation decodes only the student.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from hyperlora.answer_metrics import AnswerCache, Follows, compare_models, kl_gap_closed
from hyperlora.data.collate import DistillCollator
from hyperlora.data.records import Record

__all__ = ["instruct_follows", "open_answer_metrics"]


def instruct_follows(examples: Iterable[Any]) -> Follows:
    """``follows(record, answer)`` for records made from ``examples`` (``hyperlora.instruct.as_records``).

    A record that none of ``examples`` made raises ``KeyError`` naming it: an answer cannot be judged
    without its instruction's verifiers.
    """
    from hyperlora.instruct import index_by_record

    index = index_by_record(examples)

    def follows(record: Record, answer: str) -> tuple[bool, list[bool]]:
        try:
            example = index[(record.prompt, record.input)]
        except KeyError:
            raise KeyError(f"no verifiers for the record {record.prompt!r} / {record.input!r}") from None
        return example.follows(answer)

    return follows


@torch.no_grad()
def open_answer_metrics(hyper: Any, teacher: nn.Module, records: Sequence[Record], collator: DistillCollator,
                        follows: Follows, cache: AnswerCache, batch_size: int = 32,
                        max_new_tokens: int = 64) -> dict[str, float]:
    """The figures of the module docstring for one split (keys without the split's name).

    ``records`` are labelled by the teacher (their ``output`` is what the KL is measured on). Call with
    ``hyper`` in eval mode. ``cache`` holds the teacher's and the base's answers between calls.
    """
    gap = kl_gap_closed(hyper, teacher, records, collator, batch_size)
    metrics = {"kl": gap.kl_student, "kl_base": gap.kl_base, "gap_closed": gap.gap_closed}
    results = compare_models(hyper, teacher, records, follows, cache=cache, batch_size=batch_size,
                             max_new_tokens=max_new_tokens)
    for who, result in results.items():
        metrics[f"if_{who}"] = result.prompt_level
        metrics[f"if_instr_{who}"] = result.instruction_level
        if who != "teacher":
            metrics[f"rouge_{who}"] = result.rouge_l
        if who != "base" and result.on_topic is not None:
            metrics[f"on_topic_{who}"] = result.on_topic
    return metrics
