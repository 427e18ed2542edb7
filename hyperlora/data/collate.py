"""Batches for distillation: the teacher's and the student's sequences with aligned response masks.

Row i of a batch gives

    teacher:  prefix(prompt_i, input_i) ⊕ response_i      (prompt in context)
    student:  prefix(None, input_i)     ⊕ response_i      (prompt as weights)

``*_loss_mask[i, t]`` is true where position t predicts a response token (the
token at t+1). Both models hold the same response, so ``logits[loss_mask]``
selects the same N positions in the same order from each: ``[N, V]`` each.
Sequences are right-padded; the response ids are returned flat as ``labels [N]``, and
``verified_mask [N]`` says which of them belong to a ``Record.target="verified"`` record (a rewritten
answer, trained by cross-entropy) rather than a ``"distill"`` one (trained against the teacher's logits).
Where a batch holds a verified record that knows its source (``Record.rewritten_from``), ``edited_mask [N]``
says which response tokens the rewrite changed or added: those not in a matching block of a token diff
against the source's tokens (``difflib``). The loss can weight them (``distill.edit_weight``): a title, a
P.S. or a closing phrase is a few tokens of an answer the base model already predicts.
A response ends with the end-of-turn token (``hyperlora.data.format.response_ids``), except a
label cut at its length limit (``Record.complete=False``): that one gets none to learn.
``prompt_layout``: where the teacher reads the prompt (user turn or system turn).
"""

from __future__ import annotations

from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Any

import torch
from torch import Tensor

from hyperlora.data.format import prefix_ids, response_ids
from hyperlora.data.records import Record

__all__ = ["DistillCollator", "edited_tokens"]


def edited_tokens(source: list[int], response: list[int]) -> list[bool]:
    """Per token of ``response``: true where it is not part of a stretch it shares with ``source``.

    A copied token stays false however its neighbours change; an inserted or replaced one is true.
    ``autojunk`` is off: frequent tokens (spaces, punctuation) must match like any other.
    """
    edited = [True] * len(response)
    for block in SequenceMatcher(None, source, response, autojunk=False).get_matching_blocks():
        edited[block.b : block.b + block.size] = [False] * block.size
    return edited


@dataclass
class DistillCollator:
    tokenizer: Any
    max_length: int = 512
    prompt_layout: str = "user"

    def _pad(self, rows: list[list[int]], masks: list[list[bool]]) -> tuple[Tensor, Tensor, Tensor]:
        width = max(map(len, rows))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        loss = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, (row, mask) in enumerate(zip(rows, masks)):
            ids[i, : len(row)] = torch.tensor(row)
            attention[i, : len(row)] = 1
            loss[i, : len(mask)] = torch.tensor(mask)
        return ids, attention, loss

    def _sequence(self, prefix: list[int], response: list[int], where: str) -> tuple[list[int], list[bool]]:
        ids = prefix + response
        if len(ids) > self.max_length:
            raise ValueError(
                f"{where} is {len(ids)} tokens, over data.max_length={self.max_length}; raise the limit or shorten it."
            )
        # Position t predicts token t+1: the last prefix token predicts the first response token.
        mask = [False] * (len(prefix) - 1) + [True] * len(response) + [False]
        return ids, mask[: len(ids)]

    def __call__(self, records: list[Record]) -> dict[str, Any]:
        teacher_rows, teacher_masks, student_rows, student_masks, labels, verified = [], [], [], [], [], []
        edited: list[bool] = []
        for i, record in enumerate(records):
            if record.output is None:
                raise ValueError(f"Record {i} has no output: label the data with the teacher first (hyperlora.data.label).")
            response = response_ids(self.tokenizer, record.output, record.complete)
            teacher = prefix_ids(self.tokenizer, record.prompt, record.input, self.prompt_layout)
            ids, mask = self._sequence(teacher, response, f"teacher row {i}")
            teacher_rows.append(ids), teacher_masks.append(mask)
            ids, mask = self._sequence(prefix_ids(self.tokenizer, None, record.input), response, f"student row {i}")
            student_rows.append(ids), student_masks.append(mask)
            labels.extend(response)
            verified.extend([record.target == "verified"] * len(response))
            if record.target == "verified" and record.rewritten_from is not None:
                edited.extend(edited_tokens(response_ids(self.tokenizer, record.rewritten_from), response))
            else:
                edited.extend([False] * len(response))
        t_ids, t_attn, t_loss = self._pad(teacher_rows, teacher_masks)
        s_ids, s_attn, s_loss = self._pad(student_rows, student_masks)
        batch = {
            "prompts": [r.prompt for r in records],
            "teacher_input_ids": t_ids, "teacher_attention_mask": t_attn, "teacher_loss_mask": t_loss,
            "student_input_ids": s_ids, "student_attention_mask": s_attn, "student_loss_mask": s_loss,
            "labels": torch.tensor(labels, dtype=torch.long),
            "verified_mask": torch.tensor(verified, dtype=torch.bool),
        }
        if any(r.target == "verified" and r.rewritten_from is not None for r in records):
            batch["edited_mask"] = torch.tensor(edited, dtype=torch.bool)
        return batch
