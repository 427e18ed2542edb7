"""save_pretrained / from_pretrained: round trips, the recorded registry and base model, refusals, atomic writes."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase

import hyperlora.model as model_module
from hyperlora.config import HyperLoRAConfig
from hyperlora.encoder import EncoderConfig
from hyperlora.fingerprint import file_sha256, model_fingerprint
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


# -- issue 14: the base model recorded and checked --------------------------------------------


def _meta(path: Path) -> dict:
    return json.loads((path / "hyperlora_config.json").read_text())


def _write_meta(path: Path, meta: dict) -> None:
    (path / "hyperlora_config.json").write_text(json.dumps(meta))


def test_records_absolute_base_model_and_loads_it_from_another_folder(
    student: nn.Module, tok: PreTrainedTokenizerBase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    student.save_pretrained("base")
    tok.save_pretrained("base")
    hyper = trained(student, tok, base_model="base")  # relative, as a user types it
    hyper.save_pretrained("ckpt")
    meta = _meta(tmp_path / "ckpt")
    assert meta["format_version"] == 2
    assert meta["config"]["base_model"] == str((tmp_path / "base").resolve())
    assert meta["base_model"]["dtype"] == "float32"
    assert meta["base_model"]["fingerprints"]["float32"] == model_fingerprint(student)
    assert meta["weights_sha256"] == file_sha256(tmp_path / "ckpt" / "hypernet.safetensors")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # where "base" would name nothing (or another model)
    loaded = HyperLoRA.from_pretrained(tmp_path / "ckpt")
    assert_identical(adapters(loaded), adapters(hyper))


def test_toy_base_model_name_is_recorded_as_is(tok: PreTrainedTokenizerBase, tmp_path: Path) -> None:
    from hyperlora.base_models import load_base_model

    toy, _ = load_base_model("toy:llama")
    build(toy, tok, base_model=None).save_pretrained(tmp_path / "ckpt")
    assert _meta(tmp_path / "ckpt")["config"]["base_model"] == "toy:llama"
    assert HyperLoRA.from_pretrained(tmp_path / "ckpt").config.base_model == "toy:llama"


def test_another_base_model_of_the_same_shape_is_refused_by_name(
    saved: tuple[HyperLoRA, Path], tok: PreTrainedTokenizerBase, capsys: pytest.CaptureFixture[str]
) -> None:
    _, path = saved
    other = tiny_model("llama", seed=1)  # same architecture and shapes: the registry cannot tell
    with pytest.raises(ValueError) as err:
        HyperLoRA.from_pretrained(path, student=other, tokenizer=tok)
    message = str(err.value)
    assert "\n" not in message
    assert re.search(rf"Checkpoint {re.escape(str(path))} was trained on base model tiny-llama \(fingerprint "
                     rf"[0-9a-f]{{16}}\); the model loaded from .* has fingerprint {model_fingerprint(other)}", message)
    assert "--allow-other-base-model" in message
    # The override loads it, with one line on stderr.
    capsys.readouterr()
    loaded = HyperLoRA.from_pretrained(path, student=other, tokenizer=tok, allow_other_base_model=True)
    assert loaded.student is other
    err_text = capsys.readouterr().err
    assert err_text.count("\n") == 1 and "allow_other_base_model" in err_text


def test_a_coarser_or_finer_dtype_of_the_same_weights_is_the_same_base_model(
    tok: PreTrainedTokenizerBase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Weights cast to bfloat16 are what a bfloat16 load holds: trained in one dtype, loaded in another, same model."""
    f32 = tiny_model("llama", seed=0)
    bf16 = copy.deepcopy(f32).to(torch.bfloat16)
    build(f32, tok).save_pretrained(tmp_path / "f32")
    build(bf16, tok).save_pretrained(tmp_path / "bf16")
    assert set(_meta(tmp_path / "f32")["base_model"]["fingerprints"]) == {"float32", "bfloat16", "float16"}
    capsys.readouterr()
    HyperLoRA.from_pretrained(tmp_path / "f32", student=bf16, tokenizer=tok)  # loaded coarser (--dtype bfloat16)
    HyperLoRA.from_pretrained(tmp_path / "bf16", student=f32, tokenizer=tok)  # loaded finer (as saved)
    assert capsys.readouterr().err == ""
    for ckpt in ("f32", "bf16"):
        with pytest.raises(ValueError, match="fingerprint"):
            HyperLoRA.from_pretrained(tmp_path / ckpt, student=tiny_model("llama", seed=1, dtype=torch.bfloat16),
                                      tokenizer=tok)
    # bfloat16 and float16 are not casts of each other: loads, unverified, with one line.
    HyperLoRA.from_pretrained(tmp_path / "bf16", student=copy.deepcopy(f32).to(torch.float16), tokenizer=tok)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be verified" in err


