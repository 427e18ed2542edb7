"""``hyperlora train``: compose the Hydra config, load student/teacher/data, train, save.

    hyperlora train experiment=smollm2_cpu trainer.max_steps=100 distill.adapter_l2=0.01
    torchrun --nproc_per_node 2 -m hyperlora.cli train experiment=gpu     # DDP over the hypernetwork

The configs are ``hyperlora/conf`` (shipped with the package), typed and validated by
``hyperlora.train_config.TrainConfig``.

Under torchrun every rank holds the frozen student (and teacher); only the
hypernetwork is wrapped in DDP. NCCL on GPUs, gloo on CPUs.

The run folder (``trainer.out_dir``) has an identity and a lock, checked before any model
is loaded (``open_run_folder``):

- missing or empty: a new run; ``run.json`` records its identity (``resume_policy.run_identity``) and config;
- not empty and without ``run.json`` (a checkout, any user folder): refused, nothing touched;
- holding a run: refused unless ``trainer.resume=true`` (only the changes ``resume_policy.RESUMABLE``
  allows; any other changed key is refused by name) or ``trainer.overwrite=true`` (deletes only what
  a run writes there, ``hyperlora.ownership.RUN_ENTRIES``, never another file);
- the whole run holds ``RunLock(out_dir)``: a second process gets one line naming the holder;
- leftovers of saves a kill interrupted are finished or undone first (``atomic.recover_all``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from hyperlora.atomic import atomic_write_text, recover_all, remove_tree
from hyperlora.base_models import load_base_model
from hyperlora.data.records import Record, read_jsonl
from hyperlora.metrics import MetricsLogger
from hyperlora.model import HyperLoRA
from hyperlora.ownership import RUN_MARK, is_run_entry
from hyperlora.resume_policy import changed_keys, flatten, run_identity
from hyperlora.run_lock import LOCK_NAME, RunLock
from hyperlora.train_config import DataConfig, TrainConfig, check_overrides, register_schema, train_config
from hyperlora.trainer import Trainer

__all__ = ["CONF_DIR", "RUN_FORMAT", "compose_config", "eval_follows", "load_data", "open_run_folder", "run", "main"]

CONF_DIR = Path(__file__).resolve().parent / "conf"  # shipped inside the package
RUN_FORMAT = "hyperlora-run/1"
LABEL_CACHE = "teacher_outputs.jsonl"  # keyed by teacher, record and settings (hyperlora.data.label)


def compose_config(overrides: list[str] | None = None) -> Any:
    """The composed config (``conf/config.yaml`` + overrides), as Hydra builds it.

    Typed by the ``TrainConfig`` schema: defaults come from the dataclasses, a key they lack is refused.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    if not (CONF_DIR / "config.yaml").is_file():
        raise FileNotFoundError(f"Hydra configs not found at {CONF_DIR}: the installed package is incomplete.")
    register_schema()
    check_overrides(list(overrides or []), CONF_DIR)
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


def load_data(data: DataConfig, teacher: Any, tokenizer: Any, out_dir: Path, rank: int = 0,
              world: int = 1) -> tuple[list[Record], dict[str, list[Record]]]:
    """Training records and ``{split: records}`` for evaluation.

    ``instruct``: the verifiable instruction suite (``hyperlora.instruct``); ``data.targets`` picks the
    training records: the teacher's answers with the instruction in context (``teacher``, KL), the
    model's own bare answers rewritten to pass the verifiers (``verified``, cross-entropy;
    ``hyperlora.data.verified``), or both (``mix``). Evaluation records are always the teacher's.
    """
    if data.source == "builtin":
        from hyperlora.toy.tasks import as_records, build_split

        train = as_records(build_split("train", data.n_train, data.seed))
        evals = {s: as_records(build_split(s, data.n_eval, data.seed + 1)) for s in data.eval_splits}
        return train, evals
    from hyperlora.data.label import check_cache_file, label_missing

    cache = check_cache_file(data.label_cache) if data.label_cache else out_dir / LABEL_CACHE
    if world > 1 and rank != 0:
        _barrier()  # rank 0 labels and appends to the cache alone; the others then read every label from it
    options = data.label_options()
    if data.source == "instruct":
        train, evals = _instruct_data(data, teacher, tokenizer, cache, options, rank)
        if world > 1 and rank == 0:
            _barrier()
        return train, evals
    train = label_missing(read_jsonl(data.train, data.on_error), teacher, tokenizer, cache, **options)
    evals = {name: label_missing(read_jsonl(path, data.on_error)[: data.n_eval], teacher, tokenizer, cache, **options)
             for name, path in data.eval.items()}
    if world > 1 and rank == 0:
        _barrier()
    return train, evals


