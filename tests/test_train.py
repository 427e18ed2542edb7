"""Every Hydra config composes and builds the objects it configures; the train job runs end to end."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

import hyperlora.train as train_module
from hyperlora.cli import main as cli_main
from hyperlora.distill import DistillConfig
from hyperlora.encoder import EncoderConfig
from hyperlora.generator import GeneratorConfig
from hyperlora.lora import LoRASpec
from hyperlora.model import HyperLoRA
from hyperlora.toy.models import tiny_model
from hyperlora.toy.tokenizer import char_tokenizer
from hyperlora.train import CONF_DIR, compose_config, run
from hyperlora.train_config import DataConfig, LoggerConfig, ModelConfig, TeacherConfig, TrainConfig, train_config
from hyperlora.trainer import TrainerConfig

GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir())
OPTIONS = [(group, f.stem) for group in GROUPS for f in sorted((CONF_DIR / group).glob("*.yaml"))]


def test_the_expected_groups_exist():
    assert set(GROUPS) >= {"model", "teacher", "encoder", "generator", "data", "trainer", "distill", "logger",
                           "experiment"}
    assert ("experiment", "tiny_test") in OPTIONS
    assert len(OPTIONS) >= 18


def _plain(cfg) -> dict:
    # Mandatory (???) values stay as "???" here: these tests build the parts that do not need them.
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)


# What a test sets where an option leaves a value mandatory (???), to build the typed config.
MANDATORY = {("model", "local"): ["model.path=/some/model"], ("teacher", "local"): ["teacher.path=/some/teacher"],
             ("data", "jsonl"): ["data.train=/some/train.jsonl"]}


@pytest.mark.parametrize("group, option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_into_a_valid_typed_config(group, option):
    cfg = compose_config([f"{group}={option}", *MANDATORY.get((group, option), [])])
    typed = train_config(cfg)
    assert isinstance(typed, TrainConfig)
    assert isinstance(typed.trainer, TrainerConfig) and isinstance(typed.distill, DistillConfig)
    assert isinstance(typed.lora, LoRASpec) and isinstance(typed.data, DataConfig)
    plain = _plain(cfg)
    assert typed.to_dict() == plain  # nothing lost or added on the way to the dataclasses
    hyper = typed.hyperlora_config()
    assert hyper.base_model == typed.model.path and hyper.lora == typed.lora
    # The option's own values are what the composed config holds.
    own = OmegaConf.to_container(OmegaConf.load(CONF_DIR / group / f"{option}.yaml"), resolve=False) or {}
    if group == "experiment":
        own.pop("defaults", None)
        for section, values in own.items():
            if isinstance(values, dict):
                for key, value in values.items():
                    assert plain[section][key] == value, f"{section}.{key}"
            else:
                assert plain[section] == values, section
    else:
        assert {k: plain[group][k] for k in own if own[k] != "???"} == {k: v for k, v in own.items() if v != "???"}


SCHEMAS = {"model": ModelConfig, "teacher": TeacherConfig, "encoder": EncoderConfig, "generator": GeneratorConfig,
           "data": DataConfig, "trainer": TrainerConfig, "distill": DistillConfig, "logger": LoggerConfig}


@pytest.mark.parametrize("group, option", [o for o in OPTIONS if o[0] != "experiment"],
                         ids=[f"{g}={o}" for g, o in OPTIONS if g != "experiment"])
def test_group_yamls_list_only_what_differs_from_the_dataclass(group, option):
    own = OmegaConf.to_container(OmegaConf.load(CONF_DIR / group / f"{option}.yaml"), resolve=False) or {}
    defaults = OmegaConf.to_container(OmegaConf.structured(SCHEMAS[group]))  # a mandatory field reads "???"
    assert set(own) <= set(defaults), f"{group}/{option}.yaml: keys {set(own) - set(defaults)} are no fields"
    repeated = sorted(k for k, v in own.items() if v == defaults[k])
    assert not repeated, f"{group}/{option}.yaml repeats the default of {repeated}"


def test_config_yaml_sets_no_values_of_its_own():
    own = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "config.yaml"), resolve=False)
    assert set(own) == {"defaults", "hydra"}  # every value comes from a dataclass or a group option
    assert own["defaults"][0] == "train_schema"


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
])
def test_mandatory_values_raise(overrides, key):
    cfg = compose_config(overrides)
    with pytest.raises(MissingMandatoryValue, match=key.split(".")[1]):
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    with pytest.raises(MissingMandatoryValue):
        run(cfg)


def test_jsonl_data_needs_a_train_file():
    with pytest.raises(ValueError, match="data.train"):
        run(compose_config(["data=jsonl"]))


def test_unknown_keys_raise():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        compose_config(["trainer.no_such_key=1"])
    with pytest.raises(ConfigCompositionException):
        compose_config(["trainer=no_such_option"])
    with pytest.raises(ConfigCompositionException):
        compose_config(["trainer.batch_size=many"])  # typed: an int field refuses a word
    # Added with "+": refused when the typed config is built, naming the key.
    with pytest.raises(ValueError, match="trainer.no_such_key"):
        run(compose_config(["+trainer.no_such_key=1"]))
    with pytest.raises(ValueError, match="encoder.no_such_key"):
        run(compose_config(["model.path=/x", "+encoder.no_such_key=1"]))
    with pytest.raises(ValueError, match="batch_size"):
        run(compose_config(["trainer.batch_size=0"]))
    with pytest.raises(ValueError, match=r"\['distill.nope', 'model.qq', 'top'\]"):
        train_config({"distill": {"nope": 1}, "model": {"path": "x", "qq": 2}, "top": 3})


def test_a_yaml_key_not_in_the_dataclass_is_refused(tmp_path, monkeypatch):
    from hydra.errors import ConfigCompositionException

    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    with (conf / "trainer" / "cpu.yaml").open("a") as handle:
        handle.write("lr_typo: 0.1\n")
    monkeypatch.setattr(train_module, "CONF_DIR", conf)
    with pytest.raises(ConfigCompositionException, match="lr_typo"):
        compose_config([])
    compose_config(["trainer=gpu"])  # the other options still compose


def test_overrides_reach_fields_no_yaml_lists():
    cfg = train_config(compose_config(["trainer.weight_decay=0.5", "distill.adapter_l2=0.01", "lora.rank=2"]))
    assert cfg.trainer.weight_decay == 0.5 and cfg.distill.adapter_l2 == 0.01 and cfg.lora.rank == 2
    assert cfg.distill == DistillConfig(adapter_l2=0.01)


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


def test_cli_train_returns_zero_on_the_built_in_toy_model(tmp_path, capsys):
    out = tmp_path / "cli"
    code = cli_main(["train", "experiment=tiny_test", f"trainer.out_dir={out}"])  # model.path=toy:llama
    assert code == 0
    stdout = capsys.readouterr().out
    printed = json.loads(stdout[stdout.rindex("\n{") + 1 :])  # the result, printed last
    assert printed == pytest.approx(json.loads((out / "final_metrics.json").read_text()))
    assert printed["steps"] == 6
    assert (out / "hyperlora" / "hypernet.safetensors").is_file()
    assert (out / "metrics.jsonl").is_file()
    # The checkpoint records the name, and the name rebuilds the same student: no student= needed.
    hyper = HyperLoRA.from_pretrained(out / "hyperlora")
    assert hyper.config.base_model == "toy:llama"
    expected = tiny_model("llama")
    for key, value in expected.state_dict().items():
        assert torch.equal(hyper.student.state_dict()[key], value), key


def test_compose_refuses_a_missing_conf_dir(monkeypatch, tmp_path):
    monkeypatch.setattr(train_module, "CONF_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="Hydra configs"):
        train_module.compose_config([])


# -- the run folder: identity, refusals, overwrite, resume, lock (issue 14) ---------------------------------


def _tiny(out, *extra: str) -> list[str]:
    """A 2-step run of experiment=tiny_test into ``out`` with almost no evaluation: a few seconds."""
    return ["experiment=tiny_test", f"trainer.out_dir={out}", "trainer.max_steps=2", "trainer.save_every=2",
            "trainer.eval_every=0", "trainer.eval_examples=2", "data.n_eval=2", "data.n_train=32",
            "data.eval_splits=[train_unseen_inputs]", *extra]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 2-step run folder, and its result; tests copy it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    return out, run(compose_config(_tiny(out)))


@pytest.fixture
def used(finished_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run[0], out)
    return out


def _snapshot(folder) -> dict:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def _no_loading(monkeypatch) -> None:
    """Every refusal comes before a model is loaded: fast, and nothing else happens."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the run folder was checked")

    monkeypatch.setattr(train_module, "load_base_model", refuse)