def test_format_1_checkpoint_loads_with_one_warning(
    saved: tuple[HyperLoRA, Path], student: nn.Module, tok: PreTrainedTokenizerBase,
    capsys: pytest.CaptureFixture[str]
) -> None:
    hyper, path = saved
    meta = _meta(path)
    _write_meta(path, {"format_version": 1, "config": meta["config"], "registry": meta["registry"]})
    capsys.readouterr()
    loaded = HyperLoRA.from_pretrained(path, student=student, tokenizer=tok)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be verified" in err and "format 1" in err
    assert_identical(adapters(loaded), adapters(hyper))


# -- issue 14: the weights verified -----------------------------------------------------------


def test_flipped_tensor_bytes_are_refused_as_damaged(
    saved: tuple[HyperLoRA, Path], student: nn.Module, tok: PreTrainedTokenizerBase
) -> None:
    _, path = saved
    weights = path / "hypernet.safetensors"
    data = bytearray(weights.read_bytes())
    start = len(data) - 8192  # tensor data (the header is at the front): the file still parses
    data[start : start + 4096] = bytes(b ^ 0x5A for b in data[start : start + 4096])
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"hypernet\.safetensors is damaged") as err:
        HyperLoRA.from_pretrained(path, student=student, tokenizer=tok)
    assert "\n" not in str(err.value)


