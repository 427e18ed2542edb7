"""HyperLoRA on a tiny llama: zero start, frozen base, gradients, per-row exactness, cache, generate.

Axis letters: B batch (rows), T tokens, D in-features, O out-features, R rank.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase
from transformers.utils import ModelOutput

from hyperlora.config import HyperLoRAConfig
from hyperlora.encoder import EncoderConfig
from hyperlora.generator import GeneratorConfig
from hyperlora.lora import LoRASpec
from hyperlora.model import HyperLoRA
from hyperlora.toy.reference import merged_copy

SPEC = LoRASpec(rank=4, alpha=8.0)
PROMPTS = ["Reverse the words.", "Answer in French."]
# Same length: rows need no padding in the encoder, so these isolate the injection.
SAME_LENGTH = ["Be terse.", "Be kind!!"]


def build(student: nn.Module, tok: PreTrainedTokenizerBase, backbone: str = "student_embeddings") -> HyperLoRA:
    torch.manual_seed(0)
    config = HyperLoRAConfig(
        lora=SPEC,
        encoder=EncoderConfig(backbone=backbone, d_ctx=32, d_model=32, n_heads=4, max_length=64),
        generator=GeneratorConfig(d_hidden=64, d_emb=16),
    )
    return HyperLoRA(student, tok, config)


def ids(rows: int, tokens: int = 10, seed: int = 0) -> Tensor:
    """Ids ``[B, T]`` of ordinary characters (the char tokenizer's ids 6..92)."""
    return torch.randint(6, 93, (rows, tokens), generator=torch.Generator().manual_seed(seed))


def lm_loss(hyper: HyperLoRA, prompts: list[str], input_ids: Tensor) -> Tensor:
    return hyper(prompts, input_ids, torch.ones_like(input_ids), labels=input_ids).loss


def train_step(hyper: HyperLoRA, prompts: list[str] = PROMPTS, lr: float = 1e-2) -> None:
    """One AdamW step, so that B != 0 and every part of the hypernetwork matters."""
    hyper.train()
    opt = torch.optim.AdamW(hyper.trainable_parameters(), lr=lr)
    lm_loss(hyper, prompts, ids(len(prompts))).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


@pytest.fixture
def trained(student: nn.Module, tok: PreTrainedTokenizerBase) -> HyperLoRA:
    hyper = build(student, tok)
    train_step(hyper)
    return hyper.eval()


# -- zero start and the frozen base --------------------------------------------


@pytest.mark.parametrize("backbone", ["student_embeddings", "student_hidden", "sentence_transformer"])
def test_zero_start_equals_base(backbone: str, student: nn.Module, tok: PreTrainedTokenizerBase) -> None:
    hyper = build(student, tok, backbone)
    x = ids(2)
    mask = torch.ones_like(x)
    with torch.no_grad():
        base = student(input_ids=x, attention_mask=mask).logits
    adapted = hyper(PROMPTS, x, mask).logits
    assert torch.equal(adapted, base)


def test_base_gets_no_gradients(student: nn.Module, tok: PreTrainedTokenizerBase) -> None:
    hyper = build(student, tok)
    lm_loss(hyper, PROMPTS, ids(2)).backward()
    assert [n for n, p in student.named_parameters() if p.grad is not None or p.requires_grad] == []


def test_parameter_counts_exact(
    student: nn.Module, tok: PreTrainedTokenizerBase, capsys: pytest.CaptureFixture[str]
) -> None:
    hyper = build(student, tok)
    enc = sum(p.numel() for p in hyper.hypernet.encoder.parameters() if p.requires_grad)
    gen = sum(p.numel() for p in hyper.hypernet.generator.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in student.parameters())
    counts = hyper.parameter_counts()
    assert counts["trainable"] == enc + gen == sum(p.numel() for p in hyper.trainable_parameters())
    assert counts["encoder"] == enc and counts["generator"] == gen
    assert counts["student_trainable"] == 0
    assert counts["student_frozen"] == frozen

    hyper.print_trainable_parameters()
    printed = capsys.readouterr().out
    assert f"trainable params: {enc + gen:,} (encoder {enc:,} + generator {gen:,})" in printed
    assert f"frozen student: {frozen:,}" in printed
    assert f"trainable%: {100.0 * (enc + gen) / (enc + gen + frozen):.4f}" in printed


# -- gradients -------------------------------------------------------------------


def test_b_heads_get_gradients_at_step_zero(student: nn.Module, tok: PreTrainedTokenizerBase) -> None:
    hyper = build(student, tok)
    lm_loss(hyper, PROMPTS, ids(2)).backward()
    for g, head in enumerate(hyper.hypernet.generator.heads):
        for name, p in head.b.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"heads.{g}.b.{name}"


@pytest.mark.parametrize("backbone", ["student_embeddings", "student_hidden"])
def test_every_part_learns_after_one_step(backbone: str, student: nn.Module, tok: PreTrainedTokenizerBase) -> None:
    hyper = build(student, tok, backbone)
    train_step(hyper)
    lm_loss(hyper, PROMPTS, ids(2, seed=1)).backward()
    dead = [n for n, p in hyper.hypernet.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert dead == []


# -- prompt-conditioned adapters ---------------------------------------------------


def test_prompts_change_adapters(trained: HyperLoRA) -> None:
    with torch.no_grad():
        out = trained.adapters(PROMPTS + [PROMPTS[0]])
        logits = trained(PROMPTS, torch.cat([ids(1)] * 2)).logits
    for name, (A, B) in out.items():
        assert not torch.allclose(B[0], B[1]), name
        # The same prompt twice in one batch: the same adapter.
        assert torch.equal(A[0], A[2]) and torch.equal(B[0], B[2]), name
    assert not torch.allclose(logits[0], logits[1])


@pytest.mark.parametrize("prompts", [SAME_LENGTH, PROMPTS], ids=["same-length", "different-length"])
def test_rows_equal_merged_weights(prompts: list[str], trained: HyperLoRA, student: nn.Module) -> None:
    x = ids(2)
    mask = torch.ones_like(x)
    with torch.no_grad():
        # Each row's adapter computed alone (cache cleared, so the batched call below cannot supply it).
        references = []
        for p in prompts:
            trained.clear_cache()
            references.append(merged_copy(student, trained.adapters([p]), SPEC, trained.targets))
        trained.clear_cache()
        logits = trained(prompts, x, mask).logits
        base = student(input_ids=x, attention_mask=mask).logits
    for i, reference in enumerate(references):
        expected = reference(input_ids=x[i : i + 1], attention_mask=mask[i : i + 1]).logits[0]
        assert not torch.allclose(expected, base[i], atol=1e-3)  # the adapter really acts
        torch.testing.assert_close(logits[i], expected, atol=1e-5, rtol=1e-4)


def test_inference_cache(trained: HyperLoRA) -> None:
    trained.clear_cache()
    with torch.no_grad():
        first = trained.adapters(["a", "b"])
        swapped = trained.adapters(["b", "a"])
        fresh = trained.hypernet(["b", "a"])
    assert len(trained._cache) == 2
    for name in first:
        for k in range(2):  # A, then B
            assert torch.equal(swapped[name][k][0], first[name][k][1]), name
            assert torch.equal(swapped[name][k][1], first[name][k][0]), name
            torch.testing.assert_close(swapped[name][k], fresh[name][k])
    # Training changes the weights: cached adapters must go.
    trained.train()
    assert len(trained._cache) == 0


def test_prompt_batch_mismatch_raises(trained: HyperLoRA) -> None:
    with pytest.raises(ValueError) as err:
        trained(PROMPTS, ids(3))
    message = str(err.value)
    assert re.search(r"\b2\b", message) and re.search(r"\b3\b", message), message


# -- generate ----------------------------------------------------------------------


def _generate(hyper: HyperLoRA, prompts: list[str], inputs: list[str], num_beams: int) -> ModelOutput:
    return hyper.generate(
        prompts, inputs, max_new_tokens=4, do_sample=False, num_beams=num_beams,
        return_dict_in_generate=True, output_scores=True,
    )


def _row_scores(out: ModelOutput, row: int, num_beams: int, steps: int) -> Tensor:
    """Greedy: row's logits at each step ``[steps, V]``; beams: the score of row's best beam."""
    if num_beams == 1:
        return torch.stack([s[row] for s in out.scores[:steps]])
    return out.sequences_scores[row]


@pytest.mark.parametrize("num_beams", [1, 2])
def test_generate_rows_match_single(num_beams: int, trained: HyperLoRA, tok: PreTrainedTokenizerBase) -> None:
    inputs = ["hello", "ab"]  # different lengths: "ab" is left-padded in the batch
    width = max(len(t) for t in inputs)  # one token per character
    trained.clear_cache()
    batched = _generate(trained, SAME_LENGTH, inputs, num_beams)
    swapped = _generate(trained, SAME_LENGTH[::-1], inputs, num_beams)
    for i, (prompt, text) in enumerate(zip(SAME_LENGTH, inputs)):
        trained.clear_cache()  # a fresh, single-prompt adapter
        single = _generate(trained, [prompt], [text], num_beams)
        new = single.sequences[0, len(text) :]
        # Equal new tokens; a row that stopped early is padded in the batch.
        assert torch.equal(batched.sequences[i, width : width + new.numel()], new)
        assert (batched.sequences[i, width + new.numel() :] == tok.pad_token_id).all()
        steps = len(single.scores)
        expected = _row_scores(single, 0, num_beams, steps)
        torch.testing.assert_close(_row_scores(batched, i, num_beams, steps), expected, atol=1e-5, rtol=1e-5)
        # The other row's adapter scores measurably differently: the match above is the right adapter.
        assert not torch.allclose(_row_scores(swapped, i, num_beams, steps), expected, atol=1e-5, rtol=1e-5)


def test_generate_formats_text_inputs_with_the_chat_template(trained: HyperLoRA, tok: PreTrainedTokenizerBase) -> None:
    from hyperlora.data.format import end_of_turn_ids, prefix_ids

    inputs = ["hello", "ab"]
    batch = trained._encode_inputs(inputs)
    for row, mask, text in zip(batch["input_ids"], batch["attention_mask"], inputs):
        assert row[mask.bool()].tolist() == prefix_ids(tok, None, text)  # as in training
        assert mask.tolist() == sorted(mask.tolist())  # left padding
    plain = trained._encode_inputs(inputs, chat_template=False)
    assert plain["input_ids"][0].tolist() == tok("hello", add_special_tokens=False)["input_ids"]
    out = trained.generate(PROMPTS[:2], inputs, max_new_tokens=3, do_sample=False)
    assert torch.equal(out[:, : batch["input_ids"].shape[1]], batch["input_ids"])
    raw = trained.generate(PROMPTS[:2], inputs, chat_template=False, max_new_tokens=3, do_sample=False)
    assert raw.shape[1] <= plain["input_ids"].shape[1] + 3
    assert end_of_turn_ids(tok) == [tok.eos_token_id]  # the toy template ends a turn with EOS


@pytest.mark.parametrize("chat_template", [True, False])
def test_generate_on_text_without_a_pad_token(chat_template: bool) -> None:
    from bpe_fixture import bpe_model, bpe_tokenizer

    from hyperlora.data.format import prefix_ids

    tok = bpe_tokenizer()
    hyper = build(bpe_model(tok, init=0.2), tok)
    with torch.no_grad():  # off the zero start: the adapters act
        for p in hyper.hypernet.generator.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    hyper.eval()
    prompts = ["Answer in lowercase.", "Write exactly 2 bullet points in markdown format."]
    inputs = ["How do I change a flat tire?", "Plan a trip."]  # different lengths: the second is left-padded
    options = dict(chat_template=chat_template, max_new_tokens=4, do_sample=False)

    def new_tokens(out: Tensor, width: int) -> list[list[int]]:
        return out[:, width:].tolist()

    padded = hyper._encode_inputs(inputs, chat_template)
    width = padded["input_ids"].shape[1]
    with_pad = new_tokens(hyper.generate(prompts, inputs, **options), width)
    singles = []
    for prompt, text in zip(prompts, inputs):
        alone = hyper._encode_inputs([text], chat_template)["input_ids"].shape[1]
        singles += new_tokens(hyper.generate([prompt], [text], **options), alone)
    bare = new_tokens(hyper.student.generate(**padded, max_new_tokens=4, do_sample=False,
                                             pad_token_id=tok.pad_token_id), width)

    tok.pad_token = None
    batch = hyper._encode_inputs(inputs, chat_template)
    assert batch["input_ids"].shape == (2, width) and int(batch["attention_mask"][1].sum()) < width
    for row, mask, text in zip(batch["input_ids"], batch["attention_mask"], inputs):
        assert mask.tolist() == sorted(mask.tolist())  # left padding
        expected = prefix_ids(tok, None, text) if chat_template else tok(text)["input_ids"]
        assert row[mask.bool()].tolist() == expected
    without_pad = new_tokens(hyper.generate(prompts, inputs, **options), width)
    assert without_pad == with_pad == singles  # rows generate as alone, pad token or not
    assert without_pad != bare  # and with their adapters
