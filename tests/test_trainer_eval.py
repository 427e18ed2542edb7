"""``Trainer.evaluate``: open-answer figures with ``follows``, exact match without; one evaluation per step.

- with ``follows`` (the instruction suite on a tiny BPE Llama, ``tests/bpe_fixture.py``), each split
  reports ``open_answer_metrics``'s figures under ``{split}/`` and no exact match;
- an evaluation at a step already evaluated returns the same figures without decoding (or computing)
  anything; after a ``train_step`` it evaluates anew, and the teacher's and base's answers still come
  from the trainer's ``AnswerCache``;
- without ``follows`` (the toy suite), the same holds for exact match.
"""

from __future__ import annotations

import pytest
import torch

import hyperlora.trainer as trainer_module
from bpe_fixture import bpe_model, bpe_tokenizer
from hyperlora.answer_metrics import AnswerCache
from hyperlora.config import HyperLoRAConfig
from hyperlora.data.label import label_missing
from hyperlora.encoder import EncoderConfig
from hyperlora.generator import GeneratorConfig
from hyperlora.instruct import as_records, build_split
from hyperlora.lora import LoRASpec
from hyperlora.model import HyperLoRA
from hyperlora.open_eval import instruct_follows, open_answer_metrics
from hyperlora.trainer import Trainer, TrainerConfig
from test_trainer import EVAL, make_trainer

NEW_TOKENS = 6
SPLIT = "heldout_type"
OPEN_KEYS = {"kl", "kl_base", "gap_closed", "if_student", "if_instr_student", "if_teacher", "if_instr_teacher",
             "if_base", "if_instr_base", "rouge_student", "rouge_base", "on_topic_student", "on_topic_teacher"}


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """The tokenizer, a teacher, and labelled train and evaluation records of the instruction suite."""
    tok = bpe_tokenizer()
    teacher = bpe_model(tok, seed=1, init=0.2)
    cache = tmp_path_factory.mktemp("labels") / "labels.jsonl"
    train_examples, eval_examples = build_split("train", 8, 0), build_split(SPLIT, 4, 0)
    label = dict(max_new_tokens=NEW_TOKENS, progress=False)
    train = label_missing(as_records(train_examples), teacher, tok, cache, **label)
    evals = {SPLIT: label_missing(as_records(eval_examples), teacher, tok, cache, **label)}
    return tok, teacher, train, evals, eval_examples


def _trainer(suite, out_dir) -> Trainer:
    tok, teacher, train, evals, examples = suite
    config = HyperLoRAConfig(lora=LoRASpec(4, 8.0),
                             encoder=EncoderConfig(d_ctx=32, d_model=32, n_heads=4, max_length=256),
                             generator=GeneratorConfig(d_emb=16, d_hidden=64))
    torch.manual_seed(0)
    hyper = HyperLoRA(bpe_model(tok, seed=0, init=0.2), tok, config)
    with torch.no_grad():  # off the zero start: the student is not the base
        for p in hyper.hypernet.generator.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    options = TrainerConfig(out_dir=str(out_dir), max_steps=4, batch_size=4, lr=1e-3, warmup_steps=0, eval_every=0,
                            save_every=0, progress=False, eval_examples=4, eval_batch_size=4,
                            max_new_tokens=NEW_TOKENS)
    return Trainer(hyper, train, options, evals, teacher, max_length=512, follows=instruct_follows(examples))


def _count(monkeypatch, name: str) -> list[int]:
    """Count calls of ``hyperlora.trainer.<name>``."""
    calls: list[int] = []
    original = getattr(trainer_module, name)

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer_module, name, counting)
    return calls


