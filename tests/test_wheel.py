"""The configs ship: a wheel built from the source, installed into a bare folder, trains from elsewhere.

``hyperlora train experiment=tiny_test`` runs on the built-in ``toy:llama``, so nothing but the
installed package (and the venv's torch/transformers/hydra) is needed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import hyperlora

ROOT = Path(hyperlora.__file__).resolve().parents[1]


def _run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.slow
def test_train_from_an_installed_wheel_outside_the_checkout(tmp_path):
    if not (ROOT / "pyproject.toml").is_file():
        pytest.skip("not a source checkout")
    # Build from a copy: pip would otherwise write build/ and *.egg-info into the checkout.
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    shutil.copytree(ROOT / "hyperlora", source / "hyperlora", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", str(wheels), str(source)], cwd=tmp_path)
    (wheel,) = wheels.glob("hyperlora-*.whl")
    site = tmp_path / "site"
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheel)],
         cwd=tmp_path)
    assert (site / "hyperlora" / "conf" / "config.yaml").is_file()
    assert (site / "hyperlora" / "conf" / "experiment" / "tiny_test.yaml").is_file()

    work = tmp_path / "elsewhere"
    work.mkdir()
    # Only the installed copy is importable: no checkout on the path, no editable install's finder first.
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", "PYTHONNOUSERSITE": "1"}
    probe = _run([sys.executable, "-c", "import hyperlora; print(hyperlora.__file__)"], cwd=work, env=env)
    assert Path(probe.stdout.strip()).resolve().is_relative_to(site.resolve()), probe.stdout
    out = work / "out"
    _run([sys.executable, "-m", "hyperlora.cli", "train", "experiment=tiny_test", f"trainer.out_dir={out}",
          "trainer.max_steps=2", "trainer.eval_every=0", "trainer.save_every=0", "data.n_eval=2",
          "trainer.eval_examples=2"], cwd=work, env=env)
    assert (out / "hyperlora" / "hypernet.safetensors").is_file()
    assert (out / "checkpoints" / "step-000002" / "hyperlora" / "hypernet.safetensors").is_file()
    assert (out / "final_metrics.json").is_file()
