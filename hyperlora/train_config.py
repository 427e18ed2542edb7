"""``TrainConfig``: the typed, validated form of the composed Hydra config of ``hyperlora train``.

One dataclass per Hydra group (``conf/<group>/*.yaml``)::

    model     ModelConfig       teacher   TeacherConfig     encoder  EncoderConfig
    generator GeneratorConfig   lora      LoRASpec          data     DataConfig
    trainer   TrainerConfig     distill   DistillConfig     logger   LoggerConfig

The dataclasses are the schema *and* the defaults: ``TrainConfig`` is registered in Hydra's
ConfigStore as ``train_schema`` and listed first in ``conf/config.yaml``'s defaults, so every
field can be overridden on the command line (``trainer.weight_decay=0.1``) and a YAML lists only
what differs from its dataclass. A key no dataclass has, or a value of the wrong type, is refused
when the config is composed; ``train_config`` then builds the dataclasses, whose ``__post_init__``
check the values (and refuses unknown keys of a plain dict, naming them).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

from hyperlora.base_models import DTYPES
from hyperlora.config import HyperLoRAConfig
from hyperlora.distill import DistillConfig
from hyperlora.encoder import EncoderConfig
from hyperlora.generator import GeneratorConfig
from hyperlora.lora import LoRASpec
from hyperlora.trainer import TrainerConfig

__all__ = [
    "SCHEMA_NAME",
    "DataConfig",
    "LoggerConfig",
    "ModelConfig",
    "TeacherConfig",
    "TrainConfig",
    "check_overrides",
    "register_schema",
    "train_config",
]

SCHEMA_NAME = "train_schema"
DEFAULT_EVAL_SPLITS = ["train_unseen_inputs", "heldout_phrasing", "heldout_param", "heldout_compose"]
# data.source=instruct with data.eval_splits left at its (toy) default evaluates these instead.
INSTRUCT_EVAL_SPLITS = ["train_unseen_questions", "heldout_phrasing", "heldout_param", "heldout_type",
                        "heldout_compose"]
DATA_TARGETS = ("teacher", "verified", "mix")


@dataclass
class ModelConfig:
    """The student (group ``model``)."""

    path: str = MISSING  # a local Hugging Face folder, or toy:<family> (hyperlora.base_models)
    dtype: str = "float32"  # float32 | bfloat16 | float16 (the teacher's too)
    attn_implementation: str = "sdpa"  # flash_attention_2 where flash-attn is installed

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"model.dtype={self.dtype!r}; choose one of {', '.join(DTYPES)}.")


@dataclass
class TeacherConfig:
    """The teacher (group ``teacher``)."""

    # None (teacher=self): context distillation, the student itself with the prompt in context; no
    # default, so that teacher=local without a path is refused instead of quietly distilling from the student.
    path: str | None = MISSING


@dataclass
class DataConfig:
    """Training and evaluation records (group ``data``)."""

    # builtin: the seeded toy suite of hyperlora.toy.tasks | jsonl: your files | instruct: the verifiable
    # instruction suite for real LMs (hyperlora.instruct), labelled by the teacher and/or rewritten (data.targets)
    source: str = "builtin"
    n_train: int = 4000  # builtin and instruct
    n_eval: int = 200  # per evaluation split
    seed: int = 0
    # builtin and instruct; for instruct, the toy default reads as INSTRUCT_EVAL_SPLITS
    eval_splits: list[str] = field(default_factory=lambda: list(DEFAULT_EVAL_SPLITS))
    # instruct only: what the training outputs are and which loss they take.
    #   teacher: the teacher's answer with the instruction in context, KL against its logits (context distillation);
    #   verified: the model's own answer without the instruction, rewritten to pass the verifiers, cross-entropy
    #             (or the teacher's answer where it passes and no rewrite is made; others are dropped, with a count);
    #   mix: both sets of records, each with its own loss.
    targets: str = "teacher"
    # verified only: the longest target in tokens (end token included); a bare answer is cut at a sentence end until
    # its rewrite fits. null: three quarters of label_max_new_tokens, room for a student that writes a little more
    # than its target and is judged at that length.
    verified_max_tokens: int | None = None
    # verified only: an example no rewrite serves (a named language, a letter count) takes the teacher's answer
    # (instruction in context) instead, when that answer passes the verifiers.
    verified_from_teacher: bool = True
    max_length: int = 512  # tokens per collated row
    on_error: str = "fail"  # jsonl: fail, or skip (malformed lines are reported and left out)
    train: str | None = None  # jsonl: lines {"prompt", "input", "output"?}; a missing output is labelled by the teacher
    eval: dict[str, str] = field(default_factory=dict)  # jsonl: {split name: path}
    prompt_layout: str = "user"  # where the teacher reads the prompt: user (before the input) | system (a system turn)
    # Teacher labels for outputs a file lacks (hyperlora.data.label); every one of these is part of a label's cache key.
    label_max_new_tokens: int = 128  # a label cut here gets no end token
    label_do_sample: bool = False  # false: greedy
    label_temperature: float = 1.0  # sampling only
    label_top_p: float = 1.0  # sampling only
    label_repetition_penalty: float = 1.0
    label_seed: int = 0  # sampling only: each record draws from a seed made of this and the record
    label_batch_size: int = 32
    label_progress: bool = True  # a progress bar while labelling
    # The labels' cache file; null: trainer.out_dir/teacher_outputs.jsonl. Runs that share a teacher (a hypernetwork
    # and its prompt-agnostic baseline, several seeds) can share one file: a label is keyed by teacher, record and
    # settings, so a shared file only ever serves the label a run would have written itself.
    label_cache: str | None = None

    def verified_token_limit(self) -> int:
        """``verified_max_tokens``, or its default: three quarters of ``label_max_new_tokens``."""
        if self.verified_max_tokens is not None:
            return int(self.verified_max_tokens)
        return max(2, self.label_max_new_tokens * 3 // 4)  # the floor verified_max_tokens has: a word and the end

    def label_options(self) -> dict[str, Any]:
        """``hyperlora.data.label.label_missing``'s keyword arguments."""
        return {"max_new_tokens": self.label_max_new_tokens, "batch_size": self.label_batch_size,
                "do_sample": self.label_do_sample, "temperature": self.label_temperature, "top_p": self.label_top_p,
                "repetition_penalty": self.label_repetition_penalty, "seed": self.label_seed,
                "prompt_layout": self.prompt_layout, "progress": self.label_progress}

    def __post_init__(self) -> None:
        if self.prompt_layout not in ("user", "system"):
            raise ValueError(f"data.prompt_layout={self.prompt_layout!r}; choose user or system.")
        if self.verified_max_tokens is not None and int(self.verified_max_tokens) < 2:
            raise ValueError(f"data.verified_max_tokens must be an integer >= 2 (a word and the end token) or null, "
                             f"got {self.verified_max_tokens!r}.")
        for name in ("label_max_new_tokens", "label_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"data.{name} must be a positive integer, got {getattr(self, name)!r}.")
        if not self.label_temperature > 0:
            raise ValueError(f"data.label_temperature must be > 0, got {self.label_temperature!r}.")
        if not 0 < self.label_top_p <= 1:
            raise ValueError(f"data.label_top_p must be in (0, 1], got {self.label_top_p!r}.")
        if not self.label_repetition_penalty > 0:
            raise ValueError(f"data.label_repetition_penalty must be > 0, got {self.label_repetition_penalty!r}.")
        if self.label_seed < 0:
            raise ValueError(f"data.label_seed must be an integer >= 0, got {self.label_seed!r}.")
        if self.source not in ("builtin", "jsonl", "instruct"):
            raise ValueError(f"data.source={self.source!r}; choose builtin, jsonl or instruct.")
        if self.targets not in DATA_TARGETS:
            raise ValueError(f"data.targets={self.targets!r}; choose one of {', '.join(DATA_TARGETS)}.")
        if self.targets != "teacher" and self.source != "instruct":
            raise ValueError(f"data.targets={self.targets} needs data.source=instruct (its verifiers rewrite the "
                             "answers); other sources take the teacher's outputs.")
        if self.source == "instruct":
            from hyperlora.instruct import SPLITS

            if list(self.eval_splits) == DEFAULT_EVAL_SPLITS:
                self.eval_splits = list(INSTRUCT_EVAL_SPLITS)
            unknown = [s for s in self.eval_splits if s not in SPLITS]
            if unknown:
                raise ValueError(f"data.eval_splits has {unknown}, not splits of the instruct suite; choose from "
                                 f"{', '.join(SPLITS)}.")
        if self.on_error not in ("fail", "skip"):
            raise ValueError(f"data.on_error={self.on_error!r}; choose fail or skip.")
        if self.source == "jsonl" and not self.train:
            raise ValueError("data.source=jsonl needs data.train=/path/to/train.jsonl.")
        for name in ("n_train", "n_eval", "max_length"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"data.{name} must be a positive integer, got {getattr(self, name)!r}.")
        if self.seed < 0:
            raise ValueError(f"data.seed must be an integer >= 0, got {self.seed!r}.")


@dataclass
class LoggerConfig:
    """Where metrics go (group ``logger``); metrics.jsonl lands in ``trainer.out_dir``."""

    kind: str = "jsonl"  # none | jsonl | wandb (wandb also writes metrics.jsonl)
    project: str = "hyperlora"  # wandb only
    name: str | None = None  # wandb only
    mode: str = "offline"  # wandb only: never touches the network unless set to online

    def __post_init__(self) -> None:
        if self.kind not in ("none", "jsonl", "wandb"):
            raise ValueError(f"logger.kind={self.kind!r}; choose none, jsonl or wandb.")

    def wandb_options(self) -> dict[str, Any] | None:
        return {"project": self.project, "name": self.name, "mode": self.mode} if self.kind == "wandb" else None


@dataclass
class TrainConfig:
    """Everything ``hyperlora train`` reads."""

    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    lora: LoRASpec = field(default_factory=LoRASpec)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    targets: Any = None  # None = attention q,k,v,o; "all-linear"; a list of suffixes; a regex
    prompt_agnostic: bool = False  # true: the baseline, one plain LoRA for every task
    eval_before: bool = False  # also evaluate before the first step (the main job prints before/after)

    def hyperlora_config(self) -> HyperLoRAConfig:
        """What the checkpoint records: the student's name and the hypernetwork's parts."""
        targets = list(self.targets) if isinstance(self.targets, (list, tuple)) else self.targets
        return HyperLoRAConfig(base_model=self.model.path, targets=targets, lora=self.lora, encoder=self.encoder,
                               generator=self.generator, prompt_agnostic=self.prompt_agnostic)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def register_schema() -> None:
    """Register ``TrainConfig`` as ``train_schema`` in Hydra's ConfigStore (idempotent).

    ``conf/config.yaml`` lists it first in its defaults: compose needs it registered.
    """
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=SCHEMA_NAME, node=_schema())