def test_follows_reports_the_open_answer_figures(suite, tmp_path) -> None:
    _, teacher, _, evals, examples = suite
    trainer = _trainer(suite, tmp_path)
    got = trainer.evaluate()
    assert set(got) == {f"{SPLIT}/{k}" for k in OPEN_KEYS}
    assert not any("em_" in k for k in got)
    assert trainer.hyper.training  # evaluation hands the hypernetwork back in training mode

    # The figures are open_answer_metrics' on the split's records (its own cache, so it decodes everything).
    trainer.hyper.eval()
    direct = open_answer_metrics(trainer.hyper, teacher, evals[SPLIT], trainer.collator, instruct_follows(examples),
                                 AnswerCache(), batch_size=4, max_new_tokens=NEW_TOKENS)
    trainer.hyper.train()
    assert got == pytest.approx({f"{SPLIT}/{k}": v for k, v in direct.items()})
    assert got[f"{SPLIT}/kl"] != pytest.approx(got[f"{SPLIT}/kl_base"])
    # The KL alone (with_exact_match=False) is the same KL, through heldout_kl.
    kl_only = trainer.evaluate(with_exact_match=False)
    assert set(kl_only) == {f"{SPLIT}/kl"}
    assert kl_only[f"{SPLIT}/kl"] == pytest.approx(got[f"{SPLIT}/kl"], rel=1e-5)


def test_follows_evaluates_once_per_step(suite, tmp_path, monkeypatch) -> None:
    trainer = _trainer(suite, tmp_path)
    calls = _count(monkeypatch, "open_answer_metrics")
    first = trainer.evaluate()
    decoded = trainer.answer_cache.decoded
    assert calls == [1] and decoded == 2 * len(suite[3][SPLIT])  # the teacher's and the base's answers
    first[f"{SPLIT}/kl"] = -1.0  # the caller's copy: changing it changes nothing held
    again = trainer.evaluate()
    assert calls == [1] and trainer.answer_cache.decoded == decoded
    assert again != first and again == trainer.evaluate()
    assert again[f"{SPLIT}/kl"] > 0

    trainer.train_step()
    after = trainer.evaluate()
    assert calls == [1, 1]  # another step: evaluated anew ...
    assert after[f"{SPLIT}/kl"] != pytest.approx(again[f"{SPLIT}/kl"], rel=1e-6)
    assert after[f"{SPLIT}/kl_base"] == pytest.approx(again[f"{SPLIT}/kl_base"], rel=1e-6)
    # ... but the teacher's and the base's answers came from the trainer's cache: nothing more was decoded.
    assert trainer.answer_cache.decoded == decoded
    assert (after[f"{SPLIT}/if_teacher"], after[f"{SPLIT}/if_base"]) == (again[f"{SPLIT}/if_teacher"],
                                                                         again[f"{SPLIT}/if_base"])
    assert trainer.evaluate() == after and calls == [1, 1]


def test_exact_match_evaluates_once_per_step(tmp_path, monkeypatch) -> None:
    trainer = make_trainer(tmp_path, eval_sets=EVAL, eval_examples=4, max_new_tokens=8)
    em_calls, kl_calls = _count(monkeypatch, "exact_match"), _count(monkeypatch, "heldout_kl")
    first = trainer.evaluate()
    assert set(first) == {f"train_unseen_inputs/{k}" for k in ("kl", "em_student", "em_teacher", "em_base")}
    assert (em_calls, kl_calls) == ([1], [1])
    assert trainer.evaluate() == first and (em_calls, kl_calls) == ([1], [1])
    # The KL alone is another evaluation (not the cached one), of the same KL.
    assert trainer.evaluate(with_exact_match=False) == {"train_unseen_inputs/kl": first["train_unseen_inputs/kl"]}
    assert (em_calls, kl_calls) == ([1], [1, 1])
    assert trainer.evaluate(with_exact_match=False) == {"train_unseen_inputs/kl": first["train_unseen_inputs/kl"]}
    assert kl_calls == [1, 1]

    trainer.train_step()
    after = trainer.evaluate()
    assert (em_calls, kl_calls) == ([1, 1], [1, 1, 1])
    assert after["train_unseen_inputs/kl"] != first["train_unseen_inputs/kl"]


def test_an_evaluation_that_raises_leaves_the_hypernetwork_training(tmp_path, monkeypatch) -> None:
    trainer = make_trainer(tmp_path, eval_sets=EVAL, eval_examples=4, max_new_tokens=8)

    def broken(*args, **kwargs):
        assert not trainer.hyper.training  # evaluated in eval mode (no LoRA dropout)
        raise RuntimeError("disk full")

    monkeypatch.setattr(trainer_module, "heldout_kl", broken)
    trainer.hyper.train()
    with pytest.raises(RuntimeError, match="disk full"):
        trainer.evaluate()
    assert trainer.hyper.training  # back in training mode for the steps that follow