def test_a_new_run_writes_its_identity(finished_run):
    from hyperlora.resume_policy import run_identity

    out, result = finished_run
    saved = json.loads((out / "run.json").read_text())
    assert saved["format"] == "hyperlora-run/1"
    assert saved["identity"] == run_identity(saved["config"])
    assert saved["config"]["trainer"]["max_steps"] == 2 and saved["config"]["lora"]["rank"] == 4
    assert result["steps"] == 2


def test_a_non_empty_folder_without_a_run_is_refused_untouched(tmp_path, monkeypatch):
    # trainer.out_dir=. in a checkout: the package source must never become a checkpoint.
    out = tmp_path / "checkout"
    (out / "hyperlora").mkdir(parents=True)
    (out / "hyperlora" / "__init__.py").write_text("source")
    (out / "README.md").write_text("readme")
    before = _snapshot(out)
    _no_loading(monkeypatch)
    with pytest.raises(FileExistsError, match="holds no hyperlora run.*left untouched.*new or empty trainer.out_dir"):
        run(compose_config(_tiny(out, "trainer.overwrite=true")))  # overwrite does not make it ours
    assert _snapshot(out) == before  # not even a lock file


def test_a_folder_holding_a_run_is_refused_without_resume_or_overwrite(used, monkeypatch):
    before = _snapshot(used)
    _no_loading(monkeypatch)
    with pytest.raises(FileExistsError, match="holds another run.*trainer.resume=true.*trainer.overwrite=true"):
        run(compose_config(_tiny(used, "lora.rank=2")))
    assert _snapshot(used) == before
    with pytest.raises(ValueError, match="pass only one"):
        run(compose_config(_tiny(used, "trainer.resume=true", "trainer.overwrite=true")))


