"""The from-scratch teacher: model shape, the response-only loss mask, and a short end-to-end pretrain."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from hyperlora.data.format import prefix_ids, prefix_text, response_ids
from hyperlora.toy.tasks import SPLITS, build_split
from hyperlora.toy.teacher import (
    IGNORE_INDEX,
    PRESETS,
    REPORT_NAME,
    TeacherPreset,
    _train,
    build_teacher,
    encode_examples,
    make_batch,
    pretrain_teacher,
)
from hyperlora.toy.tokenizer import char_tokenizer

# Seconds on 2 CPU cores: width 32, 2 layers, 40 steps of 16 rows, 20 eval examples per split.
TINY = TeacherPreset(hidden=32, layers=2, heads=4, kv_heads=2, intermediate=64, steps=40, batch_size=16,
                     lr=3e-3, warmup=4, n_train=200, eval_examples=20, eval_batch_size=20)


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_build_teacher_is_a_llama_covering_the_tokenizer(name: str, tok) -> None:
    preset = PRESETS[name] if name == "cpu" else PRESETS[name].replace(layers=1)  # gpu width, fewer layers: fast
    model = build_teacher(preset, tok)
    assert isinstance(model, LlamaForCausalLM)
    config = model.config
    assert config.vocab_size >= len(tok) and config.vocab_size % 8 == 0
    assert model.get_input_embeddings().num_embeddings == config.vocab_size
    assert (config.pad_token_id, config.bos_token_id, config.eos_token_id) == (
        tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)
    assert (config.hidden_size, config.num_attention_heads, config.num_key_value_heads) == (
        preset.hidden, preset.heads, preset.kv_heads)
    # Every id the tokenizer can emit gets a finite logit row of full vocabulary width.
    ids = torch.arange(len(tok)).unsqueeze(0)
    logits = model(input_ids=ids).logits
    assert logits.shape == (1, len(tok), config.vocab_size) and torch.isfinite(logits).all()


def test_build_teacher_is_seeded(tok) -> None:
    a, b = build_teacher(TINY, tok), build_teacher(TINY, tok)
    c = build_teacher(TINY.replace(seed=1), tok)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)


@pytest.mark.parametrize("change", [dict(heads=3), dict(kv_heads=3), dict(warmup=41), dict(steps=0), dict(lr=0.0)])
def test_preset_refuses_inconsistent_values(change: dict) -> None:
    with pytest.raises(ValueError):
        TINY.replace(**change)


def test_encode_examples_is_the_teacher_format(tok) -> None:
    examples = build_split("train", 12, seed=3)
    for (ids, n_prefix), e in zip(encode_examples(tok, examples), examples):
        prefix = prefix_ids(tok, e.prompt, e.input)
        assert ids == prefix + response_ids(tok, e.output) and n_prefix == len(prefix)
    for (ids, n_prefix), e in zip(encode_examples(tok, examples, with_prompt=False), examples):
        prefix = prefix_ids(tok, None, e.input)
        assert ids == prefix + response_ids(tok, e.output) and n_prefix == len(prefix)
        assert e.prompt not in tok.decode(ids)


def test_make_batch_puts_loss_on_response_tokens_only(tok) -> None:
    examples = build_split("train", 6, seed=0)
    rows = encode_examples(tok, examples)
    assert len({len(ids) for ids, _ in rows}) > 1, "rows of different lengths exercise the padding"
    batch = make_batch(rows, tok.pad_token_id)
    width = max(len(ids) for ids, _ in rows)
    shapes = {k: tuple(v.shape) for k, v in batch.items()}
    assert shapes == {k: (6, width) for k in ("input_ids", "attention_mask", "labels")}
    for i, ((ids, n_prefix), e) in enumerate(zip(rows, examples)):
        labels, input_ids = batch["labels"][i], batch["input_ids"][i]
        response = response_ids(tok, e.output)
        assert labels[n_prefix : len(ids)].tolist() == response  # ends with EOS: the model learns to stop
        assert (labels[:n_prefix] == IGNORE_INDEX).all()  # instruction, input and template: no loss
        assert (labels[len(ids) :] == IGNORE_INDEX).all()  # padding: no loss
        assert input_ids[: len(ids)].tolist() == ids
        assert (input_ids[len(ids) :] == tok.pad_token_id).all()  # right padding
        assert batch["attention_mask"][i].tolist() == [1] * len(ids) + [0] * (width - len(ids))
    assert int((batch["labels"] != IGNORE_INDEX).sum()) == sum(len(response_ids(tok, e.output)) for e in examples)


def test_training_is_deterministic(tok) -> None:
    rows = encode_examples(tok, build_split("train", 64, seed=0))
    preset = TINY.replace(steps=5, warmup=1)
    runs = []
    for _ in range(2):
        model = build_teacher(preset, tok)
        history = _train(model, rows, preset, torch.device("cpu"), tok.pad_token_id, log=lambda _: None)
        runs.append((history, [p.detach().clone() for p in model.parameters()]))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))


def test_pretrain_lowers_loss_and_writes_a_loadable_folder(tmp_path: Path, tok) -> None:
    out = tmp_path / "teacher"
    out.mkdir()
    (out / REPORT_NAME).write_text("{}")  # a teacher written here before: replaced as a whole
    (out / "stale.txt").write_text("from an earlier run")  # must be replaced, not merged
    report = pretrain_teacher(TINY, out, device="cpu", log=lambda _: None)

    losses = [entry["loss"] for entry in report["loss_log"]]
    assert len(losses) == 10 and losses[-1] < losses[0] - 0.5

    assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher"]  # no temporary folders left beside it
    assert not (out / "stale.txt").exists()
    model = AutoModelForCausalLM.from_pretrained(out)
    loaded_tok = AutoTokenizer.from_pretrained(out)
    assert isinstance(model, LlamaForCausalLM) and model.config.hidden_size == TINY.hidden
    text = prefix_text(loaded_tok, "Sort the words alphabetically.", "cat dog")
    assert loaded_tok(text, add_special_tokens=False)["input_ids"] == tok(text, add_special_tokens=False)["input_ids"]

    saved = json.loads((out / REPORT_NAME).read_text())
    assert saved == json.loads(json.dumps(report))
    assert set(saved["exact_match"]) == set(SPLITS)
    assert set(saved["exact_match_no_prompt"]) == {"train_unseen_inputs"}
    assert all(0.0 <= v <= 1.0 for v in [*saved["exact_match"].values(), *saved["exact_match_no_prompt"].values()])
    loss = saved["response_loss"]["train_unseen_inputs"]
    assert set(loss) == {"with_prompt", "no_prompt"} and all(0.0 < v < 10.0 for v in loss.values())
    assert saved["eval_examples"] == TINY.eval_examples and saved["preset"]["hidden"] == TINY.hidden


def test_script_runs_the_cpu_preset_with_overrides(tmp_path: Path) -> None:
    path = Path(__file__).resolve().parents[2] / "scripts" / "pretrain_teacher.py"
    spec = importlib.util.spec_from_file_location("pretrain_teacher_script", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    report = script.main(["--preset", "cpu", "--out", str(tmp_path / "t"), "--steps", "3", "--n-train", "64",
                          "--eval-examples", "2", "--device", "cpu"])
    assert report["preset"]["steps"] == 3 and report["preset"]["warmup"] <= 3
    assert (tmp_path / "t" / REPORT_NAME).is_file()


def _user_folder(path: Path) -> dict:
    path.mkdir()
    (path / "notes.txt").write_text("user data")
    (path / "src").mkdir()
    (path / "src" / "main.py").write_text("print('hi')")
    return {str(p.relative_to(path)): p.read_bytes() if p.is_file() else None for p in sorted(path.rglob("*"))}


def test_pretrain_refuses_a_folder_that_is_not_a_teacher_before_training(tmp_path: Path, monkeypatch) -> None:
    import hyperlora.toy.teacher as teacher_module

    out = tmp_path / "mine"
    before = _user_folder(out)

    def no_training(*args, **kwargs):
        raise AssertionError("trained before the output folder was checked")

    monkeypatch.setattr(teacher_module, "_train", no_training)
    with pytest.raises(FileExistsError, match="not a teacher folder written by hyperlora; it was left untouched"):
        pretrain_teacher(TINY, out, device="cpu", log=lambda _: None)
    after = {str(p.relative_to(out)): p.read_bytes() if p.is_file() else None for p in sorted(out.rglob("*"))}
    assert after == before and sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a directory"):
        pretrain_teacher(TINY, tmp_path / "file", device="cpu", log=lambda _: None)


def test_script_refuses_a_user_folder_in_one_line(tmp_path: Path) -> None:
    path = Path(__file__).resolve().parents[2] / "scripts" / "pretrain_teacher.py"
    out = tmp_path / "mine"
    before = _user_folder(out)
    done = subprocess.run([sys.executable, str(path), "--out", str(out), "--steps", "3", "--device", "cpu"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert len(done.stderr.strip().splitlines()) == 1 and "not a teacher folder" in done.stderr
    after = {str(p.relative_to(out)): p.read_bytes() if p.is_file() else None for p in sorted(out.rglob("*"))}
    assert after == before
