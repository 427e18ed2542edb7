"""``data.source=instruct`` with both kinds of targets (issue 15, item 3).

- the per-token loss choice: distill tokens take KL against the teacher, verified tokens cross-entropy;
- the collator marks which response tokens are verified;
- ``DataConfig``: instruct's own evaluation splits, ``data.targets`` only with the instruct suite;
- ``hyperlora train data.source=instruct data.targets=mix`` end to end on a tiny Llama with a real
  byte-level BPE tokenizer and a Llama-3-like chat template (``tests/bpe_fixture.py``).
"""

from __future__ import annotations

import json

import pytest
import torch

from bpe_fixture import bpe_tokenizer, save_bpe_model
from hyperlora.cli import main as cli_main
from hyperlora.data.collate import DistillCollator
from hyperlora.data.label import read_cache
from hyperlora.data.records import Record, parse_record, read_jsonl, write_jsonl
from hyperlora.distill.losses import cross_entropy_loss, distillation_loss, kl_loss
from hyperlora.instruct import build_split, index_by_record
from hyperlora.train import LABEL_CACHE, load_data
from hyperlora.train_config import DEFAULT_EVAL_SPLITS, INSTRUCT_EVAL_SPLITS, DataConfig

# -- the loss: KL on distill tokens, cross-entropy on verified ones ---------------------------------------


@pytest.fixture
def logits():
    torch.manual_seed(0)
    n, v = 12, 17
    return torch.randn(n, v, requires_grad=True), torch.randn(n, v), torch.randint(0, v, (n,))


@pytest.mark.parametrize("ce_weight", [0.0, 0.3])
def test_all_distill_tokens_give_exactly_todays_loss(logits, ce_weight):
    student, teacher, labels = logits
    old = distillation_loss(student, teacher, labels, "forward_kl", 2.0, ce_weight, 5)
    new = distillation_loss(student, teacher, labels, "forward_kl", 2.0, ce_weight, 5,
                            verified=torch.zeros(len(labels), dtype=torch.bool))
    assert old.keys() == new.keys()
    for key in old:
        assert torch.equal(old[key], new[key]), key


def test_all_verified_tokens_give_the_cross_entropy(logits):
    student, teacher, labels = logits
    out = distillation_loss(student, teacher, labels, "forward_kl", 2.0, 0.3, 5,
                            verified=torch.ones(len(labels), dtype=torch.bool))
    assert torch.equal(out["loss"], cross_entropy_loss(student, labels, 5))
    assert torch.equal(out["verified_ce"], out["loss"]) and out["kl"].item() == 0.0
    out["loss"].backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()


def test_mixed_tokens_combine_each_loss_over_its_own_tokens(logits):
    student, teacher, labels = logits
    verified = torch.tensor([True, False, False, True, True, False, False, False, True, False, True, False])
    out = distillation_loss(student, teacher, labels, "reverse_kl", 1.5, 0.25, 4, verified=verified)
    d = ~verified
    kl = kl_loss(student[d], teacher[d], "reverse_kl", 1.5)
    ce = cross_entropy_loss(student[d], labels[d])
    vce = cross_entropy_loss(student[verified], labels[verified])
    # Reference: plain, unchunked formulas (not the chunked code under test).
    t = 1.5
    log_s, log_t = torch.log_softmax(student[d] / t, -1), torch.log_softmax(teacher[d] / t, -1)
    dense_kl = (log_s.exp() * (log_s - log_t)).sum(-1).mean() * t**2
    dense_vce = torch.nn.functional.cross_entropy(student[verified], labels[verified])
    assert torch.allclose(out["kl"], dense_kl, atol=1e-6) and torch.allclose(out["verified_ce"], dense_vce, atol=1e-6)
    assert torch.allclose(out["loss"], kl + 0.25 * ce + vce, atol=1e-6)
    assert torch.allclose(out["ce"], ce) and torch.allclose(out["kl"], kl)


def test_a_verified_mask_of_the_wrong_length_is_refused(logits):
    student, teacher, labels = logits
    with pytest.raises(ValueError, match="verified mask"):
        distillation_loss(student, teacher, labels, verified=torch.zeros(3, dtype=torch.bool))


# -- records, collator, config ----------------------------------------------------------------------------


