"""Two CPU processes (gloo) train the hypernetwork with DDP: the ranks stay identical and match one process.

Each rank builds the same tiny setup, joins a gloo process group and trains 3 steps on
its half of every global batch (BatchStream's stride split). The parent then compares
the weights the ranks saved, with each other and with a single-process run on the
same global batches.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import hyperlora

from hyperlora.config import HyperLoRAConfig
from hyperlora.data.records import Record
from hyperlora.toy.tasks import build_split
from hyperlora.encoder import EncoderConfig
from hyperlora.generator import GeneratorConfig
from hyperlora.lora import LoRASpec
from hyperlora.model import HyperLoRA
from hyperlora.toy.models import tiny_model
from hyperlora.toy.tokenizer import char_tokenizer
from hyperlora.trainer import Trainer, TrainerConfig

WORLD = 2
STEPS = 3
RESPONSE_CHARS = 8


def _records() -> list[Record]:
    # Every response has the same length (8 chars + EOS), so each rank's half of a global batch
    # has the same number of response tokens. The loss is a per-rank token mean and DDP averages
    # the ranks' gradients: only with equal token counts is that the global token mean that a
    # single process computes.
    out = []
    for e in build_split("train", 96, 0):
        if len(e.output) >= RESPONSE_CHARS:
            out.append(Record(e.prompt, e.input, e.output[:RESPONSE_CHARS]))
    assert len(out) >= 24
    return out[:32]


def _hyper() -> HyperLoRA:
    config = HyperLoRAConfig(
        lora=LoRASpec(4, 8.0),
        encoder=EncoderConfig(d_ctx=32, d_model=32, n_heads=4, max_length=128),
        generator=GeneratorConfig(d_emb=16, d_hidden=64),
    )
    student = tiny_model("llama", seed=0)
    torch.manual_seed(0)
    return HyperLoRA(student, char_tokenizer(), config)


def _trainer_config(out_dir: str) -> TrainerConfig:
    return TrainerConfig(out_dir=out_dir, max_steps=STEPS, batch_size=8, lr=3e-3, warmup_steps=1, eval_every=0,
                         save_every=0, progress=False, seed=0)


def _state(hyper: HyperLoRA) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in hyper.hypernet.state_dict().items()}


def _worker(rank: int, world: int, tmp: str) -> None:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    dist.init_process_group("gloo", init_method=f"file://{tmp}/init", rank=rank, world_size=world)
    try:
        hyper = _hyper()
        torch.save(_state(hyper), f"{tmp}/initial{rank}.pt")
        trainer = Trainer(hyper, _records(), _trainer_config(f"{tmp}/out"), max_length=256, rank=rank, world=world)
        history = trainer.fit()
        torch.save({"state": _state(hyper), "losses": [h["loss"] for h in history],
                    "grad_norms": [h["grad_norm"] for h in history]}, f"{tmp}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        context = mp.start_processes(_worker, args=(WORLD, str(tmp)), nprocs=WORLD, join=False, start_method="spawn")
        deadline = time.monotonic() + 240
        while not context.join(timeout=5):
            if time.monotonic() > deadline:
                for process in context.processes:
                    if process.is_alive():
                        process.kill()  # only the processes this test started
                pytest.fail("the DDP workers did not finish in time (deadlock?)")
    finally:
        if old is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = old
    ranks = [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    initial = [torch.load(tmp / f"initial{r}.pt", weights_only=True) for r in range(WORLD)]
    return dict(tmp=tmp, ranks=ranks, initial=initial)


def test_ranks_end_with_bit_identical_weights(ddp_run):
    first, second = (r["state"] for r in ddp_run["ranks"])
    assert first.keys() == second.keys() and len(first) > 0
    for key in first:
        assert torch.equal(first[key], second[key]), key
    # The same start on both ranks, and training moved the weights.
    for key in first:
        assert torch.equal(ddp_run["initial"][0][key], ddp_run["initial"][1][key]), key
    moved = [k for k in first if not torch.equal(first[k], ddp_run["initial"][0][k])]
    assert len(moved) > len(first) // 2
    # Each rank saw other data (its own half), so the per-rank losses differ.
    assert ddp_run["ranks"][0]["losses"] != ddp_run["ranks"][1]["losses"]
    # Only rank 0 wrote the final checkpoint.
    assert [p.name for p in (ddp_run["tmp"] / "out" / "checkpoints").iterdir()] == [f"step-{STEPS:06d}"]


def test_ddp_equals_a_single_process_on_the_same_global_batches(ddp_run, tmp_path):
    hyper = _hyper()
    for key, value in _state(hyper).items():
        assert torch.equal(value, ddp_run["initial"][0][key]), key
    trainer = Trainer(hyper, _records(), _trainer_config(str(tmp_path)), max_length=256)
    history = trainer.fit()
    single = _state(hyper)
    ddp = ddp_run["ranks"][0]["state"]
    # Summation order differs (two halves, then an all-reduce), and Adam's normalised update
    # amplifies that float noise on near-zero gradients: seen max |diff| ≈ 6e-6 against a max
    # movement of ≈ 8e-3 over the 3 steps, so 5e-5 is tight and robust.
    for key in single:
        torch.testing.assert_close(ddp[key], single[key], rtol=1e-5, atol=5e-5, msg=key)
    # Adam hides a wrong gradient scale (sum instead of mean over ranks); the gradient norm,
    # taken after the all-reduce, does not.
    for rank in ddp_run["ranks"]:
        assert rank["grad_norms"] == pytest.approx([h["grad_norm"] for h in history], rel=1e-4)
    # The single process's loss is the mean of the two ranks' (equal token counts per rank).
    per_rank = [r["losses"] for r in ddp_run["ranks"]]
    expected = [(a + b) / 2 for a, b in zip(*per_rank)]
    assert [h["loss"] for h in history] == pytest.approx(expected, rel=1e-5)


# -- the real entry point under torchrun ----------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_torchrun_trains_on_two_cpu_processes(model_dir, tmp_path):
    root = Path(hyperlora.__file__).resolve().parents[1]
    out = tmp_path / "out"
    command = [  # `torchrun -m hyperlora.cli train ...`: the installed entry point, configs from the package
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
        "-m", "hyperlora.cli", "train", "experiment=tiny_test", f"model.path={model_dir}",
        f"trainer.out_dir={out}", "logger=none", "trainer.max_steps=3", "trainer.eval_every=0", "trainer.save_every=0",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    final = json.loads((out / "final_metrics.json").read_text())
    assert final["steps"] == 3 and final["final_loss"] is not None
    assert (out / "hyperlora" / "hypernet.safetensors").is_file()
    assert not (out / "metrics.jsonl").exists()  # logger=none
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-000003"]
