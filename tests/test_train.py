"""Every Hydra config composes and builds the objects it configures; the train job runs end to end."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

import hyperlora.train as train_module
from hyperlora.cli import main as cli_main
from hyperlora.config import HyperLoRAConfig
from hyperlora.model import HyperLoRA
from hyperlora.toy.models import tiny_model
from hyperlora.toy.tokenizer import char_tokenizer
from hyperlora.train import CONF_DIR, compose_config, run
from hyperlora.trainer import TrainerConfig

GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir())
OPTIONS = [(group, f.stem) for group in GROUPS for f in sorted((CONF_DIR / group).glob("*.yaml"))]


def test_the_expected_groups_exist():
    assert set(GROUPS) >= {"model", "teacher", "encoder", "generator", "data", "trainer", "logger", "experiment"}
    assert ("experiment", "tiny_test") in OPTIONS
    assert len(OPTIONS) >= 18


def _plain(cfg) -> dict:
    # Mandatory (???) values stay as "???" here: these tests build the parts that do not need them.
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)


def _build(cfg: dict) -> tuple[TrainerConfig, HyperLoRAConfig]:
    trainer = TrainerConfig(**cfg["trainer"])
    parts = {"base_model": "/some/model", "targets": cfg["targets"], "lora": cfg["lora"],
             "encoder": cfg["encoder"], "generator": cfg["generator"]}
    if "prompt_agnostic" in cfg:  # newer configs carry the baseline switch too
        parts["prompt_agnostic"] = cfg["prompt_agnostic"]
    hyper = HyperLoRAConfig.from_dict(parts)
    return trainer, hyper


@pytest.mark.parametrize("group, option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_builds(group, option):
    cfg = compose_config([f"{group}={option}"])
    plain = _plain(cfg)
    trainer, hyper = _build(plain)
    assert hyper.base_model == "/some/model"
    assert dataclasses.asdict(hyper.lora) == {**dataclasses.asdict(hyper.lora), **plain["lora"]}
    # The option's own values are what the composed config holds.
    own = OmegaConf.to_container(OmegaConf.load(CONF_DIR / group / f"{option}.yaml"), resolve=False)
    if group == "experiment":
        own.pop("defaults", None)
        for section, values in own.items():
            if isinstance(values, dict):
                for key, value in values.items():
                    assert plain[section][key] == value, f"{section}.{key}"
            else:
                assert plain[section] == values, section
    else:
        assert {k: plain[group][k] for k in own} == own
    if group == "trainer":
        assert dataclasses.asdict(trainer) == plain["trainer"]
    if group in ("encoder", "generator"):
        assert dataclasses.asdict(getattr(hyper, group)) == {**dataclasses.asdict(getattr(hyper, group)), **own}


@pytest.mark.parametrize("option", ["cpu", "gpu"])
def test_trainer_yaml_lists_every_trainer_field(option):
    own = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "trainer" / f"{option}.yaml"))
    assert set(own) == {f.name for f in dataclasses.fields(TrainerConfig)}


def test_experiment_overrides_apply():
    cfg = _plain(compose_config(["experiment=tiny_test"]))
    assert cfg["trainer"]["max_steps"] == 6 and cfg["trainer"]["batch_size"] == 8
    assert cfg["trainer"]["lr"] == 1.0e-3  # from the trainer group the experiment selects
    assert cfg["encoder"]["d_model"] == 32 and cfg["encoder"]["backbone"] == "student_embeddings"
    assert cfg["logger"]["kind"] == "jsonl"
    # Top-level sections set by an experiment must win over conf/config.yaml's own defaults
    # (they do not while `_self_` comes after `optional experiment` in config.yaml's defaults).
    assert cfg["lora"]["rank"] == 4 and cfg["lora"]["alpha"] == 8.0, cfg["lora"]
    gpu = _plain(compose_config(["experiment=gpu"]))
    assert gpu["model"]["dtype"] == "bfloat16" and gpu["trainer"]["batch_size"] == 256  # the experiment's own
    assert gpu["trainer"]["weight_decay"] == 0.01  # from the trainer group it selects
    assert gpu["encoder"]["backbone"] == "student_hidden" and gpu["encoder"]["prompt_layout"] == "teacher"
    # A command-line override beats the experiment.
    assert _plain(compose_config(["experiment=tiny_test", "trainer.max_steps=2"]))["trainer"]["max_steps"] == 2


@pytest.mark.parametrize("overrides, key", [
    (["model=local"], "model.path"),
    (["teacher=local"], "teacher.path"),
    (["data=jsonl"], "data.train"),
])
def test_mandatory_values_raise(overrides, key):
    cfg = compose_config(overrides)
    with pytest.raises(MissingMandatoryValue, match=key.split(".")[1]):
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    with pytest.raises(MissingMandatoryValue):
        run(cfg)


def test_unknown_keys_raise():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        compose_config(["trainer.no_such_key=1"])
    with pytest.raises(ConfigCompositionException):
        compose_config(["trainer=no_such_option"])
    # Added with "+": refused when the section is built, naming the key.
    with pytest.raises((TypeError, ValueError), match="no_such_key"):
        run(compose_config(["+trainer.no_such_key=1"]))
    with pytest.raises(ValueError, match="no_such_key"):
        run(compose_config(["model.path=/x", "+encoder.no_such_key=1"]))
    with pytest.raises(ValueError, match="batch_size"):
        run(compose_config(["trainer.batch_size=0"]))


# -- end to end --------------------------------------------------------------------


def test_missing_model_path_names_the_path(tmp_path):
    missing = tmp_path / "no_model_here"
    cfg = compose_config(["experiment=tiny_test", f"model.path={missing}", f"trainer.out_dir={tmp_path / 'out'}"])
    with pytest.raises(FileNotFoundError, match="no_model_here"):
        run(cfg)


def test_run_tiny_test_end_to_end(model_dir, tmp_path):
    out = tmp_path / "out"
    cfg = compose_config(["experiment=tiny_test", f"model.path={model_dir}", f"trainer.out_dir={out}", "logger=jsonl"])
    result = run(cfg)
    assert result["steps"] == 6 and result["final_loss"] is not None
    assert "train_unseen_inputs/kl" in result and "heldout_compose/em_student" in result
    assert json.loads((out / "final_metrics.json").read_text()) == pytest.approx(result)

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[-1]["loss"] == pytest.approx(result["final_loss"])
    assert "train_unseen_inputs/kl" in rows[2] and "train_unseen_inputs/kl" not in rows[1]  # eval_every=3

    # keep_last=2 of the checkpoints at steps 3 and 6; nothing temporary left.
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000003", "step-000006"]

    student = tiny_model("llama")
    hyper = HyperLoRA.from_pretrained(out / "hyperlora", student=student, tokenizer=char_tokenizer())
    assert hyper.config.base_model == str(model_dir)
    assert hyper.config.encoder.d_model == 32
    assert dataclasses.asdict(hyper.spec) == _plain(cfg)["lora"]  # what the composed config says
    ckpt = HyperLoRA.from_pretrained(out / "checkpoints" / "step-000006" / "hyperlora", student=student,
                                   tokenizer=char_tokenizer())
    for key, value in hyper.hypernet.state_dict().items():
        assert torch.equal(value, ckpt.hypernet.state_dict()[key]), key
    # Trained: the weights moved away from the initial ones (run() seeds the init with trainer.seed = 0).
    torch.manual_seed(0)
    fresh = HyperLoRA(student, char_tokenizer(), hyper.config).hypernet.state_dict()
    trained = hyper.hypernet.state_dict()
    assert sum(not torch.equal(trained[k], fresh[k]) for k in fresh) > len(fresh) // 2


def test_cli_train_returns_zero(model_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    code = cli_main(["train", "experiment=tiny_test", f"model.path={model_dir}", f"trainer.out_dir={out}"])
    assert code == 0
    stdout = capsys.readouterr().out
    printed = json.loads(stdout[stdout.rindex("\n{") + 1 :])  # the result, printed last
    assert printed == pytest.approx(json.loads((out / "final_metrics.json").read_text()))
    assert printed["steps"] == 6
    assert (out / "hyperlora" / "hypernet.safetensors").is_file()
    assert (out / "metrics.jsonl").is_file()


def test_compose_refuses_a_missing_conf_dir(monkeypatch, tmp_path):
    monkeypatch.setattr(train_module, "CONF_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="Hydra configs"):
        train_module.compose_config([])
