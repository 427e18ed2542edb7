"""Every kind of bad input a user can give, each refused early and in words (issue 14).

Each case is data: a command line (``hyperlora <command> ...``, or a script), an optional
setup that plants files in the case's own temporary folder, the exit code it must end with
and words that must name the problem. Every case runs in-process through
``hyperlora.cli.main`` (a script through ``runpy`` as ``__main__``) and must:

* end with exit code 2 (1 for a ``--batch`` file with a bad line: its good lines still ran);
* print no traceback: an exception escaping ``main`` is what Python would print as one;
* print exactly one line on stderr, which names the problem (the case's words, compared
  case-insensitively; ``"a|b"`` means either). argparse's own errors (a missing option, a
  value of the wrong type, a choice it does not know) print its usage first: for those the
  *last* line must be argparse's ``PROG: error: ...`` line naming the problem, and the
  lines before it the usage;
* touch nothing outside the case's output path: every file and folder of the case's
  temporary folder (its working directory included) and of the shared fixtures keeps its
  content, and nothing appears except inside ``may_change`` (a run folder a refused train
  may have created) or a ``.lock`` file (the run lock, harmless; it may be created or get its
  holder written); the checkout gains no
  top-level entry.

What this cannot see in-process: output of loggers that hold the real stderr (transformers'
warnings) and ``warnings.warn`` (pytest records those); the kill test
(``tests/test_kill_resume.py``) runs the real command line.

Groups (the ids' prefixes): train config values, types and typos (``train-``); train output
folders (``outdir-``); resume changes (``resume-``); checkpoint files (``ckpt-``); base
model mismatch (``base-``); generate options (``gen-``) and ``--batch`` files
(``batch-``); inspect (``inspect-``), export (``export-``) and merge (``merge-``) options
and outputs; selfcheck (``selfcheck-``); bench (``bench-``); training JSONL data
(``data-``); the teacher script (``teacher-``); the command line itself (``cli-``).
"""

from __future__ import annotations

import hashlib
import json
import os
import runpy
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from hyperlora import cli
from hyperlora.model import CONFIG_NAME, WEIGHTS_NAME
from hyperlora.toy.models import tiny_model
from hyperlora.toy.tokenizer import char_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkpoint_fixture import build_checkpoint  # noqa: E402

CHECKOUT = Path(__file__).resolve().parents[1]
TEACHER_SCRIPT = CHECKOUT / "scripts" / "pretrain_teacher.py"


# -- the shared fixtures -------------------------------------------------------------------

