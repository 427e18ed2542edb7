"""The distillation forward: ``logits_at`` (the LM head only where the loss looks, equal to full
logits selected after) and ``distill_forward`` (student and teacher logits, and the adapters used).

Axis letters: B batch (rows), T tokens, V vocabulary.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from hyperlora.config import HyperLoRAConfig
from hyperlora.data.collate import DistillCollator
from hyperlora.distill import DistillForward, distill_forward
from hyperlora.distill.forward import logits_at
from hyperlora.encoder import EncoderConfig
from hyperlora.generator import GeneratorConfig
from hyperlora.lora import LoRASpec
from hyperlora.model import HyperLoRA
from hyperlora.toy.models import VOCAB_SIZE, tiny_model
from hyperlora.toy.tasks import as_records, build_split
from hyperlora.toy.tokenizer import char_tokenizer


def _batch(T: int = 12) -> tuple[Tensor, Tensor, Tensor]:
    """Right-padded rows of lengths 12, 9, 7 whose loss masks start at different columns."""
    ids = torch.randint(4, VOCAB_SIZE, (3, T))
    attention = torch.zeros(3, T, dtype=torch.long)
    mask = torch.zeros(3, T, dtype=torch.bool)
    for row, (length, start) in enumerate([(12, 8), (9, 3), (7, 5)]):
        attention[row, :length] = 1
        mask[row, start : length - 1] = True
    return ids, attention, mask


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma"])
def test_equals_full_logits_at_the_mask(family: str) -> None:
    model = tiny_model(family)
    ids, attention, mask = _batch()
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=attention, use_cache=False).logits[mask]
        got = logits_at(model, ids, attention, mask)
    assert got.shape == (int(mask.sum()), VOCAB_SIZE)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_head_runs_only_from_the_first_selected_column() -> None:
    model = tiny_model("llama")
    ids, attention, mask = _batch()
    seen: list[tuple[int, ...]] = []
    handle = model.lm_head.register_forward_hook(lambda mod, args, out: seen.append(tuple(out.shape)))
    try:
        with torch.no_grad():
            logits_at(model, ids, attention, mask)
    finally:
        handle.remove()
    assert seen == [(3, 12 - 3, VOCAB_SIZE)]  # column 3 is the first any row selects


class _NoKeepArgument(nn.Module):
    """A causal LM whose forward has no ``logits_to_keep`` (custom user models)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_ids: Tensor, attention_mask: Tensor, use_cache: bool = False) -> object:
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache)


def test_models_without_logits_to_keep_fall_back_to_full_logits() -> None:
    model = tiny_model("llama")
    ids, attention, mask = _batch()
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=attention).logits[mask]
        got = logits_at(_NoKeepArgument(model), ids, attention, mask)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_empty_mask_gives_no_rows_and_keeps_the_graph() -> None:
    model = tiny_model("llama")
    ids, attention, _ = _batch()
    embed = model.get_input_embeddings()
    embed.weight.requires_grad_(True)
    try:
        got = logits_at(model, ids, attention, torch.zeros(3, 12, dtype=torch.bool))
        assert got.shape == (0, VOCAB_SIZE)
        got.sum().backward()  # an all-masked batch still back-propagates (to zeros)
        assert embed.weight.grad is not None and not embed.weight.grad.any()
    finally:
        embed.weight.requires_grad_(False)


def test_distill_forward_returns_both_logits_and_the_adapters_it_used() -> None:
    hyper = _perturbed_hyper()
    teacher = tiny_model("llama", seed=1)
    batch = DistillCollator(hyper.tokenizer, 256)(as_records(build_split("train", 3, 0)))
    out = distill_forward(hyper, teacher, batch, torch.device("cpu"))
    assert isinstance(out, DistillForward)

    n = int(batch["student_loss_mask"].sum())
    assert out.student.shape == out.teacher.shape == (n, VOCAB_SIZE)
    assert out.student.requires_grad and not out.teacher.requires_grad and all(
        A.requires_grad and B.requires_grad for A, B in out.adapters.values())
    with torch.no_grad():
        expected_adapters = hyper.hypernet(batch["prompts"])
        assert out.adapters.keys() == expected_adapters.keys()
        for name, (A, B) in expected_adapters.items():
            assert A.shape[0] == 3 and torch.equal(out.adapters[name][0], A) and torch.equal(out.adapters[name][1], B)
        full_teacher = teacher(input_ids=batch["teacher_input_ids"], attention_mask=batch["teacher_attention_mask"])
        with hyper.inject(expected_adapters):
            full_student = hyper.student(input_ids=batch["student_input_ids"],
                                         attention_mask=batch["student_attention_mask"])
        bare = hyper.student(input_ids=batch["student_input_ids"], attention_mask=batch["student_attention_mask"])
    torch.testing.assert_close(out.teacher, full_teacher.logits[batch["teacher_loss_mask"]], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.student, full_student.logits[batch["student_loss_mask"]], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out.student, bare.logits[batch["student_loss_mask"]], atol=1e-3)  # adapters acted
    out.student.sum().backward()  # the student's logits back-propagate into the generator
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in hyper.hypernet.generator.parameters())