def _schema() -> DictConfig:
    """``TrainConfig`` as an OmegaConf node: the defaults, the keys and the types."""
    schema = OmegaConf.structured(TrainConfig)
    # LoRASpec is a frozen value object, which OmegaConf turns into a read-only node; its config is settable.
    OmegaConf.set_readonly(schema.lora, False)
    return schema


_BOOL_WORDS = {"true", "false", "yes", "no", "on", "off"}


def check_overrides(overrides: list[str], conf_dir: Path) -> None:
    """Refuse, in one line each, what Hydra would misread or report without naming the override.

    * an override that does not parse (Hydra's message does not say which one);
    * ``experiment=NAME`` with no such preset (the group is optional: Hydra would ignore it);
    * a boolean field given anything but true/false/yes/no/on/off (OmegaConf reads 2 as true).
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for text in overrides:
        try:
            parser.parse_overrides([text])
        except HydraException as err:
            raise ValueError(f"Cannot read the override {text!r} ({' '.join(str(err).split())}); write key=value, "
                             "e.g. trainer.lr=1e-4.") from None
        key, _, value = text.lstrip("+~").partition("=")
        if key == "experiment" and value and not (conf_dir / "experiment" / f"{value}.yaml").is_file():
            known = sorted(p.stem for p in (conf_dir / "experiment").glob("*.yaml"))
            raise ValueError(f"No experiment preset {value!r}; choose one of {', '.join(known)}.")
        if _field_type(key) == "bool" and value.strip().lower() not in _BOOL_WORDS:
            raise ValueError(f"{key} is true or false, got {value!r}.")


def _field_type(dotted: str) -> str | None:
    """The annotation (as written) of ``TrainConfig``'s field at a dotted key, or None if there is none."""
    cls: Any = TrainConfig
    annotation = None
    for part in dotted.split("."):
        fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
        if part not in fields:
            return None
        annotation = fields[part].type
        cls = _PARTS.get(annotation) if isinstance(annotation, str) else None
    return annotation if isinstance(annotation, str) else None


