"""``hyperlora train``: compose the Hydra config, load student/teacher/data, train, save.

    python scripts/train.py experiment=demo_cpu trainer.max_steps=100
    hyperlora train experiment=demo_cpu trainer.max_steps=100
    torchrun --nproc_per_node 2 scripts/train.py experiment=gpu     # DDP over the hypernetwork

Under torchrun every rank holds the frozen student (and teacher); only the
hypernetwork is wrapped in DDP. NCCL on GPUs, gloo on CPUs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from hyperlora.atomic import atomic_write_text
from hyperlora.config import HyperLoRAConfig
from hyperlora.data.records import Record, read_jsonl
from hyperlora.metrics import MetricsLogger
from hyperlora.model import HyperLoRA
from hyperlora.trainer import Trainer, TrainerConfig

__all__ = ["CONF_DIR", "compose_config", "run", "main"]

CONF_DIR = Path(__file__).resolve().parent / "conf"  # shipped inside the package


def compose_config(overrides: list[str] | None = None) -> Any:
    """The composed config (``conf/config.yaml`` + overrides), as Hydra builds it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    if not (CONF_DIR / "config.yaml").is_file():
        raise FileNotFoundError(f"Hydra configs not found at {CONF_DIR}; run from a checkout (pip install -e .).")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return hydra_compose(config_name="config", overrides=list(overrides or []))


def _plain(cfg: Any) -> dict[str, Any]:
    if isinstance(cfg, dict):
        return cfg
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


def _distributed() -> tuple[int, int, torch.device]:
    """(rank, world, device); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world, device


def load_model(path: str, dtype: str, attn_implementation: str, device: torch.device, what: str) -> Any:
    from transformers import AutoModelForCausalLM

    if not Path(path).is_dir():
        hint = " Run `python scripts/pretrain_teacher.py --preset cpu` first." if "teacher-" in str(path) else ""
        raise FileNotFoundError(f"{what}={path!r} is not a local model directory.{hint} Or set {what}=/path/to/model.")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype), attn_implementation=attn_implementation)
    return model.to(device).eval().requires_grad_(False)


def load_data(data: dict[str, Any], teacher: Any, tokenizer: Any, out_dir: Path) -> tuple[list[Record], dict[str, list[Record]]]:
    """Training records and ``{split: records}`` for evaluation."""
    if data["source"] == "builtin":
        from hyperlora.toy.tasks import as_records, build_split

        train = as_records(build_split("train", data["n_train"], data["seed"]))
        evals = {s: as_records(build_split(s, data["n_eval"], data["seed"] + 1)) for s in data["eval_splits"]}
        return train, evals
    if data["source"] != "jsonl":
        raise ValueError(f"data.source={data['source']!r}; choose builtin or jsonl.")
    from hyperlora.data.label import label_missing

    cache = out_dir / "teacher_outputs.jsonl"
    train = label_missing(read_jsonl(data["train"], data["on_error"]), teacher, tokenizer, cache)
    evals = {name: label_missing(read_jsonl(path, data["on_error"])[: data["n_eval"]], teacher, tokenizer, cache)
             for name, path in (data.get("eval") or {}).items()}
    return train, evals


def run(cfg: Any) -> dict[str, Any]:
    """Train a hypernetwork as ``cfg`` says; returns the final metrics. Saves ``out_dir/hyperlora``."""
    from transformers import AutoTokenizer

    cfg = _plain(cfg)
    trainer_cfg = TrainerConfig(**cfg["trainer"])  # validated before anything heavy is loaded
    hyper_cfg = HyperLoRAConfig.from_dict({
        "base_model": cfg["model"]["path"], "targets": cfg["targets"], "lora": cfg["lora"],
        "encoder": cfg["encoder"], "generator": cfg["generator"], "prompt_agnostic": cfg.get("prompt_agnostic", False),
    })
    rank, world, device = _distributed()
    out_dir = Path(trainer_cfg.out_dir)
    student = load_model(cfg["model"]["path"], cfg["model"]["dtype"], cfg["model"]["attn_implementation"], device, "model.path")
    tokenizer = AutoTokenizer.from_pretrained(cfg["model"]["path"])
    teacher = None
    if cfg["teacher"].get("path"):
        teacher = load_model(cfg["teacher"]["path"], cfg["model"]["dtype"], cfg["model"]["attn_implementation"], device, "teacher.path")
    train, evals = load_data(cfg["data"], teacher if teacher is not None else student, tokenizer, out_dir)

    torch.manual_seed(trainer_cfg.seed)  # the same initial hypernetwork on every rank
    hyper = HyperLoRA(student, tokenizer, hyper_cfg)
    logger = None
    if rank == 0:
        hyper.print_trainable_parameters()
        kind = cfg["logger"]["kind"]
        wandb = {k: v for k, v in cfg["logger"].items() if k != "kind"} if kind == "wandb" else None
        logger = MetricsLogger(out_dir / "metrics.jsonl" if kind != "none" else None, wandb=wandb, config=cfg)
    trainer = Trainer(hyper, train, trainer_cfg, evals, teacher, logger, cfg["data"]["max_length"], rank, world)
    result: dict[str, Any] = {}
    if cfg.get("eval_before") and rank == 0:
        result["before"] = trainer.evaluate()  # the untrained student equals the base: the starting point
    history = trainer.fit()
    result.update(steps=trainer.step, final_loss=history[-1]["loss"] if history else None)
    if rank == 0:
        result.update(trainer.evaluate())
        hyper.save_pretrained(out_dir / "hyperlora")
        atomic_write_text(out_dir / "final_metrics.json", json.dumps(result, indent=2) + "\n")
        logger.close()
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return result


def main(argv: list[str] | None = None) -> int:
    """``hyperlora train key=value ...`` (the same overrides as scripts/train.py)."""
    argv = list(argv or [])
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        print(f"configs: {CONF_DIR}")
        return 0
    result = run(compose_config(argv))
    print(json.dumps(result, indent=2))
    return 0