# -- verified targets: the teacher is skipped when no token needs it ------------------------------------


class _RaisingTeacher(nn.Module):
    """A teacher that must not be run."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, *args: object, **kwargs: object) -> object:
        self.calls += 1
        raise AssertionError("the teacher was run")


class _CountingTeacher(nn.Module):
    """Wraps a real model and counts its forwards."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, *args: object, **kwargs: object) -> object:
        self.calls += 1
        return self.inner(*args, **kwargs)


def _perturbed_hyper() -> HyperLoRA:
    config = HyperLoRAConfig(lora=LoRASpec(4, 8.0), encoder=EncoderConfig(d_ctx=32, d_model=32, max_length=128),
                             generator=GeneratorConfig(d_emb=16, d_hidden=64))
    hyper = HyperLoRA(tiny_model("llama"), char_tokenizer(), config)
    with torch.no_grad():  # off the zero start, so that the adapters move the student's logits
        for p in hyper.hypernet.generator.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return hyper


def _records(targets: list[str]) -> list:
    from dataclasses import replace

    return [replace(r, target=t) for r, t in zip(as_records(build_split("train", len(targets), 0)), targets)]


def test_all_verified_tokens_skip_the_teacher_and_give_the_cross_entropy() -> None:
    from hyperlora.distill import distillation_loss

    hyper = _perturbed_hyper()
    batch = DistillCollator(hyper.tokenizer, 256)(_records(["verified"] * 3))
    assert bool(batch["verified_mask"].all()) and len(batch["verified_mask"]) > 0
    teacher = _RaisingTeacher()
    out = distill_forward(hyper, teacher, batch, torch.device("cpu"), skip_unread_teacher=True)
    assert teacher.calls == 0
    n = int(batch["student_loss_mask"].sum())
    assert out.student.shape == out.teacher.shape == (n, VOCAB_SIZE) and not out.teacher.requires_grad

    # Reference: the adapted student's full forward, its logits at the loss mask, and the labels read off the
    # student's own input ids (position t predicts token t + 1), through F.cross_entropy.
    mask = batch["student_loss_mask"]
    ids = batch["student_input_ids"]
    labels = ids[:, 1:][mask[:, :-1]]
    assert torch.equal(labels, batch["labels"])
    with torch.no_grad():
        with hyper.inject(hyper.hypernet(batch["prompts"])):
            full = hyper.student(input_ids=ids, attention_mask=batch["student_attention_mask"]).logits
        expected = torch.nn.functional.cross_entropy(full[mask], labels)
        bare = hyper.student(input_ids=ids, attention_mask=batch["student_attention_mask"]).logits
        assert not torch.isclose(torch.nn.functional.cross_entropy(bare[mask], labels), expected, atol=1e-4)
    for ce_weight in (0.0, 0.5):
        loss = distillation_loss(out.student, out.teacher, batch["labels"], "forward_kl", 1.0, ce_weight,
                                 verified=batch["verified_mask"])
        torch.testing.assert_close(loss["loss"], expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(loss["verified_ce"], expected, atol=1e-5, rtol=1e-5)
    loss["loss"].backward()  # the cross-entropy trains the generator
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in hyper.hypernet.generator.parameters())


@pytest.mark.parametrize("targets", [["verified", "distill", "verified"], ["distill"] * 2])
def test_a_batch_with_distill_tokens_runs_the_teacher(targets: list[str]) -> None:
    hyper = _perturbed_hyper()
    batch = DistillCollator(hyper.tokenizer, 256)(_records(targets))
    assert not bool(batch["verified_mask"].all())
    with pytest.raises(AssertionError, match="teacher was run"):
        distill_forward(hyper, _RaisingTeacher(), batch, torch.device("cpu"), skip_unread_teacher=True)
    inner = tiny_model("llama", seed=1)
    teacher = _CountingTeacher(inner)
    out = distill_forward(hyper, teacher, batch, torch.device("cpu"), skip_unread_teacher=True)
    assert teacher.calls == 1
    with torch.no_grad():
        full = inner(input_ids=batch["teacher_input_ids"], attention_mask=batch["teacher_attention_mask"]).logits
    torch.testing.assert_close(out.teacher, full[batch["teacher_loss_mask"]], atol=1e-5, rtol=1e-5)


def test_without_the_training_flag_an_all_verified_batch_still_runs_the_teacher() -> None:
    """Evaluation (held-out KL, the KL gap closed) reads the teacher's logits of every record, verified or not."""
    hyper = _perturbed_hyper()
    batch = DistillCollator(hyper.tokenizer, 256)(_records(["verified"] * 2))
    assert bool(batch["verified_mask"].all())
    with pytest.raises(AssertionError, match="teacher was run"):
        distill_forward(hyper, _RaisingTeacher(), batch, torch.device("cpu"))
