"""``hyperlora train``: compose the Hydra config, load student/teacher/data, train, save.

    hyperlora train experiment=demo_cpu trainer.max_steps=100 distill.adapter_l2=0.01
    torchrun --nproc_per_node 2 -m hyperlora.cli train experiment=gpu     # DDP over the hypernetwork

The configs are ``hyperlora/conf`` (shipped with the package), typed and validated by
``hyperlora.train_config.TrainConfig``.

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
from hyperlora.base_models import load_base_model
from hyperlora.data.records import Record, read_jsonl
from hyperlora.metrics import MetricsLogger
from hyperlora.model import HyperLoRA
from hyperlora.train_config import DataConfig, TrainConfig, register_schema, train_config
from hyperlora.trainer import Trainer

__all__ = ["CONF_DIR", "compose_config", "load_data", "run", "main"]

CONF_DIR = Path(__file__).resolve().parent / "conf"  # shipped inside the package


def compose_config(overrides: list[str] | None = None) -> Any:
    """The composed config (``conf/config.yaml`` + overrides), as Hydra builds it.

    Typed by the ``TrainConfig`` schema: defaults come from the dataclasses, a key they lack is refused.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    if not (CONF_DIR / "config.yaml").is_file():
        raise FileNotFoundError(f"Hydra configs not found at {CONF_DIR}: the installed package is incomplete.")
    register_schema()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return hydra_compose(config_name="config", overrides=list(overrides or []))


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


def load_data(data: DataConfig, teacher: Any, tokenizer: Any,
              out_dir: Path) -> tuple[list[Record], dict[str, list[Record]]]:
    """Training records and ``{split: records}`` for evaluation."""
    if data.source == "builtin":
        from hyperlora.toy.tasks import as_records, build_split

        train = as_records(build_split("train", data.n_train, data.seed))
        evals = {s: as_records(build_split(s, data.n_eval, data.seed + 1)) for s in data.eval_splits}
        return train, evals
    from hyperlora.data.label import label_missing

    cache = out_dir / "teacher_outputs.jsonl"
    train = label_missing(read_jsonl(data.train, data.on_error), teacher, tokenizer, cache)
    evals = {name: label_missing(read_jsonl(path, data.on_error)[: data.n_eval], teacher, tokenizer, cache)
             for name, path in data.eval.items()}
    return train, evals


def run(cfg: TrainConfig | Any) -> dict[str, Any]:
    """Train a hypernetwork as ``cfg`` says; returns the final metrics. Saves ``out_dir/hyperlora``.

    ``cfg``: a ``TrainConfig``, the composed Hydra config or plain nested dicts (see ``train_config``).
    """
    config = train_config(cfg)  # validated before anything heavy is loaded
    rank, world, device = _distributed()
    out_dir = Path(config.trainer.out_dir)
    model = config.model
    student, tokenizer = load_base_model(model.path, model.dtype, model.attn_implementation, device, "model.path")
    teacher = None
    if config.teacher.path:
        teacher, _ = load_base_model(config.teacher.path, model.dtype, model.attn_implementation, device,
                                     "teacher.path", tokenizer=False)
    train, evals = load_data(config.data, teacher if teacher is not None else student, tokenizer, out_dir)

    torch.manual_seed(config.trainer.seed)  # the same initial hypernetwork on every rank
    hyper = HyperLoRA(student, tokenizer, config.hyperlora_config())
    logger = None
    if rank == 0:
        hyper.print_trainable_parameters()
        path = out_dir / "metrics.jsonl" if config.logger.kind != "none" else None
        logger = MetricsLogger(path, wandb=config.logger.wandb_options(), config=config.to_dict())
    trainer = Trainer(hyper, train, config.trainer, evals, teacher, logger, config.data.max_length, rank, world,
                      distill=config.distill)
    result: dict[str, Any] = {}
    if config.eval_before and rank == 0:
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
    """``hyperlora train key=value ...``: Hydra overrides of ``conf/config.yaml``."""
    argv = list(argv or [])
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        print(f"configs: {CONF_DIR}")
        return 0
    result = run(compose_config(argv))
    print(json.dumps(result, indent=2))
    return 0