def test_the_collator_marks_the_verified_response_tokens():
    tok = bpe_tokenizer()
    records = [Record("Answer in lowercase.", "Name a fruit.", "an apple"),
               Record("Answer in lowercase.", "Name a tree.", "an oak", target="verified")]
    batch = DistillCollator(tok)(records)
    first = int(batch["student_loss_mask"][0].sum())
    assert batch["verified_mask"].tolist() == [False] * first + [True] * (len(batch["labels"]) - first)
    # Teacher and student select the same number of tokens, in the same order as the mask.
    assert int(batch["teacher_loss_mask"].sum()) == len(batch["verified_mask"])


def test_record_targets_are_checked_and_round_trip(tmp_path):
    with pytest.raises(ValueError, match="target"):
        Record("p", "i", "o", target="gold")
    with pytest.raises(ValueError, match="'target'"):
        parse_record('{"prompt": "p", "input": "i", "target": "gold"}', "f:1")
    records = [Record("p", "i", "o"), Record("p", "j", "o", target="verified")]
    write_jsonl(records, tmp_path / "r.jsonl")
    assert '"target"' not in (tmp_path / "r.jsonl").read_text().splitlines()[0]  # the default is left out
    assert read_jsonl(tmp_path / "r.jsonl") == records


def test_instruct_takes_its_own_default_eval_splits_and_targets_need_it():
    assert DataConfig().eval_splits == DEFAULT_EVAL_SPLITS and DataConfig().targets == "teacher"
    assert DataConfig(source="instruct").eval_splits == INSTRUCT_EVAL_SPLITS
    assert DataConfig(source="instruct", eval_splits=["heldout_type"]).eval_splits == ["heldout_type"]
    with pytest.raises(ValueError, match="instruct suite"):
        DataConfig(source="instruct", eval_splits=["train_unseen_inputs"])
    with pytest.raises(ValueError, match="needs data.source=instruct"):
        DataConfig(targets="verified")
    with pytest.raises(ValueError, match="data.targets"):
        DataConfig(source="instruct", targets="gold")


# -- end to end -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bpe_model_dir(tmp_path_factory):
    """A tiny random Llama beside the BPE tokenizer, vocabularies matched, long enough for the suite's prompts."""
    return save_bpe_model(tmp_path_factory.mktemp("bpe_llama"))


def test_train_on_the_instruct_suite_with_mixed_targets(bpe_model_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    overrides = ["experiment=tiny_test", f"model.path={bpe_model_dir}", f"trainer.out_dir={out}",
                 "data.source=instruct", "data.targets=mix", "data.n_train=24", "data.n_eval=2",
                 "data.eval_splits=[train_unseen_questions,heldout_type]", "data.label_max_new_tokens=12",
                 "data.verified_max_tokens=64", "distill.edit_weight=4",
                 "data.label_progress=false", "trainer.max_steps=2", "trainer.save_every=2", "trainer.eval_every=0",
                 "trainer.eval_examples=2", "trainer.max_new_tokens=4"]
    assert cli_main(["train", *overrides]) == 0
    printed = capsys.readouterr().out
    assert "verified targets: kept" in printed
    result = json.loads((out / "final_metrics.json").read_text())
    assert result["steps"] == 2 and result["final_loss"] is not None
    assert "heldout_type/kl" in result
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("verified_ce" in r and "kl" in r for r in logged)  # both losses were trained

    # The label cache holds both kinds of rows: answers with the instruction in context, and bare answers.
    rows = [json.loads(line) for line in (out / LABEL_CACHE).read_text().splitlines()]
    assert {r["prompted"] for r in rows} == {True, False}

    # Reloading the data decodes nothing: every label, of both kinds, comes from the cache.
    import hyperlora.data.label as label_module
    from hyperlora.base_models import load_base_model
    from hyperlora.train import compose_config
    from hyperlora.train_config import train_config

    monkeypatch.setattr(label_module, "decode_batch", lambda *a, **k: pytest.fail("decoded again"))
    data = train_config(compose_config(overrides)).data
    model, tok = load_base_model(str(bpe_model_dir), "float32", "sdpa", torch.device("cpu"), "model.path")
    train, evals = load_data(data, model, tok, out)
    verified = [r for r in train if r.target == "verified"]
    distill = [r for r in train if r.target == "distill"]
    assert len(distill) == 24 and 0 < len(verified) <= 24
    assert sorted(evals) == ["heldout_type", "train_unseen_questions"]
    examples = index_by_record(build_split("train", 24, 0))
    for record in verified:  # every verified target passes its instruction's verifiers
        assert examples[(record.prompt, record.input)].check(record.output), record
    cached = {output for output, _ in read_cache(out / LABEL_CACHE).values()}
    assert all(r.output in cached for r in distill)
