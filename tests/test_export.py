"""export_peft and merge: PEFT's LoRA and the merged model compute what the hooked student computes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from checkpoint_fixture import PROMPTS, build_checkpoint
from conftest import random_ids
from peft import PeftModel
from torch import Tensor, nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from hyperlora import cli
from hyperlora.export import export_peft, merge
from hyperlora.model import HyperLoRA

FAMILIES = ["llama", "gpt2"]  # gpt2: Conv1D targets, PEFT needs fan_in_fan_out


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("export")
    return {family: build_checkpoint(root, family) for family in FAMILIES}


@pytest.fixture(scope="module")
def hypers(checkpoints: dict[str, tuple[Path, Path]]) -> dict[str, HyperLoRA]:
    return {family: HyperLoRA.from_pretrained(ckpt) for family, (_, ckpt) in checkpoints.items()}


@torch.no_grad()
def _logits(model: nn.Module, ids: Tensor) -> Tensor:
    return model(input_ids=ids).logits


@torch.no_grad()
def _hooked(hyper: HyperLoRA, prompt: str, ids: Tensor) -> Tensor:
    with hyper.inject(hyper.adapters([prompt])):
        return _logits(hyper.student, ids)


@pytest.mark.parametrize("family", FAMILIES)
def test_peft_folder_matches_hooked_student(family: str, checkpoints: dict, hypers: dict, tmp_path: Path) -> None:
    base_dir, _ = checkpoints[family]
    hyper = hypers[family]
    ids = random_ids(2, 9)
    base_logits = _logits(hyper.student, ids)
    for i, prompt in enumerate(PROMPTS[:2]):
        out = export_peft(hyper, prompt, tmp_path / f"peft-{i}")
        assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                         "hyperlora_export.json"]
        config = json.loads((out / "adapter_config.json").read_text())
        assert config["r"] == 4 and config["lora_alpha"] == 8.0 and config["lora_dropout"] == 0.0
        assert sorted(config["target_modules"]) == sorted(t.name for t in hyper.targets)
        assert config["fan_in_fan_out"] is (family == "gpt2")
        assert config["base_model_name_or_path"] == str(base_dir)
        # A fresh base each time: PeftModel wraps (and so changes) the model it is given.
        base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
        peft_model = PeftModel.from_pretrained(base, out).eval()
        expected = _hooked(hyper, prompt, ids)
        assert (expected - base_logits).abs().max() > 1e-2  # the adapter really moves the logits
        torch.testing.assert_close(_logits(peft_model, ids), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_merged_folder_matches_hooked_student(family: str, hypers: dict, tmp_path: Path) -> None:
    hyper = hypers[family]
    ids = random_ids(2, 9, seed=1)
    before = {n: p.detach().clone() for n, p in hyper.student.state_dict().items()}
    for i, prompt in enumerate(PROMPTS[:2]):
        out = merge(hyper, prompt, tmp_path / f"merged-{i}")
        merged = AutoModelForCausalLM.from_pretrained(out).eval()
        assert not any(m._forward_hooks for m in merged.modules())  # zero runtime overhead: plain weights
        torch.testing.assert_close(_logits(merged, ids), _hooked(hyper, prompt, ids), atol=1e-5, rtol=1e-4)
        assert AutoTokenizer.from_pretrained(out)("ab")["input_ids"] == hyper.tokenizer("ab")["input_ids"]
    # merge adds ΔW in place while saving; the student must be the base again, bit for bit.
    after = hyper.student.state_dict()
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_refuses_a_folder_it_did_not_write_even_with_force(hypers: dict, tmp_path: Path) -> None:
    hyper = hypers["llama"]
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    for job in (export_peft, merge):
        with pytest.raises(FileExistsError, match="written by hyperlora; it was left untouched"):
            job(hyper, PROMPTS[0], out)
        assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    # --force replaces only an earlier export: a folder hyperlora did not write is refused even then.
    for job in (export_peft, merge):
        with pytest.raises(FileExistsError, match="not an export folder written by hyperlora"):
            job(hyper, PROMPTS[0], out, force=True)
        assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    ours = tmp_path / "ours"
    export_peft(hyper, PROMPTS[0], ours)
    merge(hyper, PROMPTS[1], ours, force=True)  # an earlier export is ours to replace
    export_peft(hyper, PROMPTS[0], ours, force=True)
    assert sorted(p.name for p in ours.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                      "hyperlora_export.json"]
    assert json.loads((ours / "hyperlora_export.json").read_text())["prompt"] == PROMPTS[0]


def test_empty_prompt_leaves_nothing_behind(hypers: dict, tmp_path: Path) -> None:
    for job in (export_peft, merge):
        with pytest.raises(ValueError, match="empty"):
            job(hypers["llama"], "   ", tmp_path / "never")
    assert list(tmp_path.iterdir()) == []  # no folder, no temporary sibling


@pytest.mark.parametrize("job", ["export", "merge"])
def test_cli_writes_and_refuses_existing(job: str, checkpoints: dict, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    _, ckpt = checkpoints["llama"]
    args = [job, "--checkpoint", str(ckpt), "--prompt", PROMPTS[1], "--out", str(tmp_path / "out"), "--device", "cpu"]
    assert cli.main(args) == 0
    expected = "adapter_config.json" if job == "export" else "config.json"
    assert (tmp_path / "out" / expected).is_file()
    capsys.readouterr()
    assert cli.main(args) == 2  # a non-empty folder, no --force
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--force" in err and "Traceback" not in err
    assert cli.main([*args, "--force"]) == 0


# -- issue 14: a file is never replaced, errors are one line, files are ordinary -------------------------------


def _one_line(err: str) -> None:
    assert err.count("\n") == 1 and err.startswith("hyperlora ") and "Traceback" not in err, err


@pytest.mark.parametrize("job", ["export", "merge"])
def test_out_onto_a_file_is_refused_with_and_without_force(job: str, checkpoints: dict, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import hyperlora.loading

    monkeypatch.setattr(hyperlora.loading, "load_from_args", lambda *_: pytest.fail("loaded before refusing"))
    _, ckpt = checkpoints["llama"]
    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    for out in (taken, taken / "adapter"):
        for force in ([], ["--force"]):
            args = [job, "--checkpoint", str(ckpt), "--prompt", PROMPTS[0], "--out", str(out), *force]
            assert cli.main(args) == 2
            err = capsys.readouterr().err
            _one_line(err)
            assert "a file" in err and "choose another path" in err and "pass --force" not in err
    assert taken.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_written_files_have_ordinary_permissions(hypers: dict, tmp_path: Path) -> None:
    import os

    old = os.umask(0o022)
    try:
        folders = [export_peft(hypers["gpt2"], PROMPTS[0], tmp_path / "peft"),
                   merge(hypers["gpt2"], PROMPTS[0], tmp_path / "merged")]
    finally:
        os.umask(old)
    modes = {f"{p.parent.name}/{p.name}": oct(p.stat().st_mode & 0o777) for d in folders for p in d.iterdir()}
    assert "peft/adapter_model.safetensors" in modes and "merged/model.safetensors" in modes
    assert set(modes.values()) == {"0o644"}, modes  # safetensors alone would write 0600


@pytest.mark.parametrize("errno_", ["EACCES", "ENOSPC"])
def test_refused_write_is_one_line_and_leaves_nothing(errno_: str, checkpoints: dict, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only folder or a full disk (simulated: as root in CI chmod stops nothing)."""
    import errno
    import os

    import hyperlora.export

    def fail(_: object, filename: str, **__: object) -> None:
        code = getattr(errno, errno_)
        raise OSError(code, os.strerror(code), filename)

    monkeypatch.setattr(hyperlora.export, "save_file", fail)
    _, ckpt = checkpoints["llama"]
    out = tmp_path / "adapter"
    assert cli.main(["export", "--checkpoint", str(ckpt), "--prompt", PROMPTS[0], "--out", str(out),
                     "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    _one_line(err)
    assert ("no permission to write" if errno_ == "EACCES" else "no space left") in err
    assert list(tmp_path.iterdir()) == []  # no folder, no temporary sibling
