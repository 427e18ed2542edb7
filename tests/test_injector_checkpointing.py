"""Gradient checkpointing gives the adapters the same gradients as a plain backward.

Checkpointing replays each layer's forward during backward. When backward runs
after the ``with inject(...)`` block, a naive injector has already removed its
hooks, the replay computes the base layer and the gradients silently change
(PEFT hit this). Both backward placements and both checkpoint variants are checked.
"""

from __future__ import annotations

import pytest
import torch
from conftest import SPEC, make_adapters, random_ids
from torch import Tensor, nn

from hyperlora.injector import inject
from hyperlora.targets import find_targets
from hyperlora.toy.models import tiny_model

Leaves = dict[str, tuple[Tensor, Tensor]]


def _student(checkpointing: bool, use_reentrant: bool = False) -> nn.Module:
    model = tiny_model("llama").train()
    model.requires_grad_(False)  # frozen base: only the adapters get gradients
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
    return model


def _leaves(model: nn.Module, layer: int | None = None) -> Leaves:
    targets = [t for t in find_targets(model) if layer is None or t.layer == layer]
    adapters = make_adapters(targets, rows=2)
    return {name: (A.clone().requires_grad_(), B.clone().requires_grad_()) for name, (A, B) in adapters.items()}


def _grads(model: nn.Module, backward_inside: bool, layer: int | None = None) -> dict[str, tuple[Tensor, Tensor]]:
    """Gradients of the leaf A0, B0 under a cross-entropy loss on ids (targets of ``layer`` only, if given)."""
    leaves = _leaves(model, layer)
    # Non-leaf adapters, as a generator would emit: the graph must reach back to A0, B0.
    adapters = {name: (A0 * 1.0, B0 * 1.0) for name, (A0, B0) in leaves.items()}
    ids = random_ids(2, 7)
    with inject(model, adapters, SPEC):
        loss = model(input_ids=ids, labels=ids).loss
        if backward_inside:
            loss.backward()
    if not backward_inside:
        loss.backward()  # after exit: hooks are gone, the replay must bring them back
    for p in model.parameters():
        assert p.grad is None
    grads = {name: (A0.grad, B0.grad) for name, (A0, B0) in leaves.items()}
    assert all(gA is not None and gB is not None for gA, gB in grads.values())
    return grads


@pytest.mark.parametrize("backward_inside", [False, True])
@pytest.mark.parametrize("use_reentrant", [False, True])
def test_checkpointing_gives_same_gradients(use_reentrant: bool, backward_inside: bool) -> None:
    reference = _grads(_student(checkpointing=False), backward_inside=True)
    model = _student(checkpointing=True, use_reentrant=use_reentrant)
    layers = [m for m in model.modules() if m.__dict__.get("gradient_checkpointing")]
    assert all(layer in layers for layer in model.model.layers)  # the decoder layers are checkpointed
    originals = [m.__dict__["_gradient_checkpointing_func"] for m in layers]
    checkpointed = _grads(model, backward_inside=backward_inside)
    for name, (gA, gB) in reference.items():
        assert gA.abs().max() > 0 and gB.abs().max() > 0
        torch.testing.assert_close(checkpointed[name][0], gA, atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(checkpointed[name][1], gB, atol=1e-6, rtol=1e-4)
    assert all(m.__dict__["_gradient_checkpointing_func"] is f for m, f in zip(layers, originals))


def test_replay_after_exit_leaves_no_hooks() -> None:
    model = _student(checkpointing=True)
    before = {name: tuple(m._forward_hooks) for name, m in model.named_modules()}
    _grads(model, backward_inside=False)
    assert {name: tuple(m._forward_hooks) for name, m in model.named_modules()} == before


def test_targets_in_one_layer_only() -> None:
    # Adapters on the last layer alone are replayed there when backward runs after exit.
    last = len(tiny_model("llama").model.layers) - 1
    reference = _grads(_student(checkpointing=False), backward_inside=True, layer=last)
    model = _student(checkpointing=True)
    checkpointed = _grads(model, backward_inside=False, layer=last)
    assert set(checkpointed) == set(reference) and all(f".layers.{last}." in name for name in reference)
    for name, (gA, gB) in reference.items():
        assert gA.abs().max() > 0 and gB.abs().max() > 0
        torch.testing.assert_close(checkpointed[name][0], gA, atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(checkpointed[name][1], gB, atol=1e-6, rtol=1e-4)


def test_projection_shared_by_two_layers() -> None:
    # One module registered under two paths (a shared block): named by its first path only, it is
    # also replayed inside the second layer, whose checkpoint function must bring the hooks back too.
    def shared(checkpointing: bool) -> nn.Module:
        model = _student(checkpointing)
        model.model.layers[1].self_attn.q_proj = model.model.layers[0].self_attn.q_proj
        return model

    def grads(model: nn.Module, backward_inside: bool) -> tuple[Tensor, Tensor]:
        name = "model.layers.0.self_attn.q_proj"
        assert name in {t.name for t in find_targets(model)}
        A0, B0 = (t.clone().requires_grad_() for t in make_adapters(
            [t for t in find_targets(model) if t.name == name], rows=2)[name])
        ids = random_ids(2, 7)
        with inject(model, {name: (A0 * 1.0, B0 * 1.0)}, SPEC):
            loss = model(input_ids=ids, labels=ids).loss
            if backward_inside:
                loss.backward()
        if not backward_inside:
            loss.backward()
        return A0.grad, B0.grad

    reference = grads(shared(checkpointing=False), backward_inside=True)
    checkpointed = grads(shared(checkpointing=True), backward_inside=False)
    assert reference[0].abs().max() > 0
    for got, want in zip(checkpointed, reference, strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-4)