def _unknown_keys(data: Any, schema: type, where: str) -> list[str]:
    """Dotted names of the keys of ``data`` that ``schema`` (a dataclass) and its parts lack."""
    if not isinstance(data, dict):
        return []
    fields = {f.name: f for f in dataclasses.fields(schema)}
    unknown = [f"{where}{key}" for key in data if key not in fields]
    for key, value in data.items():
        kind = fields[key].type if key in fields else None
        part = _PARTS.get(kind) if isinstance(kind, str) else None
        if part is not None:
            unknown += _unknown_keys(value, part, f"{where}{key}.")
    return unknown


_PARTS: dict[str, type] = {cls.__name__: cls for cls in (
    ModelConfig, TeacherConfig, EncoderConfig, GeneratorConfig, LoRASpec, DataConfig, TrainerConfig, DistillConfig,
    LoggerConfig)}


def train_config(cfg: TrainConfig | DictConfig | dict[str, Any]) -> TrainConfig:
    """The typed, validated ``TrainConfig`` of a composed config (or of plain nested dicts).

    Raises:
        ValueError: an unknown key (every one is named) or a bad value.
        omegaconf.errors.MissingMandatoryValue: a required value (``???``) was not set.
        omegaconf.errors.ValidationError: a value of the wrong type.
    """
    if isinstance(cfg, TrainConfig):
        return cfg
    plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    unknown = sorted(_unknown_keys(plain, TrainConfig, ""))
    if unknown:
        raise ValueError(f"Unknown key(s) {unknown} in the train config; see hyperlora.train_config for the fields.")
    merged = OmegaConf.merge(_schema(), plain)
    return OmegaConf.to_object(merged)


# On import too: a `hydra.main` entry point composes conf/config.yaml after importing hyperlora.train.
register_schema()
