"""Decoding of token-id prefixes in one left-padded batch: greedy, or sampled with one seed per row.

Generation stops at the end of an assistant turn (``hyperlora.data.format.end_of_turn_ids``:
the chat template's end-of-turn token and EOS), not only at EOS.

Axis letters: B batch (rows), T tokens, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor, nn
from transformers import LogitsProcessor, TemperatureLogitsWarper, TopPLogitsWarper

from hyperlora.data.format import end_of_turn_ids

__all__ = ["SeededSampler", "decode_batch", "decode_new", "greedy_decode", "left_padded"]


def left_padded(prefixes: Sequence[list[int]], pad: int, device: torch.device, multiple: int = 1) -> dict[str, Tensor]:
    """``input_ids`` and ``attention_mask``, both ``[B, T]``, padded on the left.

    Left, because generation continues from each row's last real token. ``multiple``: ``T`` is
    rounded up to a multiple of it, so that batches of similar lengths share one shape.
    """
    width = -(-max(map(len, prefixes)) // multiple) * multiple
    ids = torch.full((len(prefixes), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, prefix in enumerate(prefixes):
        ids[i, width - len(prefix) :] = torch.tensor(prefix, dtype=torch.long)
        mask[i, width - len(prefix) :] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def decode_new(tokenizer: Any, out: Tensor, width: int) -> list[str]:
    """The text each row of ``out [B, width + new]`` generated after its ``width`` prefix tokens."""
    return [tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in out]


class SeededSampler(LogitsProcessor):
    """Draws row i's next token with its own generator, seeded by ``seeds[i]``, and leaves only it standing.

    Sampling in ``generate`` draws from one global generator for the whole batch, so a row's
    sample would depend on the rows beside it. Here row i's draw depends on its seed alone
    (Gumbel-max: ``argmax(log softmax(scores / temperature) + Gumbel noise)``, within the top-p
    nucleus), so a record labelled in another batch, or again after a kill, gets the same text.
    Returned scores are 0 at the drawn token and -inf elsewhere: greedy search then takes it.
    """

    def __init__(self, seeds: Sequence[int], temperature: float = 1.0, top_p: float = 1.0) -> None:
        self.seeds = list(seeds)
        self.warpers = [TemperatureLogitsWarper(temperature)] if temperature != 1.0 else []
        if top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p))
        self.generators: list[torch.Generator] | None = None

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        """``scores [B, V]`` -> ``[B, V]`` with one finite entry per row."""
        if self.generators is None:
            if scores.shape[0] != len(self.seeds):
                raise ValueError(f"{len(self.seeds)} seeds for {scores.shape[0]} rows: give one seed per row.")
            self.generators = [torch.Generator(device=scores.device).manual_seed(s) for s in self.seeds]
        for warp in self.warpers:
            scores = warp(input_ids, scores)
        logp = torch.log_softmax(scores.float(), dim=-1)
        width, device = scores.shape[-1], scores.device
        uniform = torch.stack([torch.rand(width, generator=g, device=device) for g in self.generators])
        gumbel = -torch.log(-torch.log(uniform.clamp_min(1e-20)))
        choice = (logp + gumbel).argmax(dim=-1, keepdim=True)
        return torch.full_like(scores, float("-inf")).scatter_(1, choice, 0.0)


@torch.no_grad()
def decode_batch(model: nn.Module, tokenizer: Any, prefixes: Sequence[list[int]], max_new_tokens: int,
                 context: Any = None, *, do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                 repetition_penalty: float = 1.0, seeds: Sequence[int] | None = None) -> tuple[list[str], list[bool]]:
    """Continuations of token-id prefixes (left-padded into one batch): texts, and whether each row ended itself.

    A row *finished* when it wrote an end-of-turn id; one that ran into ``max_new_tokens`` did not.
    ``do_sample``: draw with ``temperature`` and ``top_p``, row i from ``seeds[i]`` (``SeededSampler``).
    ``context``: a context manager entered around ``generate`` (the injector, for the student).
    """
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    stop = end_of_turn_ids(tokenizer)
    batch = left_padded(prefixes, pad, next(model.parameters()).device)
    options: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": False, "pad_token_id": pad,
                               "eos_token_id": stop or None}
    if repetition_penalty != 1.0:
        options["repetition_penalty"] = repetition_penalty
    if do_sample:
        if seeds is None or len(seeds) != len(prefixes):
            raise ValueError("Sampling needs one seed per prefix.")
        options["logits_processor"] = [SeededSampler(seeds, temperature, top_p)]
    with context if context is not None else nullcontext():
        out = model.generate(**batch, **options)
    width = batch["input_ids"].shape[1]
    stops = torch.tensor(stop, dtype=out.dtype, device=out.device)
    finished = torch.isin(out[:, width:], stops).any(dim=1).tolist() if stop else [False] * len(prefixes)
    return decode_new(tokenizer, out, width), finished


def greedy_decode(model: nn.Module, tokenizer: Any, prefixes: Sequence[list[int]], max_new_tokens: int,
                  context: Any = None) -> list[str]:
    """Greedy continuations of token-id prefixes (left-padded into one batch), decoded to text.

    ``context``: a context manager entered around ``generate`` (the injector, for the student).
    """
    return decode_batch(model, tokenizer, prefixes, max_new_tokens, context)[0]