class Shared:
    """Built once per module under ``root``: a saved tiny base model and a checkpoint for it,
    another model of the same shape (another seed), and (on first use) a finished 2-step run."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.base, self.ckpt = build_checkpoint(root)
        self.base2 = root / "base-llama-seed1"  # same family and shapes, other weights
        tiny_model("llama", seed=1).save_pretrained(self.base2)
        char_tokenizer().save_pretrained(self.base2)
        self._run: Path | None = None

    def run(self) -> Path:
        """A finished run folder (2 steps, a checkpoint after each), trained once."""
        if self._run is None:
            out = self.root / "run"
            overrides = _train_overrides(RUN_OVERRIDES, str(out))
            code = cli.main(["train", *overrides])
            assert code == 0 and (out / "hyperlora" / CONFIG_NAME).is_file(), "the fixture run did not finish"
            self._run = out
        return self._run


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Shared:
    return Shared(tmp_path_factory.mktemp("shared"))


# -- cases ---------------------------------------------------------------------------------

Setup = Callable[[Path, Shared], Any]  # may return a callable: run after the case (e.g. release a lock)


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]  # placeholders: {tmp} (the case's folder), {ckpt}, {base}, {base2}
    words: tuple[str, ...] = ()  # each must occur in the error line; "a|b": either
    exit: int = 2
    setup: Setup | None = None
    may_change: tuple[str, ...] = ()  # paths under {tmp} that may appear or change
    forbid: tuple[str, ...] = ()  # words the error line must not hold (a misleading hint)
    argparse: bool = False  # argparse's usage error: usage lines, then "PROG: error: ..." last
    script: Path | None = None  # run this script as __main__ instead of hyperlora.cli
    needs: str | None = None  # "no_gpu" | "non_root"


CASES: list[Case] = []


def case(id: str, argv: list[str], *words: str, **kw: Any) -> None:
    CASES.append(Case(id, tuple(argv), tuple(words), **kw))


# ---- train: config values, types, typos ---------------------------------------------------
# Small enough that a case the library wrongly accepts still ends in seconds.
TRAIN_OVERRIDES = {
    "experiment": "tiny_test", "trainer.max_steps": "1", "data.n_train": "16", "data.n_eval": "2",
    "trainer.eval_examples": "2",
}
RUN_OVERRIDES = {**TRAIN_OVERRIDES, "trainer.max_steps": "2", "trainer.save_every": "1"}


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _train_overrides(base: dict[str, str], out_dir: str, extra: tuple[str, ...] = ()) -> list[str]:
    """``base`` as key=value with ``trainer.out_dir``, minus the keys ``extra`` sets, then ``extra``."""
    merged = {**base, "trainer.out_dir": out_dir}
    mine = {_key(e) for e in extra}
    return [f"{k}={v}" for k, v in merged.items() if k not in mine] + list(extra)


def train(id: str, overrides: list[str], *words: str, base: dict[str, str] = TRAIN_OVERRIDES,
          out: str = "{tmp}/run", **kw: Any) -> None:
    kw.setdefault("may_change", ("run",))
    case(id, ["train", *_train_overrides(base, out, tuple(overrides))], *words, **kw)


train("train-lr-abc", ["trainer.lr=abc"], "trainer.lr")
train("train-lr-inf", ["trainer.lr=inf"], "trainer.lr")
train("train-lr-nan", ["trainer.lr=nan"], "trainer.lr")
train("train-lr-zero", ["trainer.lr=0"], "trainer.lr")
train("train-lr-negative", ["trainer.lr=-1e-3"], "trainer.lr")
train("train-grad-clip-negative", ["trainer.grad_clip=-1"], "trainer.grad_clip")
train("train-grad-clip-nan", ["trainer.grad_clip=nan"], "trainer.grad_clip")
train("train-grad-clip-abc", ["trainer.grad_clip=abc"], "trainer.grad_clip")
train("train-max-steps-float", ["trainer.max_steps=2.5"], "trainer.max_steps")
train("train-max-steps-zero", ["trainer.max_steps=0"], "trainer.max_steps")
train("train-max-steps-negative", ["trainer.max_steps=-3"], "trainer.max_steps")
train("train-max-steps-abc", ["trainer.max_steps=abc"], "trainer.max_steps")
train("train-save-every-negative", ["trainer.save_every=-1"], "trainer.save_every")
train("train-save-every-float", ["trainer.save_every=1.5"], "trainer.save_every")
train("train-eval-every-negative", ["trainer.eval_every=-1"], "trainer.eval_every")
train("train-batch-size-zero", ["trainer.batch_size=0"], "trainer.batch_size")
train("train-batch-size-negative", ["trainer.batch_size=-8"], "trainer.batch_size")
train("train-batch-size-float", ["trainer.batch_size=2.5"], "trainer.batch_size")
train("train-batch-larger-than-data", ["trainer.batch_size=64"], "batch")
train("train-accumulation-zero", ["trainer.accumulation=0"], "trainer.accumulation")
train("train-warmup-negative", ["trainer.warmup_steps=-1"], "trainer.warmup_steps")
train("train-min-lr-ratio-negative", ["trainer.min_lr_ratio=-0.1"], "trainer.min_lr_ratio")
train("train-min-lr-ratio-above-one", ["trainer.min_lr_ratio=2"], "trainer.min_lr_ratio")
train("train-weight-decay-negative", ["trainer.weight_decay=-1"], "trainer.weight_decay")
train("train-weight-decay-nan", ["trainer.weight_decay=nan"], "trainer.weight_decay")
train("train-keep-last-zero", ["trainer.keep_last=0"], "trainer.keep_last")
train("train-eval-examples-negative", ["trainer.eval_examples=-1"], "trainer.eval_examples")
train("train-eval-batch-size-zero", ["trainer.eval_batch_size=0"], "trainer.eval_batch_size")
train("train-max-new-tokens-zero", ["trainer.max_new_tokens=0"], "trainer.max_new_tokens")
train("train-seed-abc", ["trainer.seed=abc"], "trainer.seed")
train("train-seed-negative", ["trainer.seed=-1"], "trainer.seed")
train("train-bf16-maybe", ["trainer.bf16=maybe"], "trainer.bf16")
train("train-resume-maybe", ["trainer.resume=maybe"], "trainer.resume")
train("train-gradient-checkpointing-sometimes", ["trainer.gradient_checkpointing=sometimes"],
      "trainer.gradient_checkpointing")
train("train-progress-two", ["trainer.progress=2"], "trainer.progress")
train("train-model-dtype-float33", ["model.dtype=float33"], "model.dtype")
train("train-model-path-missing", ["model.path=/nonexistent/hyperlora-model"], "model.path")
train("train-model-toy-unknown", ["model.path=toy:nosuch"], "toy:nosuch")
train("train-model-attn-unknown", ["model.attn_implementation=magic"], "attn_implementation")
train("train-model-path-is-file", ["model.path={tmp}/weights.bin"], "model.path",
      setup=lambda tmp, s: (tmp / "weights.bin").write_bytes(b"\0" * 64))
train("train-lora-alpha-abc", ["lora.alpha=abc"], "lora.alpha")
train("train-lora-alpha-zero", ["lora.alpha=0"], "alpha")
train("train-lora-alpha-inf", ["lora.alpha=inf"], "alpha")
train("train-lora-rank-zero", ["lora.rank=0"], "rank")
train("train-lora-rank-negative", ["lora.rank=-2"], "rank")
train("train-lora-rank-float", ["lora.rank=2.5"], "lora.rank")
train("train-lora-dropout-above-one", ["lora.dropout=1.5"], "dropout")
train("train-lora-dropout-negative", ["lora.dropout=-0.1"], "dropout")
train("train-lora-rslora-maybe", ["lora.rslora=maybe"], "lora.rslora")
train("train-typo-plus-maxsteps", ["+trainer.maxsteps=3"], "maxsteps")
train("train-typo-maxsteps", ["trainer.maxsteps=3"], "maxsteps")
train("train-typo-lora-ranks", ["+lora.ranks=4"], "ranks")
train("train-typo-top-level", ["+learning_rate=0.1"], "learning_rate")
train("train-typo-group-key", ["traner.lr=0.1"], "traner")
train("train-unknown-trainer-preset", ["trainer=nosuch"], "nosuch")
train("train-unknown-experiment", ["experiment=nosuch"], "nosuch")
train("train-unknown-model-preset", ["model=nosuch"], "nosuch")
train("train-override-without-value", ["trainer.lr"], "trainer.lr")
train("train-override-malformed", ["trainer.lr==="], "trainer.lr")
train("train-data-source-csv", ["data.source=csv"], "data.source")
train("train-data-on-error-ignore", ["data.on_error=ignore"], "data.on_error")
train("train-data-jsonl-without-train", ["data.source=jsonl"], "data.train")
train("train-data-n-train-zero", ["data.n_train=0"], "data.n_train")
train("train-data-n-train-abc", ["data.n_train=abc"], "data.n_train")
train("train-data-n-eval-zero", ["data.n_eval=0"], "data.n_eval")
train("train-data-max-length-zero", ["data.max_length=0"], "data.max_length")
train("train-data-eval-split-unknown", ["data.eval_splits=[nosuch]"], "nosuch")
train("train-encoder-d-ctx-zero", ["encoder.d_ctx=0"], "encoder.d_ctx")
train("train-encoder-heads-not-dividing", ["encoder.n_heads=3"], "encoder.n_heads")
train("train-encoder-backbone-unknown", ["encoder.backbone=nosuch"], "encoder.backbone")
train("train-encoder-pool-unknown", ["encoder.pool=max"], "encoder.pool")
train("train-encoder-max-length-zero", ["encoder.max_length=0"], "encoder.max_length")
train("train-generator-d-hidden-zero", ["generator.d_hidden=0"], "generator.d_hidden")
train("train-generator-d-emb-negative", ["generator.d_emb=-1"], "generator.d_emb")
train("train-generator-head-rank-zero", ["generator.head_rank=0"], "generator.head_rank")
train("train-distill-loss-unknown", ["distill.loss=mse"], "distill.loss")
train("train-distill-temperature-zero", ["distill.temperature=0"], "distill.temperature")
train("train-distill-ce-weight-negative", ["distill.ce_weight=-1"], "distill.ce_weight")
train("train-distill-adapter-l2-nan", ["distill.adapter_l2=nan"], "distill.adapter_l2")
train("train-distill-loss-chunk-zero", ["distill.loss_chunk=0"], "distill.loss_chunk")
train("train-logger-kind-unknown", ["logger.kind=tensorboard"], "logger.kind")
train("train-targets-match-nothing", ["targets=[no_such_proj]"], "no_such_proj")
train("train-teacher-path-missing", ["teacher.path=/nonexistent/teacher"], "teacher.path")
train("train-teacher-local-without-path", ["teacher=local"], "teacher.path")
train("train-prompt-agnostic-maybe", ["prompt_agnostic=maybe"], "prompt_agnostic")
train("train-eval-before-maybe", ["eval_before=maybe"], "eval_before")
case("train-not-an-override", ["train", "--max-steps", "3"], "--max-steps")


# ---- train: output folders ------------------------------------------------------------------

def _user_folder(tmp: Path, name: str = "mine") -> None:
    folder = tmp / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text("my notes\n")
    (folder / "data").mkdir(exist_ok=True)
    (folder / "data" / "table.csv").write_text("a,b\n1,2\n")


def _fake_checkout(tmp: Path, s: Shared) -> None:
    # What `hyperlora train trainer.out_dir=.` from a checkout would have replaced.
    root = tmp / "cwd"
    root.mkdir(exist_ok=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'mine'\n")
    (root / "mine").mkdir()
    (root / "mine" / "__init__.py").write_text("VALUE = 1\n")
    (root / "hyperlora").mkdir()
    (root / "hyperlora" / "__init__.py").write_text("# my source\n")


def _file(rel: str, content: bytes = b"not a folder\n") -> Setup:
    def setup(tmp: Path, s: Shared) -> None:
        path = tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return setup


def _foreign_run(tmp: Path, s: Shared) -> None:
    shutil.copytree(s.run(), tmp / "run")


def _locked_run(tmp: Path, s: Shared) -> Callable[[], None]:
    from hyperlora.run_lock import RunLock  # another process's lock: flock conflicts across open files

    shutil.copytree(s.run(), tmp / "run")
    lock = RunLock(tmp / "run").acquire()
    return lock.release


def _read_only(tmp: Path, s: Shared) -> Callable[[], None]:
    folder = tmp / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    return lambda: folder.chmod(0o755)


train("outdir-is-a-file", [], "run", setup=_file("run"), may_change=())
train("outdir-under-a-file", [], "afile", out="{tmp}/afile/run", setup=_file("afile"), may_change=())
train("outdir-user-folder", [], "mine", out="{tmp}/mine", setup=lambda tmp, s: _user_folder(tmp), may_change=())
train("outdir-user-folder-overwrite", ["trainer.overwrite=true"], "mine", out="{tmp}/mine",
      setup=lambda tmp, s: _user_folder(tmp), may_change=())
train("outdir-dot-in-a-checkout", [], "out_dir|written by", out=".", setup=_fake_checkout, may_change=())
train("outdir-another-run", ["trainer.seed=7"], "run|overwrite", setup=_foreign_run, may_change=())
train("outdir-same-config-fresh", [], "resume|overwrite", base=RUN_OVERRIDES, setup=_foreign_run, may_change=())
train("outdir-locked", ["trainer.resume=true"], "in use|lock", base=RUN_OVERRIDES, setup=_locked_run, may_change=())
train("outdir-read-only", [], "ro", out="{tmp}/ro/run", setup=_read_only, may_change=(), needs="non_root")
train("outdir-empty-string", [], "out_dir", out="''", may_change=())
train("outdir-resume-and-overwrite", ["trainer.resume=true", "trainer.overwrite=true"], "overwrite",
      base=RUN_OVERRIDES, setup=_foreign_run, may_change=())


# ---- resume: what a resume may not change ---------------------------------------------------

def resume(id: str, overrides: list[str], *words: str, setup: Setup = _foreign_run, **kw: Any) -> None:
    train(id, ["trainer.resume=true", *overrides], *words, base=RUN_OVERRIDES, setup=setup, may_change=(), **kw)


resume("resume-lora-rank", ["lora.rank=8"], "lora.rank")
resume("resume-lora-alpha", ["lora.alpha=2.0"], "lora.alpha")
resume("resume-encoder-d-ctx", ["encoder.d_ctx=64"], "encoder.d_ctx")
resume("resume-generator-d-hidden", ["generator.d_hidden=32"], "generator.d_hidden")
resume("resume-seed", ["trainer.seed=1"], "trainer.seed")
resume("resume-batch-size", ["trainer.batch_size=4"], "trainer.batch_size")
resume("resume-model", ["model.path=toy:qwen2"], "model.path")
resume("resume-data", ["data.n_train=24"], "data.n_train")
resume("resume-distill", ["distill.temperature=2.0"], "distill.temperature")
resume("resume-targets", ["targets=all-linear"], "targets")


def _corrupt_every_state(name: str, content: bytes) -> Setup:
    def setup(tmp: Path, s: Shared) -> None:
        _foreign_run(tmp, s)
        for ckpt in (tmp / "run" / "checkpoints").iterdir():
            (ckpt / name).write_bytes(content)
    return setup


resume("resume-every-state-json-truncated", [], "trainer_state|corrupt",
       setup=_corrupt_every_state("trainer_state.json", b'{"step": 2, "optim'))
resume("resume-every-state-tensors-truncated", [], "trainer_state|corrupt",
       setup=_corrupt_every_state("trainer_state.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{"))


# ---- checkpoint files -----------------------------------------------------------------------

def _copy_ckpt(tmp: Path, s: Shared) -> Path:
    return Path(shutil.copytree(s.ckpt, tmp / "ckpt"))


def _set(meta: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        meta = meta[int(key)] if isinstance(meta, list) else meta[key]
    meta[last] = value


def meta_edit(dotted: str, value: Any) -> Setup:
    def setup(tmp: Path, s: Shared) -> None:
        path = _copy_ckpt(tmp, s) / CONFIG_NAME
        meta = json.loads(path.read_text())
        _set(meta, dotted, value)
        path.write_text(json.dumps(meta, indent=2) + "\n")
    return setup


def meta_bytes(content: bytes) -> Setup:
    def setup(tmp: Path, s: Shared) -> None:
        (_copy_ckpt(tmp, s) / CONFIG_NAME).write_bytes(content)
    return setup


def meta_transform(fn: Callable[[bytes], bytes]) -> Setup:
    def setup(tmp: Path, s: Shared) -> None:
        path = _copy_ckpt(tmp, s) / CONFIG_NAME
        path.write_bytes(fn(path.read_bytes()))
    return setup


def weights_edit(fn: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]) -> Setup:
    def setup(tmp: Path, s: Shared) -> None:
        path = _copy_ckpt(tmp, s) / WEIGHTS_NAME
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata()
        save_file(fn(load_file(str(path))), str(path), metadata=metadata)
    return setup


def weights_bytes(fn: Callable[[bytes], bytes]) -> Setup:
    def setup(tmp: Path, s: Shared) -> None:
        path = _copy_ckpt(tmp, s) / WEIGHTS_NAME
        path.write_bytes(fn(path.read_bytes()))
    return setup


def remove(rel: str, make_dir: bool = False) -> Setup:
    def setup(tmp: Path, s: Shared) -> None:
        path = _copy_ckpt(tmp, s) / rel
        path.unlink()
        if make_dir:
            path.mkdir()
    return setup


def _flip_data(data: bytes, size: int = 4096) -> bytes:
    """Flip ``size`` bytes in the middle of a safetensors file's tensor data (after its header)."""
    start = 8 + int.from_bytes(data[:8], "little")
    middle = start + (len(data) - start) // 2 - size // 2
    assert middle > start and len(data) - start > size, "the fixture's weights are too small to flip 4 KB"
    flipped = bytes(b ^ 0xFF for b in data[middle : middle + size])
    return data[:middle] + flipped + data[middle + size :]


