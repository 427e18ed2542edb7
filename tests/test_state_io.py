"""Training state without pickle: a real optimiser, schedule and RNG round-trip exactly; damaged files are refused."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from torch import nn

from hyperlora.state_io import StateError, load_state, save_state, state_files


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: object, steps: int) -> list[float]:
    losses = []
    for _ in range(steps):
        x = torch.randn(8, 4)
        loss = (model(x) - x.sum(-1, keepdim=True)).pow(2).mean() + random.random() * 0
        loss.backward()
        optimizer.step()
        scheduler.step()  # type: ignore[attr-defined]
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def _setup(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    torch.manual_seed(seed)
    model = nn.Linear(4, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    return model, optimizer, scheduler


def test_a_resumed_run_continues_bit_identically(tmp_path: Path) -> None:
    model, optimizer, scheduler = _setup()
    _train(model, optimizer, scheduler, 3)
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "rng": {"python": random.getstate(), "torch": torch.get_rng_state()}, "step": 3, "model": model.state_dict()}
    save_state(state, tmp_path / "trainer_state")
    expected = _train(model, optimizer, scheduler, 4)

    model2, optimizer2, scheduler2 = _setup(seed=1)  # other initial weights: everything must come from the files
    loaded = load_state(tmp_path / "trainer_state")
    model2.load_state_dict(loaded["model"])
    optimizer2.load_state_dict(loaded["optimizer"])
    scheduler2.load_state_dict(loaded["scheduler"])
    random.setstate(loaded["rng"]["python"])
    torch.set_rng_state(loaded["rng"]["torch"])
    assert loaded["step"] == 3
    assert _train(model2, optimizer2, scheduler2, 4) == expected
    assert torch.equal(model.weight, model2.weight)


def test_nested_types_round_trip(tmp_path: Path) -> None:
    state = {"ints": {0: (1, 2.5), 7: [None, True]}, "floats": [float("inf"), -float("inf")], "s": "x",
             "tricky": {"__tensor__": "not a ref"}, "t": torch.arange(6, dtype=torch.int16).view(2, 3)[:, 1:]}
    save_state(state, tmp_path / "s")
    back = load_state(tmp_path / "s")
    assert back["ints"] == {0: (1, 2.5), 7: [None, True]} and back["floats"] == [float("inf"), -float("inf")]
    assert back["tricky"] == {"__tensor__": "not a ref"} and back["s"] == "x"
    assert torch.equal(back["t"], torch.tensor([[1, 2], [4, 5]], dtype=torch.int16))


def test_objects_that_are_not_plain_data_are_refused_at_save(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="only plain data and tensors"):
        save_state({"fn": print}, tmp_path / "s")


def test_damaged_or_foreign_files_are_refused_by_name(tmp_path: Path) -> None:
    save_state({"t": torch.ones(1000)}, tmp_path / "s")
    json_path, tensor_path = state_files(tmp_path / "s")
    data = tensor_path.read_bytes()
    tensor_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(StateError, match="s.safetensors cannot be read"):
        load_state(tmp_path / "s")
    json_path.write_text('{"format": "something else", "state": {}}')
    with pytest.raises(StateError, match="not a hyperlora training state"):
        load_state(tmp_path / "s")
    json_path.write_text('{"format": "hyperlo')
    with pytest.raises(StateError, match="not valid JSON"):
        load_state(tmp_path / "s")
    json_path.unlink()
    with pytest.raises(StateError, match="s.json is missing"):
        load_state(tmp_path / "s")
