"""What outlives one injection (``hyperlora.injection_state``): the learned shrink groups, weakly held,
and the TorchDynamo hook guards, so that a model compiled with torch.compile runs with the injected
adapters, and without them after.

TorchDynamo skips guards on module hooks by default, so code compiled before an
injection would replay the base graph inside it (adapters silently dropped). The
reference is always the same model run eagerly. The eager backend traces with
TorchDynamo exactly as inductor does, without needing a C++ compiler.
"""

from __future__ import annotations

import gc
import threading
import warnings
import weakref
from collections.abc import Iterator

import pytest
import torch
import torch._dynamo
from conftest import SPEC, make_adapters, random_ids
from torch import Tensor, nn

from hyperlora.injection_state import INJECTION_STATE, InjectionState, guard_hooks_in_compiled_code
from hyperlora.injector import inject
from hyperlora.targets import find_targets
from hyperlora.toy.models import tiny_model


@pytest.fixture
def dynamo_defaults(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A process as it starts: nothing compiled, hook guards off (TorchDynamo's default)."""
    torch._dynamo.reset()
    monkeypatch.setitem(torch._dynamo.utils.counters, "frames", type(torch._dynamo.utils.counters["frames"])())
    with torch._dynamo.config.patch(skip_nnmodule_hook_guards=True):  # restored afterwards
        yield
    torch._dynamo.reset()


def _logits(model: nn.Module, ids: Tensor) -> Tensor:
    with torch.no_grad():
        return model(ids).logits


def _setup() -> tuple[nn.Module, dict, Tensor, Tensor, Tensor]:
    model = tiny_model("llama")
    adapters = make_adapters(find_targets(model), rows=2)
    ids = random_ids(2, 7)
    base = _logits(model, ids)
    with inject(model, adapters, SPEC):
        injected = _logits(model, ids)
    assert (injected - base).abs().max() > 1e-2  # the adapters matter, so dropping them would show
    torch._dynamo.config.skip_nnmodule_hook_guards = True  # the eager runs above turned the guards on
    return model, adapters, ids, base, injected


def _quietly_injected(target: nn.Module, adapters: dict, compiled: nn.Module, ids: Tensor) -> Tensor:
    """``compiled``'s logits inside ``inject(target, adapters)``; hyperlora's warning would fail the test."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="hyperlora")
        with inject(target, adapters, SPEC):
            return _logits(compiled, ids)


@pytest.mark.usefixtures("dynamo_defaults")
def test_compiled_before_injection_still_applies_the_adapters() -> None:
    model, adapters, ids, base, injected = _setup()
    compiled = torch.compile(model, backend="eager")
    torch.testing.assert_close(_logits(compiled, ids), base)  # compiled without hooks, guards off
    with pytest.warns(UserWarning, match="skip_nnmodule_hook_guards"), inject(model, adapters, SPEC):
        got = _logits(compiled, ids)
    torch.testing.assert_close(got, injected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(_logits(compiled, ids), base)
    assert torch._dynamo.config.skip_nnmodule_hook_guards is False
    # Another injection with other adapters: the compiled model follows them, no warning this time.
    other = make_adapters(find_targets(model), rows=2, seed=7)
    with inject(model, other, SPEC):
        expected = _logits(model, ids)
    got = _quietly_injected(model, other, compiled, ids)
    assert (expected - injected).abs().max() > 1e-2
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("into", ["model", "compiled wrapper"])
@pytest.mark.usefixtures("dynamo_defaults")
def test_first_compiled_inside_the_injection_forgets_the_adapters_after_it(into: str) -> None:
    # The mirror case, a regression guard (TorchDynamo's own guards catch it today), injecting into
    # the model or into torch.compile's wrapper, which answers to the inner model's names.
    model, adapters, ids, base, injected = _setup()
    compiled = torch.compile(model, backend="eager")
    # TorchDynamo is imported (torch.compile above) but nothing is compiled yet: no warning.
    got = _quietly_injected(model if into == "model" else compiled, adapters, compiled, ids)
    torch.testing.assert_close(got, injected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(_logits(compiled, ids), base)


@pytest.mark.usefixtures("dynamo_defaults")
def test_nothing_to_do_without_compiled_code() -> None:
    assert guard_hooks_in_compiled_code() is False  # nothing compiled: guards on, no reset
    assert torch._dynamo.config.skip_nnmodule_hook_guards is False
    assert guard_hooks_in_compiled_code() is False  # already on


@pytest.mark.usefixtures("dynamo_defaults")
@pytest.mark.filterwarnings("ignore:hyperlora")
def test_threads_entering_at_once_each_get_guards() -> None:
    """Each thread that enters an injection runs with hook guards on; the compiled code from before is
    dropped (once, where the setting is process-wide; once per thread where TorchDynamo keeps it per
    thread, as PyTorch 2.13 does), and no thread fails half-way."""
    torch.compile(lambda x: x + 1, backend="eager")(torch.ones(2))  # something compiled: a reset is due
    start, results, guarded = threading.Barrier(4), [], []

    def enter() -> None:
        start.wait()
        results.append(INJECTION_STATE.guard_hooks_in_compiled_code())
        guarded.append(torch._dynamo.config.skip_nnmodule_hook_guards is False)

    threads = [threading.Thread(target=enter) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4 and any(results)
    assert guarded == [True] * 4


# -- learned shrink groups ------------------------------------------------------
def test_learned_groups_are_kept_per_model_and_target_set() -> None:
    state, model, other = InjectionState(), nn.Linear(2, 2), nn.Linear(2, 2)
    assert state.learned_groups(model, ["a", "b"]) is None and not state.remembers(model)
    state.remember_groups(model, ["b", "a"], (("a", "b"),))
    assert state.learned_groups(model, ["a", "b"]) == (("a", "b"),)  # the order of the names does not matter
    assert state.learned_groups(model, ["a"]) is None  # another target set: learnt on its own
    assert state.learned_groups(other, ["a", "b"]) is None
    state.forget(model)
    assert state.learned_groups(model, ["a", "b"]) is None


def test_an_injection_leaves_its_groups_in_the_state_without_keeping_the_model_alive() -> None:
    model = tiny_model("llama")
    adapters = make_adapters(find_targets(model), rows=1)
    assert not INJECTION_STATE.remembers(model)
    with inject(model, adapters, SPEC):
        assert not INJECTION_STATE.remembers(model)  # written at exit, not before
        _logits(model, random_ids(1, 5))
    assert INJECTION_STATE.remembers(model)
    assert INJECTION_STATE.learned_groups(model, list(adapters))
    gone = weakref.ref(model)
    del model
    gc.collect()
    assert gone() is None