def test_overwrite_deletes_only_what_a_run_wrote(used):
    from hyperlora.resume_policy import run_identity

    (used / "notes.txt").write_text("mine")
    (used / "mine").mkdir()
    (used / "mine" / "data.bin").write_bytes(b"\x00")
    (used / "checkpoints" / "step-000009").mkdir()  # an old run's higher step must not survive the pruning
    (used / "checkpoints" / "step-000009" / "trainer_state.json").write_text("{}")
    old_identity = json.loads((used / "run.json").read_text())["identity"]
    result = run(compose_config(_tiny(used, "lora.rank=2", "trainer.overwrite=true")))
    assert result["steps"] == 2
    saved = json.loads((used / "run.json").read_text())
    assert saved["identity"] != old_identity and saved["identity"] == run_identity(saved["config"])
    assert (used / "notes.txt").read_text() == "mine" and (used / "mine" / "data.bin").read_bytes() == b"\x00"
    assert sorted(p.name for p in (used / "checkpoints").iterdir()) == ["step-000002"]
    rows = [json.loads(line) for line in (used / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]  # one run's metrics, not two interleaved
    assert HyperLoRA.from_pretrained(used / "hyperlora").spec.rank == 2
    assert not [p.name for p in used.iterdir() if p.name.endswith((".tmp", ".old", ".done"))]


def test_resume_refuses_a_changed_setting_by_name_and_applies_an_allowed_one(used, monkeypatch):
    before = _snapshot(used)
    with monkeypatch.context() as patch:
        _no_loading(patch)
        with pytest.raises(ValueError, match=r"lora\.rank \(4 -> 2\).*trainer\.seed \(0 -> 1\)"):
            run(compose_config(_tiny(used, "trainer.resume=true", "lora.rank=2", "trainer.seed=1")))
    assert _snapshot(used) == before
    result = run(compose_config(_tiny(used, "trainer.resume=true", "trainer.max_steps=3")))  # a longer run: allowed
    assert result["steps"] == 3
    saved = json.loads((used / "run.json").read_text())
    assert saved["config"]["trainer"]["max_steps"] == 3 and saved["created"] == json.loads(
        before["run.json"])["created"]


def test_resuming_a_finished_run_keeps_its_final_loss(finished_run, used):
    final = json.loads((used / "final_metrics.json").read_text())
    result = run(compose_config(_tiny(used, "trainer.resume=true")))
    assert result["steps"] == 2 and result["final_loss"] == final["final_loss"] == finished_run[1]["final_loss"]
    assert json.loads((used / "final_metrics.json").read_text())["final_loss"] == final["final_loss"]
    # Without final_metrics.json, the loss logged at that step.
    (used / "final_metrics.json").unlink()
    logged = [json.loads(line) for line in (used / "metrics.jsonl").read_text().splitlines()][-1]
    assert run(compose_config(_tiny(used, "trainer.resume=true")))["final_loss"] == logged["loss"]


def test_a_run_that_made_nothing_is_replaced_without_flags(tmp_path):
    # A typo in model.path fails after run.json was written; the corrected command starts afresh.
    out = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="no_model_here"):
        run(compose_config(_tiny(out, f"model.path={tmp_path / 'no_model_here'}")))
    assert (out / "run.json").is_file()
    assert run(compose_config(_tiny(out)))["steps"] == 2