def _first(state: dict[str, torch.Tensor]) -> str:
    return sorted(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)[0]


def _nan_tensor(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    name = _first(state)
    return {**state, name: torch.full_like(state[name], float("nan"))}


def _one_inf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    name = _first(state)
    value = state[name].clone()
    value.view(-1)[0] = float("inf")
    return {**state, name: value}


def _drop_one(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    name = _first(state)
    return {k: v for k, v in state.items() if k != name}


def _extra(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {**state, "generator.smuggled.weight": torch.zeros(3, 3)}


def _reshape(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    name = _first(state)
    return {**state, name: torch.zeros(state[name].numel() + 1)}


def _half(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}


def _scaled(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    name = _first(state)  # finite, same shape and dtype: only the checksum can tell
    return {**state, name: state[name] * 1.5}


def _other_weights(tmp: Path, s: Shared) -> None:
    ckpt = _copy_ckpt(tmp, s)
    _, other = build_checkpoint(tmp / "other", seed=0, noise=0.2)  # same shapes, other weights
    shutil.copyfile(other / WEIGHTS_NAME, ckpt / WEIGHTS_NAME)


def ckpt(id: str, setup: Setup | None, *words: str, checkpoint: str = "{tmp}/ckpt", **kw: Any) -> None:
    case(id, ["generate", "--checkpoint", checkpoint, "--device", "cpu", "--prompt", "Reverse the words.",
              "--input", "a b c", "--max-new-tokens", "2"], *words, setup=setup, **kw)


CONFIG_WORDS = CONFIG_NAME
WEIGHT_WORDS = WEIGHTS_NAME
ckpt("ckpt-config-truncated", meta_transform(lambda b: b[: len(b) // 2]), CONFIG_WORDS)
ckpt("ckpt-config-garbage", meta_bytes(b"this is not json\n"), CONFIG_WORDS)
ckpt("ckpt-config-empty", meta_bytes(b""), CONFIG_WORDS)
ckpt("ckpt-config-invalid-utf8", meta_transform(lambda b: b.replace(b'"config"', b'"conf\xff\xfeig"', 1)), CONFIG_WORDS)
ckpt("ckpt-config-top-level-list", meta_bytes(b"[]\n"), CONFIG_WORDS)
ckpt("ckpt-config-top-level-null", meta_bytes(b"null\n"), CONFIG_WORDS)
ckpt("ckpt-format-version-string", meta_edit("format_version", "2"), "format_version")
ckpt("ckpt-format-version-future", meta_edit("format_version", 99), "format version|format_version")
ckpt("ckpt-format-version-null", meta_edit("format_version", None), "format_version")
ckpt("ckpt-format-version-float", meta_edit("format_version", 1.5), "format_version")
ckpt("ckpt-config-list", meta_edit("config", []), "config")
ckpt("ckpt-config-null", meta_edit("config", None), "config")
ckpt("ckpt-lora-null", meta_edit("config.lora", None), "lora")
ckpt("ckpt-lora-list", meta_edit("config.lora", [4, 8.0]), "lora")
ckpt("ckpt-lora-alpha-string", meta_edit("config.lora.alpha", "x"), "alpha")
ckpt("ckpt-lora-rank-string", meta_edit("config.lora.rank", "4"), "rank")
ckpt("ckpt-lora-rank-zero", meta_edit("config.lora.rank", 0), "rank")
ckpt("ckpt-lora-rank-no-longer-fits", meta_edit("config.lora.rank", 8), "rank|fit|" + WEIGHT_WORDS)
ckpt("ckpt-encoder-d-ctx-no-longer-fits", meta_edit("config.encoder.d_ctx", 64), "d_ctx|fit|" + WEIGHT_WORDS)
ckpt("ckpt-generator-d-hidden-no-longer-fits", meta_edit("config.generator.d_hidden", 32),
     "d_hidden|fit|" + WEIGHT_WORDS)
ckpt("ckpt-encoder-null", meta_edit("config.encoder", None), "encoder")
ckpt("ckpt-encoder-d-ctx-string", meta_edit("config.encoder.d_ctx", "big"), "d_ctx")
ckpt("ckpt-generator-string", meta_edit("config.generator", "default"), "generator")
ckpt("ckpt-unknown-config-key", meta_edit("config.smuggled", 1), "smuggled")
ckpt("ckpt-unknown-lora-key", meta_edit("config.lora.smuggled", 1), "smuggled")
ckpt("ckpt-targets-int", meta_edit("config.targets", 5), "targets")
ckpt("ckpt-targets-match-nothing", meta_edit("config.targets", ["no_such_proj"]), "no_such_proj|targets")
ckpt("ckpt-base-model-int", meta_edit("config.base_model", 42), "base_model|base model")
ckpt("ckpt-prompt-agnostic-string", meta_edit("config.prompt_agnostic", "yes"), "prompt_agnostic")
ckpt("ckpt-registry-null", meta_edit("registry", None), "registry")
ckpt("ckpt-registry-shape-changed", meta_edit("registry.0.d_out", 999), "student|registry|shape")
ckpt("ckpt-no-config-file", remove(CONFIG_NAME), CONFIG_WORDS)
ckpt("ckpt-config-is-a-folder", remove(CONFIG_NAME, make_dir=True), CONFIG_WORDS)
ckpt("ckpt-no-weights-file", remove(WEIGHTS_NAME), WEIGHT_WORDS)
ckpt("ckpt-weights-is-a-folder", remove(WEIGHTS_NAME, make_dir=True), WEIGHT_WORDS)
ckpt("ckpt-weights-empty", weights_bytes(lambda b: b""), WEIGHT_WORDS)
ckpt("ckpt-weights-truncated", weights_bytes(lambda b: b[: len(b) // 2]), WEIGHT_WORDS)
ckpt("ckpt-weights-header-corrupt", weights_bytes(lambda b: b[:8] + b"#" * 16 + b[24:]), WEIGHT_WORDS)
ckpt("ckpt-weights-4kb-flipped", weights_bytes(_flip_data), WEIGHT_WORDS)
ckpt("ckpt-weights-nan-tensor", weights_edit(_nan_tensor), WEIGHT_WORDS)
ckpt("ckpt-weights-one-inf", weights_edit(_one_inf), WEIGHT_WORDS)
ckpt("ckpt-weights-scaled", weights_edit(_scaled), WEIGHT_WORDS)
ckpt("ckpt-weights-from-another-checkpoint", _other_weights, WEIGHT_WORDS)
ckpt("ckpt-weights-missing-tensor", weights_edit(_drop_one), WEIGHT_WORDS)
ckpt("ckpt-weights-extra-tensor", weights_edit(_extra), WEIGHT_WORDS)
ckpt("ckpt-weights-wrong-shape", weights_edit(_reshape), WEIGHT_WORDS)
ckpt("ckpt-weights-half-precision", weights_edit(_half), WEIGHT_WORDS)
ckpt("ckpt-folder-missing", None, "checkpoint|does not exist", checkpoint="{tmp}/nowhere")
ckpt("ckpt-folder-empty", lambda tmp, s: (tmp / "empty").mkdir(), CONFIG_WORDS, checkpoint="{tmp}/empty")
ckpt("ckpt-is-a-file", _file("ckpt.bin"), "ckpt.bin", checkpoint="{tmp}/ckpt.bin")
ckpt("ckpt-is-a-run-folder", lambda tmp, s: _user_folder(tmp, "run"), CONFIG_WORDS, checkpoint="{tmp}/run")
ckpt("ckpt-is-a-base-model", None, CONFIG_WORDS, checkpoint="{base}")


# ---- base model mismatch -------------------------------------------------------------------

def _swap_base(change: str) -> Setup:
    """A checkpoint in the case's folder whose recorded base model is then changed in place."""
    def setup(tmp: Path, s: Shared) -> None:
        base, _ = build_checkpoint(tmp)
        if change == "weights":  # another model of the same shape at the recorded path
            other = tiny_model("llama", seed=1)
            shutil.rmtree(base)
            other.save_pretrained(base)
            char_tokenizer().save_pretrained(base)
        elif change == "config":  # same weights, another config (what the weights mean)
            config = json.loads((base / "config.json").read_text())
            # transformers 5 reads rope_theta from rope_parameters (a top-level key would be ignored)
            rope = config.setdefault("rope_parameters", {"rope_type": "default"})
            rope["rope_theta"] = float(rope.get("rope_theta", 10000.0)) * 3
            (base / "config.json").write_text(json.dumps(config, indent=2))
        elif change == "deleted":
            shutil.rmtree(base)
        elif change == "no-tokenizer":
            for path in base.iterdir():
                if "token" in path.name or path.name.startswith("special"):
                    path.unlink()
        elif change == "config-corrupt":
            (base / "config.json").write_text("{ not json")
    return setup


def base_case(id: str, setup: Setup | None, *words: str, extra: tuple[str, ...] = (),
              checkpoint: str = "{tmp}/ckpt-llama", **kw: Any) -> None:
    case(id, ["generate", "--checkpoint", checkpoint, "--device", "cpu", "--prompt", "Reverse the words.",
              "--input", "a b c", "--max-new-tokens", "2", *extra], *words, setup=setup, **kw)


base_case("base-same-shape-other-weights", _swap_base("weights"), "base model|base_model|fingerprint")
base_case("base-same-weights-other-config", _swap_base("config"), "base model|base_model|fingerprint")
base_case("base-recorded-folder-deleted", _swap_base("deleted"), "base model|base_model|--base-model")
base_case("base-recorded-folder-without-tokenizer", _swap_base("no-tokenizer"), "tokenizer")
base_case("base-recorded-config-corrupt", _swap_base("config-corrupt"), "config.json")
base_case("base-override-other-family", None, "student|base model", extra=("--base-model", "toy:gpt2"),
          checkpoint="{ckpt}")
base_case("base-override-missing", None, "--base-model", extra=("--base-model", "{tmp}/nowhere"),
          checkpoint="{ckpt}")
base_case("base-override-is-a-file", _file("model.bin"), "model.bin", extra=("--base-model", "{tmp}/model.bin"),
          checkpoint="{ckpt}")
base_case("base-override-unknown-toy", None, "toy:nosuch", extra=("--base-model", "toy:nosuch"), checkpoint="{ckpt}")
base_case("base-override-dtype-unknown", None, "--dtype", extra=("--dtype", "float33"), checkpoint="{ckpt}",
          argparse=True)


# ---- generate: options ------------------------------------------------------------------------
GEN = ["generate", "--checkpoint", "{ckpt}", "--device", "cpu", "--prompt", "Reverse the words.", "--input", "a b c",
       "--max-new-tokens", "2"]


def gen(id: str, extra: list[str], *words: str, **kw: Any) -> None:
    case(id, [*GEN, *extra], *words, **kw)


gen("gen-num-beams-zero", ["--num-beams", "0"], "--num-beams")
gen("gen-num-beams-negative", ["--num-beams", "-2"], "--num-beams")
gen("gen-num-beams-abc", ["--num-beams", "abc"], "--num-beams", argparse=True)
gen("gen-top-p-two", ["--do-sample", "--top-p", "2"], "--top-p")
gen("gen-top-p-two-greedy", ["--top-p", "2"], "--top-p")
gen("gen-top-p-zero", ["--do-sample", "--top-p", "0"], "--top-p")
gen("gen-top-p-nan", ["--do-sample", "--top-p", "nan"], "--top-p")
gen("gen-temperature-zero", ["--do-sample", "--temperature", "0"], "--temperature")
gen("gen-temperature-zero-greedy", ["--temperature", "0"], "--temperature")
gen("gen-temperature-negative", ["--do-sample", "--temperature", "-1"], "--temperature")
gen("gen-temperature-inf", ["--do-sample", "--temperature", "inf"], "--temperature")
gen("gen-top-k-negative", ["--do-sample", "--top-k", "-1"], "--top-k")
gen("gen-max-new-tokens-zero", ["--max-new-tokens", "0"], "--max-new-tokens")
gen("gen-max-new-tokens-negative", ["--max-new-tokens", "-5"], "--max-new-tokens")
gen("gen-min-new-tokens-negative", ["--min-new-tokens", "-1"], "--min-new-tokens")
gen("gen-min-above-max-new-tokens", ["--min-new-tokens", "10"], "--min-new-tokens")
gen("gen-batch-size-zero", ["--batch-size", "0"], "--batch-size")
gen("gen-batch-size-abc", ["--batch-size", "abc"], "--batch-size", argparse=True)
gen("gen-seed-negative", ["--seed", "-1"], "--seed")
gen("gen-seed-abc", ["--seed", "abc"], "--seed", argparse=True)
gen("gen-device-tpu9", ["--device", "tpu9"], "tpu9")
gen("gen-device-empty", ["--device", ""], "--device")
gen("gen-device-cuda-without-gpu", ["--device", "cuda"], "cuda", needs="no_gpu")
gen("gen-device-cuda7-without-gpu", ["--device", "cuda:7"], "cuda", needs="no_gpu")
gen("gen-dtype-unknown", ["--dtype", "float33"], "--dtype", argparse=True)
gen("gen-unknown-option", ["--beams", "2"], "--beams", argparse=True)
gen("gen-out-existing-file", ["--out", "{tmp}/out.jsonl"], "--force", setup=_file("out.jsonl", b'{"keep": 1}\n'))
gen("gen-out-is-a-folder", ["--out", "{tmp}/outdir"], "outdir", setup=lambda tmp, s: (tmp / "outdir").mkdir())
gen("gen-out-under-a-file", ["--out", "{tmp}/afile/out.jsonl"], "afile", setup=_file("afile"))
gen("gen-prompt-empty", ["--prompt", ""], "prompt")
gen("gen-prompt-blank", ["--prompt", "   \t"], "prompt")
case("gen-prompt-without-input", ["generate", "--checkpoint", "{ckpt}", "--prompt", "Reverse."], "--input")
case("gen-input-without-prompt", ["generate", "--checkpoint", "{ckpt}", "--input", "a b"], "--prompt")
case("gen-no-checkpoint", ["generate", "--prompt", "Reverse.", "--input", "a b"], "--checkpoint", argparse=True)
gen("gen-batch-and-prompt", ["--batch", "{tmp}/b.jsonl"], "--batch",
    setup=_file("b.jsonl", b'{"prompt": "Reverse.", "input": "a b"}\n'))


# ---- generate: --batch files ------------------------------------------------------------------
GOOD = b'{"prompt": "Reverse the words.", "input": "a b c"}\n'
BATCH = ["generate", "--checkpoint", "{ckpt}", "--device", "cpu", "--max-new-tokens", "2", "--batch", "{tmp}/b.jsonl"]


def batch(id: str, bad_line: bytes | None, *words: str, content: bytes | None = None, exit: int = 1,
          **kw: Any) -> None:
    """A batch file whose line 2 is ``bad_line`` between good lines: exit 1, one line naming b.jsonl:2."""
    data = content if content is not None else GOOD + bad_line + b"\n" + GOOD
    if content is None:
        words = ("b.jsonl:2", *words)
    case(id, BATCH, *words, exit=exit, setup=_file("b.jsonl", data), **kw)


batch("batch-invalid-utf8", b'{"prompt": "R\xff\xfe", "input": "a"}', "utf-8")
batch("batch-truncated-json", b'{"prompt": "Reverse the words.", "inp', "json", forbid=("column 1",))
batch("batch-truncated-after-value", b'{"prompt": "Reverse the words.", "input": "a b"', "json", forbid=("column 1",))
batch("batch-prompt-number", b'{"prompt": 3, "input": "a"}', "prompt")
batch("batch-input-list", b'{"prompt": "Reverse.", "input": ["a"]}', "input")
batch("batch-prompt-empty", b'{"prompt": "", "input": "a"}', "prompt")
batch("batch-prompt-blank", b'{"prompt": "  ", "input": "a"}', "prompt")
batch("batch-missing-input", b'{"prompt": "Reverse."}', "input")
batch("batch-missing-prompt", b'{"input": "a b"}', "prompt")
batch("batch-line-is-array", b'["Reverse.", "a b"]', "object")
batch("batch-line-is-null", b"null", "object")
batch("batch-output-wrong-type", b'{"prompt": "Reverse.", "input": "a", "output": 5}', "output")
batch("batch-only-bad-line", None, "b.jsonl:1", content=b'{"prompt": "", "input": "a"}\n')
batch("batch-empty-file", None, "b.jsonl", content=b"", exit=2)
batch("batch-blank-lines-only", None, "b.jsonl", content=b"\n \n\n", exit=2)
case("batch-missing-file", [*BATCH[:-1], "{tmp}/nowhere.jsonl"], "nowhere.jsonl")
case("batch-is-a-directory", [*BATCH[:-1], "{tmp}/bdir"], "bdir", setup=lambda tmp, s: (tmp / "bdir").mkdir())


# ---- inspect / export / merge: options and outputs ---------------------------------------------
INSPECT = ["inspect", "--checkpoint", "{ckpt}", "--device", "cpu", "--prompt", "Reverse the words."]


def inspect(id: str, extra: list[str], *words: str, **kw: Any) -> None:
    case(id, [*INSPECT, *extra], *words, **kw)


inspect("inspect-top-k-zero", ["--top-k", "0"], "--top-k")
inspect("inspect-top-k-negative", ["--top-k", "-3"], "--top-k")
inspect("inspect-top-k-abc", ["--top-k", "abc"], "--top-k", argparse=True)
inspect("inspect-json-and-csv-to-stdout", ["--json", "--csv"], "stdout")
inspect("inspect-json-existing-file", ["--json", "{tmp}/r.json"], "--force", setup=_file("r.json", b"{}\n"))
inspect("inspect-csv-existing-file", ["--csv", "{tmp}/r.csv"], "--force", setup=_file("r.csv", b"a,b\n"))
inspect("inspect-json-is-a-folder", ["--json", "{tmp}/jdir"], "jdir", setup=lambda tmp, s: (tmp / "jdir").mkdir())
inspect("inspect-plot-is-a-file", ["--plot", "{tmp}/plots"], "plots", setup=_file("plots"))
inspect("inspect-plot-user-folder", ["--plot", "{tmp}/mine"], "--force", setup=lambda tmp, s: _user_folder(tmp))
inspect("inspect-prompt-empty", ["--prompt", ""], "prompt")
inspect("inspect-device-tpu9", ["--device", "tpu9"], "tpu9")
case("inspect-no-prompt", ["inspect", "--checkpoint", "{ckpt}"], "--prompt", argparse=True)
case("inspect-checkpoint-missing", ["inspect", "--checkpoint", "{tmp}/nowhere", "--prompt", "P"], "nowhere")


def out_job(job: str) -> None:
    base = [job, "--checkpoint", "{ckpt}", "--device", "cpu", "--prompt", "Reverse the words."]
    case(f"{job}-out-existing-file", [*base, "--out", "{tmp}/out"], "out", setup=_file("out", b"keep me\n"),
         forbid=("pass --force",))
    case(f"{job}-out-existing-file-force", [*base, "--out", "{tmp}/out", "--force"], "out",
         setup=_file("out", b"keep me\n"), forbid=("pass --force",))
    case(f"{job}-out-user-folder", [*base, "--out", "{tmp}/mine"], "not written by hyperlora|written by hyperlora",
         setup=lambda tmp, s: _user_folder(tmp), forbid=("pass --force",))
    case(f"{job}-out-user-folder-force", [*base, "--out", "{tmp}/mine", "--force"], "written by hyperlora",
         setup=lambda tmp, s: _user_folder(tmp), forbid=("pass --force",))
    case(f"{job}-out-under-a-file", [*base, "--out", "{tmp}/afile/out"], "afile", setup=_file("afile"))
    case(f"{job}-prompt-empty", [job, "--checkpoint", "{ckpt}", "--prompt", "", "--out", "{tmp}/out"], "prompt")
    case(f"{job}-no-out", base, "--out", argparse=True)
    case(f"{job}-no-prompt", [job, "--checkpoint", "{ckpt}", "--out", "{tmp}/out"], "--prompt", argparse=True)
    case(f"{job}-checkpoint-missing", [job, "--checkpoint", "{tmp}/nowhere", "--prompt", "P", "--out", "{tmp}/o"],
         "nowhere")
    case(f"{job}-device-tpu9", [*base, "--device", "tpu9", "--out", "{tmp}/out"], "tpu9")
    case(f"{job}-checkpoint-corrupt", [job, "--checkpoint", "{tmp}/ckpt", "--prompt", "P", "--out", "{tmp}/out"],
         CONFIG_NAME, setup=meta_bytes(b"{"))


out_job("export")
out_job("merge")


# ---- selfcheck and bench ----------------------------------------------------------------------
case("selfcheck-rows-zero", ["selfcheck", "--rows", "0"], "--rows")
case("selfcheck-rows-negative", ["selfcheck", "--rows", "-1"], "--rows")
case("selfcheck-rank-zero", ["selfcheck", "--rank", "0"], "--rank")
case("selfcheck-rank-negative", ["selfcheck", "--rank", "-4"], "--rank")
case("selfcheck-rows-abc", ["selfcheck", "--rows", "abc"], "--rows", argparse=True)
case("selfcheck-family-unknown", ["selfcheck", "--families", "nosuch"], "nosuch", argparse=True)

BENCH = ["bench", "--size", "tiny", "--only", "injector", "--iters", "1"]
case("bench-iters-zero", [*BENCH, "--iters", "0"], "--iters")
case("bench-rank-zero", [*BENCH, "--rank", "0"], "--rank")
case("bench-head-rank-zero", [*BENCH, "--head-rank", "0"], "--head-rank")
case("bench-head-rank-negative", [*BENCH, "--head-rank", "-1"], "--head-rank")
case("bench-only-unknown", [*BENCH, "--only", "nosuch"], "--only")
case("bench-only-empty", [*BENCH, "--only", ""], "--only")
case("bench-size-unknown", [*BENCH, "--size", "huge"], "--size", argparse=True)
case("bench-iters-abc", [*BENCH, "--iters", "abc"], "--iters", argparse=True)
case("bench-attn-unknown", [*BENCH, "--attn", "magic"], "--attn|magic")
case("bench-out-is-a-folder", [*BENCH, "--out", "{tmp}/odir"], "odir", setup=lambda tmp, s: (tmp / "odir").mkdir())
case("bench-out-existing-file", [*BENCH, "--out", "{tmp}/bench.json"], "--force", setup=_file("bench.json", b"{}\n"))


# ---- training data (JSONL) ----------------------------------------------------------------------
def _rows(n: int) -> bytes:
    return b"".join(json.dumps({"prompt": "Reverse the words.", "input": f"w{i} x{i}", "output": f"x{i} w{i}"}
                               ).encode() + b"\n" for i in range(n))


def data(id: str, content: bytes | None, *words: str, extra: tuple[str, ...] = (), path: str = "{tmp}/train.jsonl",
         setup: Setup | None = None) -> None:
    if content is not None:
        setup = _file("train.jsonl", content)
    train(id, ["data.source=jsonl", f"data.train={path}", *extra], *words, setup=setup)


data("data-missing-file", None, "train.jsonl|nowhere", path="{tmp}/nowhere.jsonl")
data("data-is-a-directory", None, "ddir", path="{tmp}/ddir", setup=lambda tmp, s: (tmp / "ddir").mkdir())
data("data-empty-file", b"", "train.jsonl")
data("data-invalid-utf8", _rows(8) + b'{"prompt": "\xff", "input": "a", "output": "b"}\n' + _rows(8),
     "train.jsonl:9")
data("data-truncated-json", _rows(8) + b'{"prompt": "Reverse the words.", "input": "a"\n' + _rows(8),
     "train.jsonl:9")
data("data-prompt-not-string", _rows(8) + b'{"prompt": 1, "input": "a", "output": "b"}\n' + _rows(8),
     "train.jsonl:9", "prompt")
data("data-prompt-empty", _rows(8) + b'{"prompt": "", "input": "a", "output": "b"}\n' + _rows(8),
     "train.jsonl:9", "prompt")
data("data-missing-input", _rows(8) + b'{"prompt": "Reverse.", "output": "b"}\n' + _rows(8), "train.jsonl:9", "input")
data("data-output-wrong-type", _rows(8) + b'{"prompt": "R.", "input": "a", "output": [1]}\n' + _rows(8),
     "train.jsonl:9", "output")
data("data-line-is-array", _rows(8) + b'["R.", "a"]\n' + _rows(8), "train.jsonl:9", "object")
data("data-fewer-than-a-batch", _rows(3), "batch")
data("data-skip-leaves-nothing", b'{"prompt": ""}\n', "train.jsonl", extra=("data.on_error=skip",))
data("data-eval-file-missing", _rows(16), "nowhere.jsonl", extra=("+data.eval.dev={tmp}/nowhere.jsonl",))


# ---- the teacher script ------------------------------------------------------------------------
# Small overrides: a case the script wrongly accepts trains for a second, not for minutes.
FAST_TEACHER = ["--steps", "1", "--n-train", "64", "--batch-size", "4", "--eval-examples", "1", "--device", "cpu"]


def teacher(id: str, extra: list[str], *words: str, **kw: Any) -> None:
    case(id, [*FAST_TEACHER, *extra], *words, script=TEACHER_SCRIPT, **kw)


teacher("teacher-out-user-folder", ["--out", "{tmp}/mine"], "mine", setup=lambda tmp, s: _user_folder(tmp))
teacher("teacher-out-is-a-file", ["--out", "{tmp}/afile"], "afile", setup=_file("afile"))
teacher("teacher-out-a-checkpoint", ["--out", "{ckpt}"], "ckpt-llama")
teacher("teacher-steps-zero", ["--out", "{tmp}/t", "--steps", "0"], "steps")
teacher("teacher-lr-negative", ["--out", "{tmp}/t", "--lr", "-1"], "lr")
teacher("teacher-batch-size-zero", ["--out", "{tmp}/t", "--batch-size", "0"], "batch")
teacher("teacher-device-tpu9", ["--out", "{tmp}/t", "--device", "tpu9"], "tpu9")
teacher("teacher-preset-unknown", ["--out", "{tmp}/t", "--preset", "huge"], "--preset", argparse=True)
teacher("teacher-no-out", [], "--out", argparse=True)


# ---- the command line itself ------------------------------------------------------------------
case("cli-unknown-command", ["trian"], "unknown command")


# -- running a case ------------------------------------------------------------------------------

def _snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every path under ``root``: folders by mode, files by mode and content hash, links by target."""
    found: dict[str, tuple[Any, ...]] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            rel = str(path.relative_to(root))
            st = path.lstat()
            if path.is_symlink():
                found[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                found[rel] = ("dir", st.st_mode)
            else:
                found[rel] = ("file", st.st_mode, hashlib.sha1(path.read_bytes()).hexdigest())
    return found


def _touched(before: dict[str, tuple[Any, ...]], after: dict[str, tuple[Any, ...]], allowed: tuple[str, ...]) -> list[str]:
    def free(rel: str) -> bool:
        return any(rel == a or rel.startswith(a + os.sep) for a in allowed)

    # The run lock (``.lock``) may appear or get its holder written: it is harmless and holds no data.
    changed = [f"changed or removed: {rel}" for rel, v in before.items()
               if not free(rel) and after.get(rel) != v and not (Path(rel).name == ".lock" and rel in after)]
    new = [f"created: {rel}" for rel in after if rel not in before and not free(rel) and Path(rel).name != ".lock"]
    return changed + new


def _checkout_entries() -> set[str]:
    return {p.name for p in CHECKOUT.iterdir()} - {".pytest_cache", "__pycache__"}


def _fill(text: str, tmp: Path, s: Shared) -> str:
    return (text.replace("{tmp}", str(tmp)).replace("{ckpt}", str(s.ckpt)).replace("{base2}", str(s.base2))
            .replace("{base}", str(s.base)))


def _invoke(c: Case, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """The exit code ``hyperlora ARGV`` (or ``python SCRIPT ARGV``) would end with; raises what would be a traceback."""
    try:
        if c.script is not None:
            monkeypatch.setattr(sys, "argv", [str(c.script), *argv])
            runpy.run_path(str(c.script), run_name="__main__")
            return 0
        return cli.main(argv)
    except SystemExit as stop:  # argparse, or a sys.exit in the command
        if stop.code is None:
            return 0
        if isinstance(stop.code, int):
            return stop.code
        print(stop.code, file=sys.stderr)  # what the interpreter does with SystemExit("message")
        return 1


def _matches(line: str, word: str) -> bool:
    return any(w.lower() in line.lower() for w in word.split("|"))


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_bad_input(c: Case, shared: Shared, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                   monkeypatch: pytest.MonkeyPatch) -> None:
    if c.needs == "no_gpu" and torch.cuda.is_available():
        pytest.skip("needs a machine without a GPU")
    if c.needs == "non_root" and os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    tmp = tmp_path.resolve()
    (tmp / "cwd").mkdir()
    cleanup = c.setup(tmp, shared) if c.setup is not None else None
    argv = [_fill(a, tmp, shared) for a in c.argv]
    monkeypatch.chdir(tmp / "cwd")
    before, shared_before, checkout_before = _snapshot(tmp), _snapshot(shared.root), _checkout_entries()
    capsys.readouterr()
    try:
        try:
            code = _invoke(c, argv, monkeypatch)
        except Exception as err:  # noqa: BLE001 - Python would print this as a traceback
            first = " ".join(str(err).split())[:300]
            pytest.fail(f"traceback: {type(err).__name__}: {first}")
    finally:
        if callable(cleanup):
            cleanup()
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    problems: list[str] = []
    if code != c.exit:
        problems.append(f"exit {code}, expected {c.exit}")
    if "Traceback" in err:
        problems.append("a traceback on stderr")
    if not lines:
        problems.append("nothing on stderr")
    elif c.argparse:
        if not (code == 2 and lines[0].startswith("usage:") and ": error: " in lines[-1]):
            problems.append("not argparse's usage error")
    elif c.id == "cli-unknown-command":  # the error line, then the list of commands (like argparse's usage)
        pass
    elif len(lines) != 1:
        problems.append(f"{len(lines)} lines on stderr")
    line = lines[-1] if c.argparse and lines else (lines[0] if lines else "")
    missing = [w for w in c.words if not _matches(line, w)]
    if missing:
        problems.append(f"the error line lacks {missing}")
    wrong = [w for w in c.forbid if _matches(line, w)]
    if wrong:
        problems.append(f"the error line holds the misleading {wrong}")
    problems += _touched(before, _snapshot(tmp), tuple(c.may_change))
    problems += [f"shared fixture {p}" for p in _touched(shared_before, _snapshot(shared.root), ())]
    if _checkout_entries() - checkout_before:
        problems.append(f"created in the checkout: {sorted(_checkout_entries() - checkout_before)}")
    if problems:
        shown = line[:300] if line else (out.strip().splitlines() or ["<no output>"])[-1][:200]
        pytest.fail(f"{'; '.join(problems)} | stderr: {shown}")


def test_case_ids_are_unique() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})


def test_the_catalogue_covers_every_kind_the_issue_counts() -> None:
    assert len(CASES) >= 152
