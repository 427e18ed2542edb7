"""The probes in experiments/probes run on CPU (tiny model; TorchDynamo's eager backend where they compile)
and show what they claim: the compiled model follows each injection exactly and forgets it after, the
hooks trace without graph breaks, and each report's figures are consistent with each other."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]  # the repository root
PROBES = ROOT / "experiments" / "probes"


def _probe(script: str, out: Path) -> dict:
    env = {**os.environ, "OUT": str(out), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(PROBES / script)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [p.name for p in out.iterdir()] == [script.replace(".py", ".json")]  # nothing half-written beside it
    return json.loads((out / script.replace(".py", ".json")).read_text())


@pytest.mark.slow
def test_compiled_logits_follow_each_injection(tmp_path: Path) -> None:
    r = _probe("compiled_logits.py", tmp_path)
    for i in (0, 1):
        assert r[f"injection{i}_max_abs_eager_vs_base"] > 1e-2  # the adapters matter
        assert r[f"injection{i}_max_abs_compiled_vs_eager"] == [0.0, 0.0, 0.0]  # fp32, same kernels on CPU
    assert r["base_after_max_abs_compiled_vs_eager"] == [0.0, 0.0]


@pytest.mark.slow
def test_decode_compiled_kernels_probe(tmp_path: Path) -> None:
    r = _probe("decode_compiled_kernels.py", tmp_path)
    for name in ("base", "bmm", "pointwise", "base_again"):
        assert r[name]["ms_per_token"] > 0, name
    assert r["bmm_ratio"] == pytest.approx(r["bmm"]["ms_per_token"] / r["base"]["ms_per_token"], abs=1e-3)
    # fp32 on CPU: the pointwise form of the hook's sums decodes what bmm does.
    assert r["pointwise_tokens_equal_bmm"] is True


@pytest.mark.slow
def test_decode_host_time_probe(tmp_path: Path) -> None:
    r = _probe("decode_host_time.py", tmp_path)
    costs = r["per_call_us"]
    assert all(v > 0 for k, v in costs.items() if not k.endswith("_vs_bare"))
    assert costs["injected_hook_vs_bare"] == pytest.approx(costs["linear_injected_hook"] - costs["linear_bare"], abs=0.02)
    wall = r["step_wall_us"]
    assert wall["ratio"] == pytest.approx(wall["injected"] / wall["base"], abs=1e-3)


@pytest.mark.slow
def test_train_host_time_probe(tmp_path: Path) -> None:
    r = _probe("train_host_time.py", tmp_path)
    # The custom autograd Function it measures back-propagates what autograd does (fp32).
    assert r["function_grad_rel_diff"] < 1e-5
    assert set(r["wall_ms"]) == {f"{v}_{p}" for v in ("base", "injected", "function")
                                 for p in ("forward", "forward_backward")}
    assert r["targets"] == 8


@pytest.mark.slow
def test_decode_compiled_host_probe(tmp_path: Path) -> None:
    r = _probe("decode_compiled_host.py", tmp_path)
    assert r["counters"].get("graph_break", {}) == {}  # the hooks trace without breaking the graph
    assert min(r["base_ms"], r["injected_ms"], r["base_again_ms"], r["injected_again_ms"]) > 0


@pytest.mark.slow
def test_shrink_layouts_probe(tmp_path: Path) -> None:
    r = _probe("shrink_layouts.py", tmp_path)
    for O in (2048, 1024):
        # The dense mm over every row's A side by side, read through a strided view per row (and per
        # group member), is the batched shrink: the probe times equal work.
        assert r[f"O{O}_max_abs_block_view_vs_bmm"] < 1e-4
        assert r[f"O{O}_max_abs_group_block_view_vs_bmm"] < 1e-4
        assert all(us > 0 for us in r[f"O{O}_us"].values())
