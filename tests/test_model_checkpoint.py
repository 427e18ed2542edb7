"""save_pretrained / from_pretrained: round trips, the recorded registry, refusals, atomic writes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase

import hyperlora.model as model_module
from hyperlora.config import HyperLoRAConfig
from hyperlora.encoder import EncoderConfig
from hyperlora.generator import GeneratorConfig
from hyperlora.lora import AdapterBatch, LoRASpec
from hyperlora.model import HyperLoRA
from hyperlora.toy.models import tiny_config, tiny_model

PROMPTS = ["Reverse the words.", "Answer in French."]
FILES = ["hyperlora_config.json", "hypernet.safetensors"]  # sorted, as listing() gives them
# (D, O) by hand for the tiny llama: width 32, 4 query heads over 2 KV heads of size 8.
LLAMA_SHAPES = {"q_proj": (32, 32), "k_proj": (32, 16), "v_proj": (32, 16), "o_proj": (32, 32)}


def build(student: nn.Module, tok: PreTrainedTokenizerBase, backbone: str = "student_embeddings",
          base_model: str | None = "tiny-llama", seed: int = 0) -> HyperLoRA:
    torch.manual_seed(seed)
    config = HyperLoRAConfig(
        base_model=base_model,
        lora=LoRASpec(rank=4, alpha=8.0),
        encoder=EncoderConfig(backbone=backbone, d_ctx=32, d_model=32, n_heads=4, max_length=64),
        generator=GeneratorConfig(d_hidden=64, d_emb=16),
    )
    return HyperLoRA(student, tok, config)


def trained(student: nn.Module, tok: PreTrainedTokenizerBase, **kwargs: object) -> HyperLoRA:
    """A hypernetwork after one AdamW step: no weight is at its initial value any more."""
    hyper = build(student, tok, **kwargs)
    opt = torch.optim.AdamW(hyper.trainable_parameters(), lr=1e-2)
    x = torch.randint(6, 93, (len(PROMPTS), 10), generator=torch.Generator().manual_seed(0))
    hyper(PROMPTS, x, labels=x).loss.backward()
    opt.step()
    return hyper.eval()


@torch.no_grad()
def adapters(hyper: HyperLoRA) -> AdapterBatch:
    hyper.eval().clear_cache()
    return hyper.adapters(PROMPTS)


def assert_identical(a: AdapterBatch, b: AdapterBatch) -> None:
    assert list(a) == list(b)
    for name in a:
        assert torch.equal(a[name][0], b[name][0]) and torch.equal(a[name][1], b[name][1]), name


def listing(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


@pytest.fixture
def saved(student: nn.Module, tok: PreTrainedTokenizerBase, tmp_path: Path) -> tuple[HyperLoRA, Path]:
    hyper = trained(student, tok)
    hyper.save_pretrained(tmp_path / "ckpt")
    return hyper, tmp_path / "ckpt"


# -- round trip and contents ---------------------------------------------------


@pytest.mark.parametrize("backbone", ["student_embeddings", "student_hidden"])
def test_round_trip_is_bit_identical(
    backbone: str, student: nn.Module, tok: PreTrainedTokenizerBase, tmp_path: Path
) -> None:
    hyper = trained(student, tok, backbone=backbone)
    before = adapters(hyper)
    assert all(B.abs().sum() > 0 for _, B in before.values())  # trained: B has left zero
    hyper.save_pretrained(tmp_path / "ckpt")
    loaded = HyperLoRA.from_pretrained(tmp_path / "ckpt", student=student, tokenizer=tok)
    assert_identical(adapters(loaded), before)
    assert listing(tmp_path) == ["ckpt"]  # no temporary sibling left behind


def test_folder_contents_and_json(saved: tuple[HyperLoRA, Path]) -> None:
    _, path = saved
    assert listing(path) == FILES
    meta = json.loads((path / "hyperlora_config.json").read_text())
    assert meta["config"]["base_model"] == "tiny-llama"
    assert meta["config"]["lora"]["rank"] == 4 and meta["config"]["lora"]["alpha"] == 8.0
    names = [f"model.layers.{i}.self_attn.{k}" for i in range(2) for k in LLAMA_SHAPES]
    assert [r["name"] for r in meta["registry"]] == names
    for r in meta["registry"]:
        assert (r["d_in"], r["d_out"]) == LLAMA_SHAPES[r["name"].rsplit(".", 1)[-1]], r


# -- another student -------------------------------------------------------------


def _wider_llama() -> nn.Module:
    config = tiny_config("llama")
    config.hidden_size, config.intermediate_size = 64, 128
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("other", [lambda: tiny_model("gpt2"), _wider_llama], ids=["gpt2", "wider-llama"])
def test_other_student_refused(
    other: Callable[[], nn.Module], saved: tuple[HyperLoRA, Path], tok: PreTrainedTokenizerBase
) -> None:
    _, path = saved
    with pytest.raises(ValueError, match=r"model\.layers\.\d\.self_attn\.[qkvo]_proj"):
        HyperLoRA.from_pretrained(path, student=other(), tokenizer=tok)


# -- missing and corrupt files ------------------------------------------------------


def test_missing_folder(tmp_path: Path, student: nn.Module, tok: PreTrainedTokenizerBase) -> None:
    with pytest.raises(FileNotFoundError):
        HyperLoRA.from_pretrained(tmp_path / "nowhere", student=student, tokenizer=tok)


def test_missing_weights(saved: tuple[HyperLoRA, Path], student: nn.Module, tok: PreTrainedTokenizerBase) -> None:
    _, path = saved
    (path / "hypernet.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="hypernet.safetensors"):
        HyperLoRA.from_pretrained(path, student=student, tokenizer=tok)


def test_corrupt_json(saved: tuple[HyperLoRA, Path], student: nn.Module, tok: PreTrainedTokenizerBase) -> None:
    _, path = saved
    (path / "hyperlora_config.json").write_text('{"config": {"lora": [garbage')
    with pytest.raises(ValueError, match="corrupt"):
        HyperLoRA.from_pretrained(path, student=student, tokenizer=tok)


@pytest.mark.parametrize("keep", [0.5, 10, 0], ids=["half", "10-bytes", "empty"])
def test_truncated_weights(keep: float, saved: tuple[HyperLoRA, Path], student: nn.Module,
                           tok: PreTrainedTokenizerBase) -> None:
    _, path = saved
    weights = path / "hypernet.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(ValueError, match="corrupt"):
        HyperLoRA.from_pretrained(path, student=student, tokenizer=tok)


# -- atomic overwrite -----------------------------------------------------------------


def test_save_replaces_existing(
    saved: tuple[HyperLoRA, Path], student: nn.Module, tok: PreTrainedTokenizerBase
) -> None:
    old, path = saved
    (path / "stale.txt").write_text("from an earlier save")
    new = trained(student, tok, seed=1)
    new.save_pretrained(path)
    assert listing(path) == FILES  # the old folder is gone, not merged into
    assert listing(path.parent) == ["ckpt"]
    loaded = adapters(HyperLoRA.from_pretrained(path, student=student, tokenizer=tok))
    assert_identical(loaded, adapters(new))
    name = next(iter(loaded))
    assert not torch.equal(loaded[name][1], adapters(old)[name][1])


def test_failed_save_keeps_old(saved: tuple[HyperLoRA, Path], student: nn.Module, tok: PreTrainedTokenizerBase,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    old, path = saved

    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    # A crash while writing the weights must leave the previous checkpoint whole.
    monkeypatch.setattr(model_module, "save_file", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        trained(student, tok, seed=1).save_pretrained(path)
    monkeypatch.undo()
    assert listing(path.parent) == ["ckpt"] and listing(path) == FILES
    assert_identical(adapters(HyperLoRA.from_pretrained(path, student=student, tokenizer=tok)), adapters(old))


# -- loading the student from base_model ------------------------------------------------


def test_loads_student_from_local_base_model(student: nn.Module, tok: PreTrainedTokenizerBase, tmp_path: Path) -> None:
    base = tmp_path / "base"
    student.save_pretrained(base)
    tok.save_pretrained(base)
    hyper = trained(student, tok, base_model=str(base))
    hyper.save_pretrained(tmp_path / "ckpt")
    loaded = HyperLoRA.from_pretrained(tmp_path / "ckpt")
    assert loaded.student is not student and loaded.tokenizer is not tok
    assert loaded.tokenizer(PROMPTS)["input_ids"] == tok(PROMPTS)["input_ids"]
    assert_identical(adapters(loaded), adapters(hyper))


@pytest.mark.parametrize("base_model", ["no/such/model", None])
def test_no_student_and_no_local_base_model(base_model: str | None, student: nn.Module, tok: PreTrainedTokenizerBase,
                                            tmp_path: Path) -> None:
    trained(student, tok, base_model=base_model).save_pretrained(tmp_path / "ckpt")
    with pytest.raises(ValueError, match="student="):
        HyperLoRA.from_pretrained(tmp_path / "ckpt")