def test_leftovers_of_crashed_saves_are_recovered_at_start(used, tmp_path):
    from hyperlora.train import open_run_folder

    # A kill between a replace's renames: the complete new hyperlora/ waits as .done, the target is missing.
    (used / "hyperlora").rename(used / ".hyperlora.abcdefgh.done")
    (used / "checkpoints" / ".step-000004.abcdefgh.tmp").mkdir()  # a checkpoint being written
    (used / "checkpoints" / ".step-000004.abcdefgh.tmp" / "half").write_text("x")
    (used / ".final_metrics.json.abcd_123.tmp").write_text("{")  # an atomic_write_text cut short
    config = json.loads((used / "run.json").read_text())["config"]
    open_run_folder(used, config, resume=True).release()
    assert (used / "hyperlora" / "hyperlora_config.json").is_file()
    assert sorted(p.name for p in used.iterdir()) == sorted(
        [".lock", "checkpoints", "final_metrics.json", "hyperlora", "metrics.jsonl", "run.json"])
    assert [p.name for p in (used / "checkpoints").iterdir()] == ["step-000002"]


def test_the_run_holds_its_folder_locked(tmp_path, monkeypatch):
    from hyperlora.run_lock import LockedError, RunLock
    from hyperlora.trainer import Trainer

    out = tmp_path / "run"
    seen = []
    fit = Trainer.fit

    def fit_and_probe(self):
        with pytest.raises(LockedError, match=f"pid {os.getpid()}"):
            RunLock(out).acquire()
        seen.append(True)
        return fit(self)

    monkeypatch.setattr(Trainer, "fit", fit_and_probe)
    run(compose_config(_tiny(out)))
    assert seen == [True]
    RunLock(out).acquire().release()  # released when the run ends


def test_a_second_process_gets_one_line_naming_the_holder(tmp_path):
    from hyperlora.run_lock import RunLock

    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with RunLock(out):  # this process holds the folder, as a running training would
        done = subprocess.run([sys.executable, "-m", "hyperlora.cli", "train", *_tiny(out)], env=env,
                              capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert f"pid {os.getpid()}" in lines[0] and "in use by another hyperlora process" in lines[0]
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing written beside the lock