def _instruct_data(data: DataConfig, teacher: Any, tokenizer: Any, cache: Path, options: dict[str, Any],
                   rank: int) -> tuple[list[Record], dict[str, list[Record]]]:
    """``load_data`` for ``data.source=instruct``: labelled (and rewritten) train records, teacher-labelled evals."""
    from hyperlora.data.label import label_missing
    from hyperlora.data.verified import verified_targets
    from hyperlora.instruct import as_records, build_split

    examples = build_split("train", data.n_train, data.seed)
    train: list[Record] = []
    if data.targets in ("teacher", "mix"):
        train += label_missing(as_records(examples), teacher, tokenizer, cache, **options)
    if data.targets in ("verified", "mix"):
        verified, counts = verified_targets(examples, teacher, tokenizer, cache, data.verified_token_limit(),
                                            data.verified_from_teacher, **options)
        if rank == 0:
            print(counts, flush=True)
        if not verified and data.targets == "verified":
            raise ValueError(f"data.targets=verified: no training record is left ({counts}); raise data.n_train "
                             "or data.label_max_new_tokens.")
        train += verified
    # The same seed as train: train_unseen_questions then asks train's instructions on unseen requests.
    evals = {s: label_missing(as_records(build_split(s, data.n_eval, data.seed)), teacher, tokenizer, cache,
                              **options) for s in data.eval_splits}
    return train, evals


def eval_follows(data: DataConfig) -> Any:
    """The verifiers of the evaluation records (``hyperlora.open_eval.instruct_follows``) for
    ``data.source=instruct``; None for the other sources (the toy suite is judged by exact match)."""
    if data.source != "instruct":
        return None
    from hyperlora.instruct import build_split
    from hyperlora.open_eval import instruct_follows

    return instruct_follows(e for s in data.eval_splits for e in build_split(s, data.n_eval, data.seed))


def _barrier() -> None:
    import torch.distributed as dist

    dist.barrier()


# -- the run folder ------------------------------------------------------------------