def test_a_nan_tensor_is_refused_by_name(
    saved: tuple[HyperLoRA, Path], student: nn.Module, tok: PreTrainedTokenizerBase
) -> None:
    _, path = saved
    weights = path / "hypernet.safetensors"
    state = load_file(str(weights))
    name = sorted(state)[len(state) // 2]
    state[name] = torch.full_like(state[name], float("nan"))
    save_file(state, str(weights))
    meta = _meta(path)
    meta["weights_sha256"] = file_sha256(weights)  # as if saved so: the checksum alone does not catch it
    _write_meta(path, meta)
    with pytest.raises(ValueError, match=rf"NaN or infinite values in {re.escape(name)}"):
        HyperLoRA.from_pretrained(path, student=student, tokenizer=tok)


def test_save_refuses_non_finite_weights(
    saved: tuple[HyperLoRA, Path], student: nn.Module, tok: PreTrainedTokenizerBase, tmp_path: Path
) -> None:
    old, path = saved
    hyper = trained(student, tok, seed=1)
    name, param = next(iter(hyper.hypernet.named_parameters()))
    with torch.no_grad():
        param.view(-1)[0] = float("inf")
    for target in (tmp_path / "new", path):
        with pytest.raises(ValueError, match=rf"Refusing to save .*{re.escape(name)} is NaN or infinite") as err:
            hyper.save_pretrained(target)
        assert "\n" not in str(err.value)
    assert listing(tmp_path) == ["ckpt"]  # nothing written, the existing checkpoint untouched
    assert_identical(adapters(HyperLoRA.from_pretrained(path, student=student, tokenizer=tok)), adapters(old))


# -- issue 14: a checkpoint config with wrong types or sizes ------------------------------------


def _edit(meta: dict, case: str) -> None:
    if case == "format_version string":
        meta["format_version"] = "2"
    elif case == "lora.alpha string":
        meta["config"]["lora"]["alpha"] = "x"
    elif case == "config a list":
        meta["config"] = []
    elif case == "lora null":
        meta["config"]["lora"] = None
    elif case == "unknown config key":
        meta["config"]["lora"]["ranke"] = 8
    elif case == "unknown top-level key":
        meta["comment"] = "edited"
    elif case == "registry a string":
        meta["registry"] = "q_proj"
    elif case == "fingerprints null":
        meta["base_model"]["fingerprints"] = None


EDITS = {"format_version string": "format_version", "lora.alpha string": "lora.alpha", "config a list": "config",
         "lora null": "lora", "unknown config key": "ranke", "unknown top-level key": "comment",
         "registry a string": "registry", "fingerprints null": "base_model"}


@pytest.mark.parametrize("case", list(EDITS))
def test_wrong_types_in_the_config_are_one_line_naming_the_key(
    case: str, saved: tuple[HyperLoRA, Path], student: nn.Module, tok: PreTrainedTokenizerBase
) -> None:
    _, path = saved
    meta = _meta(path)
    _edit(meta, case)
    _write_meta(path, meta)
    with pytest.raises(ValueError) as err:
        HyperLoRA.from_pretrained(path, student=student, tokenizer=tok)
    message = str(err.value)
    assert "\n" not in message and EDITS[case] in message and "is inconsistent" in message, message


@pytest.mark.parametrize("key, value", [("lora.rank", 8), ("generator.d_hidden", 32), ("encoder.n_layers", 3)])
def test_config_whose_sizes_do_not_fit_the_weights_is_inconsistent(
    key: str, value: int, saved: tuple[HyperLoRA, Path], student: nn.Module, tok: PreTrainedTokenizerBase
) -> None:
    _, path = saved
    meta = _meta(path)
    part, field = key.split(".")
    meta["config"][part][field] = value
    _write_meta(path, meta)
    with pytest.raises(ValueError, match=r"is inconsistent: .* does not fit its weights \((hypernet|[a-z_]+\.)") as err:
        HyperLoRA.from_pretrained(path, student=student, tokenizer=tok)
    assert "\n" not in str(err.value) and "hypernet.safetensors" in str(err.value)


# -- issue 14: save_pretrained replaces only a checkpoint -----------------------------------------


def test_save_refuses_a_folder_that_is_not_a_checkpoint(
    student: nn.Module, tok: PreTrainedTokenizerBase, tmp_path: Path
) -> None:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    hyper = trained(student, tok)
    with pytest.raises(FileExistsError, match="not a HyperLoRA checkpoint"):
        hyper.save_pretrained(folder)
    assert listing(folder) == ["notes.txt"] and (folder / "notes.txt").read_text() == "mine"
    assert listing(tmp_path) == ["project"]
    (tmp_path / "empty").mkdir()
    hyper.save_pretrained(tmp_path / "empty")  # an empty folder is fine
    assert listing(tmp_path / "empty") == FILES


def test_a_newer_format_asks_for_an_upgrade(saved: tuple[HyperLoRA, Path], student: nn.Module,
                                             tok: PreTrainedTokenizerBase) -> None:
    _, path = saved
    meta = _meta(path)
    meta["format_version"] = 3
    _write_meta(path, meta)
    with pytest.raises(ValueError, match="has format version 3; upgrade hyperlora"):
        HyperLoRA.from_pretrained(path, student=student, tokenizer=tok)


def test_checkpoint_files_have_ordinary_permissions(tmp_path: Path) -> None:
    from checkpoint_fixture import build_checkpoint

    from hyperlora.atomic import ordinary_file_mode

    _, ckpt = build_checkpoint(tmp_path)
    modes = {p.name: p.stat().st_mode & 0o777 for p in ckpt.iterdir()}
    assert modes and set(modes.values()) == {ordinary_file_mode()}, modes