def _plain(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` as it reads back from JSON (tuples become lists), so saved and current compare equal."""
    return json.loads(json.dumps(config, default=str))


def _is_empty(folder: Path) -> bool:
    """No entries but our lock file (a run killed before it wrote run.json leaves only that)."""
    return all(p.name == LOCK_NAME or (p.name.startswith(f".{RUN_MARK}.") and p.name.endswith(".tmp"))
               for p in folder.iterdir())


def _has_progress(folder: Path) -> bool:
    """Whether a run folder holds anything a run made but its run.json, lock and label cache (keyed per teacher).

    A run that stopped before it made anything (a typo in ``model.path``) leaves nothing to lose, so the
    corrected command starts afresh without ``trainer.overwrite``.
    """
    return any(p.name not in (LOCK_NAME, RUN_MARK) and not p.name.startswith(LABEL_CACHE.split(".")[0])
               and not (p.name.startswith(f".{RUN_MARK}.") and p.name.endswith(".tmp")) for p in folder.iterdir())


def _saved_run(out_dir: Path) -> dict[str, Any] | None:
    """The parsed run.json of ``out_dir``, None when it has none; refuses an unreadable one."""
    path = out_dir / RUN_MARK
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
        if not (isinstance(saved, dict) and saved.get("format") == RUN_FORMAT
                and isinstance(saved.get("config"), dict)):
            raise ValueError(f"not a {RUN_FORMAT} record")
    except (ValueError, UnicodeDecodeError) as err:
        return {"unreadable": str(err)}
    return saved


def _check_run_folder(out_dir: Path, config: dict[str, Any], resume: bool, overwrite: bool) -> str:
    """What this run does with ``out_dir``: "new", "resume" or "overwrite"; raises (one line) if it may not.

    Reads only: a folder that is refused is never touched.
    """
    where = f"trainer.out_dir={out_dir}"
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{where} is a file, not a folder; choose another trainer.out_dir.")
    if not out_dir.is_dir() or _is_empty(out_dir):
        return "new"
    saved = _saved_run(out_dir)
    if saved is not None and not _has_progress(out_dir):
        return "new"
    if saved is None:
        raise FileExistsError(
            f"{where} is not empty and holds no hyperlora run (no {RUN_MARK}); it was left untouched. "
            "Choose a new or empty trainer.out_dir."
        )
    if resume and overwrite:
        raise ValueError(f"{where} holds a run: trainer.resume=true continues it and trainer.overwrite=true "
                         "replaces it; pass only one of them.")
    if overwrite:
        return "overwrite"
    if "unreadable" in saved:
        raise ValueError(f"{out_dir / RUN_MARK} is unreadable ({saved['unreadable']}); pass trainer.overwrite=true "
                         "to replace that run, or choose another trainer.out_dir.")
    if not resume:
        raise FileExistsError(
            f"{where} holds another run (created {saved.get('created', '?')}); pass trainer.resume=true to continue "
            "it or trainer.overwrite=true to replace it, or choose another trainer.out_dir."
        )
    changed = changed_keys(saved["config"], config)
    if changed:
        before, now = flatten(saved["config"]), flatten(config)
        shown = ", ".join(f"{k} ({before.get(k, 'absent')!r} -> {now.get(k, 'absent')!r})" for k in changed)
        raise ValueError(
            f"trainer.resume=true: {where} holds a run with other settings: {shown}. A resume may change only how "
            "long and how fast it goes on (see hyperlora.resume_policy); undo those changes, or pass "
            "trainer.overwrite=true to replace the run, or choose another trainer.out_dir."
        )
    return "resume"


def _clear_run(out_dir: Path) -> None:
    """Delete what a run wrote into ``out_dir`` (``ownership.RUN_ENTRIES``), nothing else; run.json goes last.

    Each folder is deleted through a temporary name (``atomic.remove_tree``): a kill half-way leaves
    run.json in place, so the folder stays recognisably ours and ``trainer.overwrite=true`` finishes the job.
    """
    for entry in sorted(out_dir.iterdir()):
        if is_run_entry(entry.name):
            remove_tree(entry)


def open_run_folder(out_dir: str | Path, config: dict[str, Any], resume: bool = False,
                    overwrite: bool = False) -> RunLock:
    """Check that ``out_dir`` may hold this run, lock it, tidy it and write its ``run.json``; returns the held lock.

    ``config``: the whole train config as nested dicts (``TrainConfig.to_dict()``). Release the lock when the
    run ends.

    Raises:
        FileExistsError: ``out_dir`` is not empty and holds no run, or holds a run and neither
            ``resume`` nor ``overwrite`` was asked for.
        ValueError: a resume with changes that make it another run (each changed key named).
        hyperlora.run_lock.LockedError: another process holds ``out_dir``.
    """
    out_dir, config = Path(out_dir), _plain(config)
    _check_run_folder(out_dir, config, resume, overwrite)  # before the lock: the lock file is a write too
    lock = RunLock(out_dir).acquire()
    try:
        action = _check_run_folder(out_dir, config, resume, overwrite)  # another process may have written meanwhile
        recover_all(out_dir)  # a kill during a save: finish or undo it, delete the leftovers
        recover_all(out_dir / "checkpoints")
        if action == "overwrite":
            _clear_run(out_dir)
        if action != "resume":  # a resume updates run.json once the trainer has accepted its checkpoint
            write_run_record(out_dir, config, continues=False)
    except BaseException:
        lock.release()
        raise
    return lock


def write_run_record(out_dir: Path, config: dict[str, Any], continues: bool) -> None:
    """Write ``out_dir/run.json`` for ``config``; ``continues``: keep the ``created`` time of the run resumed."""
    saved = (_saved_run(out_dir) or {}) if continues else {}
    now = time.strftime("%Y-%m-%d %H:%M:%S")
    record = {"format": RUN_FORMAT, "identity": run_identity(config), "config": _plain(config),
              "created": saved.get("created", now), "updated": now}
    atomic_write_text(out_dir / RUN_MARK, json.dumps(record, indent=2) + "\n")


def _previous_final_loss(out_dir: Path, step: int) -> float | None:
    """The final loss a finished run reported, for a resume that had no step left to take.

    ``final_metrics.json`` when it is this step's; otherwise the last loss ``metrics.jsonl`` logged at this step.
    """
    try:
        final = json.loads((out_dir / "final_metrics.json").read_text())
        if final.get("steps") == step and final.get("final_loss") is not None:
            return final["final_loss"]
    except (OSError, ValueError, AttributeError):
        pass
    loss = None
    try:
        for line in (out_dir / "metrics.jsonl").read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill
            if isinstance(row, dict) and row.get("step") == step and "loss" in row:
                loss = row["loss"]
    except OSError:
        pass
    return loss


def run(cfg: TrainConfig | Any) -> dict[str, Any]:
    """Train a hypernetwork as ``cfg`` says; returns the final metrics. Saves ``out_dir/hyperlora``.

    ``cfg``: a ``TrainConfig``, the composed Hydra config or plain nested dicts (see ``train_config``).
    """
    config = train_config(cfg)  # validated before anything heavy is loaded
    rank, world, device = _distributed()
    out_dir = Path(config.trainer.out_dir)
    lock, refused = None, None
    if rank == 0:  # one process owns the folder; the others follow its verdict
        try:
            lock = open_run_folder(out_dir, config.to_dict(), config.trainer.resume, config.trainer.overwrite)
        except Exception as err:  # noqa: BLE001 - re-raised below, after the other ranks heard of it
            refused = err
    if world > 1:
        import torch.distributed as dist

        flag = torch.tensor([int(refused is not None)], device=device)
        dist.broadcast(flag, src=0)
        if rank != 0 and flag.item():
            raise ValueError(f"trainer.out_dir={out_dir} was refused by rank 0; see its message.")
    if refused is not None:
        raise refused
    try:
        return _train(config, rank, world, device, out_dir)
    finally:
        if lock is not None:
            lock.release()


def _train(config: TrainConfig, rank: int, world: int, device: torch.device, out_dir: Path) -> dict[str, Any]:
    model = config.model
    student, tokenizer = load_base_model(model.path, model.dtype, model.attn_implementation, device, "model.path")
    teacher = None
    if config.teacher.path:
        teacher, _ = load_base_model(config.teacher.path, model.dtype, model.attn_implementation, device,
                                     "teacher.path", tokenizer=False)
    train, evals = load_data(config.data, teacher if teacher is not None else student, tokenizer, out_dir, rank,
                             world)

    torch.manual_seed(config.trainer.seed)  # the same initial hypernetwork on every rank
    hyper = HyperLoRA(student, tokenizer, config.hyperlora_config())
    logger = None
    if rank == 0:
        hyper.print_trainable_parameters()
        path = out_dir / "metrics.jsonl" if config.logger.kind != "none" else None
        logger = MetricsLogger(path, wandb=config.logger.wandb_options(), config=config.to_dict())
    trainer = Trainer(hyper, train, config.trainer, evals, teacher, logger, config.data.max_length, rank, world,
                      distill=config.distill, prompt_layout=config.data.prompt_layout,
                      follows=eval_follows(config.data))
    if rank == 0 and config.trainer.resume:
        write_run_record(out_dir, config.to_dict(), continues=True)  # the resume was accepted: its allowed changes are recorded
    result: dict[str, Any] = {}
    if config.eval_before and rank == 0:
        result["before"] = trainer.evaluate()  # the untrained student equals the base: the starting point
    history = trainer.fit()
    # A resumed run that was already finished takes no step: its final loss is the one it reported then.
    final_loss = history[-1]["loss"] if history else _previous_final_loss(out_dir, trainer.step)
    result.update(steps=trainer.step, final_loss=final_loss)
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
