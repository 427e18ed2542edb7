"""The distillation trainer on a tiny llama: schedule, data stream, learning, resume, checkpoints, guards.

The student is the tiny llama with a larger init scale (0.2 instead of 0.02): with the
default init its next-token distributions are nearly uniform whatever the context, so
the teacher (the same model with the prompt in context) and the student would agree
before any training and the KL would be ~1e-4, too small to show learning.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

import hyperlora.trainer as trainer_module
from hyperlora.batches import BatchStream
from hyperlora.config import HyperLoRAConfig
from hyperlora.data.records import Record
from hyperlora.toy.tasks import build_split
from hyperlora.encoder import EncoderConfig
from hyperlora.distill import DistillConfig, adapter_l2_penalty, distill_forward
from hyperlora.generator import GeneratorConfig
from hyperlora.lora import LoRASpec
from hyperlora.metrics import MetricsLogger
from hyperlora.model import HyperLoRA
from hyperlora.toy.models import tiny_config
from hyperlora.toy.tokenizer import char_tokenizer
from hyperlora.schedule import warmup_cosine
from hyperlora.state_io import load_state
from hyperlora.trainer import STATE_NAME, STATE_STEM, Trainer, TrainerConfig

MAX_LENGTH = 256


def records(split: str, n: int, seed: int = 0) -> list[Record]:
    return [Record(e.prompt, e.input, e.output) for e in build_split(split, n, seed)]


TRAIN = records("train", 64)
# The same instructions as TRAIN[:16] (shared task stream), on inputs train never uses.
EVAL = {"train_unseen_inputs": records("train_unseen_inputs", 16)}


def sharp_student(seed: int = 0, init: float = 0.2) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = tiny_config("llama")
    config.initializer_range = init
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()


def make_hyper(student: torch.nn.Module | None = None, seed: int = 0, spec: LoRASpec | None = None) -> HyperLoRA:
    config = HyperLoRAConfig(
        lora=spec or LoRASpec(4, 8.0),
        encoder=EncoderConfig(d_ctx=32, d_model=32, n_heads=4, max_length=128),
        generator=GeneratorConfig(d_emb=16, d_hidden=64),
    )
    torch.manual_seed(seed)  # the hypernetwork's initial weights
    return HyperLoRA(student if student is not None else sharp_student(), char_tokenizer(), config)


DISTILL_FIELDS = {f.name for f in dataclasses.fields(DistillConfig)}


def make_trainer(out_dir, hyper: HyperLoRA | None = None, eval_sets=None, logger=None, **overrides) -> Trainer:
    """A trainer on TRAIN; ``overrides`` are TrainerConfig or DistillConfig fields."""
    options = dict(out_dir=str(out_dir), max_steps=8, batch_size=8, lr=1e-3, warmup_steps=4, eval_every=0,
                   save_every=0, progress=False, seed=0)
    options.update({k: v for k, v in overrides.items() if k not in DISTILL_FIELDS})
    distill = DistillConfig(**{k: v for k, v in overrides.items() if k in DISTILL_FIELDS})
    return Trainer(hyper or make_hyper(), TRAIN, TrainerConfig(**options), eval_sets, logger=logger,
                   max_length=MAX_LENGTH, distill=distill)


def hypernet_state(hyper: HyperLoRA) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in hyper.hypernet.state_dict().items()}


def assert_states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# -- schedule --------------------------------------------------------------------


def test_warmup_cosine_values():
    f = warmup_cosine(warmup=4, total=14, min_ratio=0.1)
    assert [f(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert f(4) == pytest.approx(1.0)  # cosine starts at its top
    assert f(9) == pytest.approx(0.55)  # halfway: 0.1 + 0.9 * 0.5
    assert f(8) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.4)))
    assert f(14) == pytest.approx(0.1)
    assert f(30) == pytest.approx(0.1)  # clamped after the end
    g = warmup_cosine(warmup=0, total=10, min_ratio=0.0)
    assert g(0) == pytest.approx(1.0) and g(5) == pytest.approx(0.5) and g(10) == pytest.approx(0.0)


# -- the data stream -------------------------------------------------------------


def test_batch_stream_is_deterministic_and_covers_each_epoch():
    items = list(range(20))
    a = BatchStream(items, 4, seed=3)
    b = BatchStream(items, 4, seed=3)
    batches_a = [a.next() for _ in range(12)]
    assert batches_a == [b.next() for _ in range(12)]
    # One epoch = 5 batches without repetition; the next epoch is another permutation.
    assert sorted(sum(batches_a[:5], [])) == items
    assert sorted(sum(batches_a[5:10], [])) == items
    assert sum(batches_a[:5], []) != sum(batches_a[5:10], [])
    assert batches_a != [BatchStream(items, 4, seed=4).next() for _ in range(12)]


def test_batch_stream_drops_the_incomplete_tail():
    stream = BatchStream(list(range(10)), 4, seed=0)
    first_epoch = [stream.next() for _ in range(2)]
    assert stream.state_dict() == {"epoch": 0, "position": 8}
    stream.next()  # the 2 left over are dropped: a new epoch starts
    assert stream.state_dict() == {"epoch": 1, "position": 4}
    assert len(set(sum(first_epoch, []))) == 8


def test_batch_stream_resumes_with_the_same_batches():
    items = list(range(13))
    full = BatchStream(items, 3, seed=5)
    reference = [full.next() for _ in range(15)]
    partial = BatchStream(items, 3, seed=5)
    for _ in range(6):  # into the second epoch (4 batches each)
        partial.next()
    state = dict(partial.state_dict())
    resumed = BatchStream(items, 3, seed=5)
    resumed.load_state_dict(state)
    assert [resumed.next() for _ in range(9)] == reference[6:]


def test_batch_stream_ranks_split_the_global_batch():
    items = [f"x{i}" for i in range(24)]
    single = BatchStream(items, 6, seed=1)
    ranks = [BatchStream(items, 6, seed=1, rank=r, world=2) for r in range(2)]
    for _ in range(10):
        whole = single.next()
        r0, r1 = (s.next() for s in ranks)
        assert len(r0) == len(r1) == 3
        assert not set(r0) & set(r1)
        assert sorted(r0 + r1) == sorted(whole)
        assert r0 == whole[0::2] and r1 == whole[1::2]


@pytest.mark.parametrize("batch_size, world, n", [(3, 2, 10), (1, 2, 10), (0, 1, 10), (8, 1, 7), (4, 4, 3)])
def test_batch_stream_bad_sizes_raise(batch_size, world, n):
    with pytest.raises(ValueError):
        BatchStream(list(range(n)), batch_size, rank=0, world=world)


def test_trainer_config_refuses_bad_values():
    for bad in (dict(max_steps=0), dict(batch_size=0), dict(lr=0.0), dict(bf16="maybe"), dict(keep_last=0)):
        with pytest.raises(ValueError):
            TrainerConfig(**bad)


BAD_TRAINER_VALUES = [
    ("max_steps", 2.5), ("max_steps", True), ("max_steps", "3"), ("batch_size", 8.0), ("accumulation", 0),
    ("lr", float("inf")), ("lr", float("nan")), ("lr", -1e-3), ("lr", "abc"), ("weight_decay", -0.01),
    ("weight_decay", float("inf")), ("warmup_steps", -1), ("warmup_steps", 1.5), ("min_lr_ratio", 1.5),
    ("min_lr_ratio", -0.1), ("grad_clip", -1.0), ("grad_clip", float("nan")), ("save_every", -1),
    ("eval_every", -5), ("eval_examples", 0), ("keep_last", 1.0), ("seed", 0.5), ("seed", -3), ("max_loss_ratio", 0.5),
    ("resume", "no"), ("resume", 1), ("progress", "yes"), ("gradient_checkpointing", None),
]


@pytest.mark.parametrize("key, value", BAD_TRAINER_VALUES)
def test_trainer_config_refuses_each_bad_number_in_one_line(key, value):
    # Before: max_steps=2.5 ran 3 steps, grad_clip=-1 climbed the loss, save_every=-1 saved every step,
    # resume="no" resumed (a non-empty string).
    with pytest.raises(ValueError, match=f"trainer.{key}") as err:
        TrainerConfig(**{key: value})
    assert "\n" not in str(err.value)


def test_trainer_config_accepts_the_edges():
    config = TrainerConfig(grad_clip=0, save_every=0, eval_every=0, warmup_steps=0, min_lr_ratio=1, lr=1,
                           weight_decay=0, max_loss_ratio=0, seed=0)
    assert config.grad_clip == 0 and config.lr == 1
    TrainerConfig(min_lr_ratio=0.0, resume=True, progress=False)
    for bad in (dict(loss="mse"), dict(temperature=0.0), dict(loss_chunk=0), dict(ce_weight=-1.0),
                dict(adapter_l2=-0.1), dict(adapter_l2=float("nan"))):
        with pytest.raises(ValueError, match=f"distill.{next(iter(bad))}"):
            DistillConfig(**bad)


# -- learning --------------------------------------------------------------------


def test_training_lowers_heldout_kl(tmp_path):
    trainer = make_trainer(tmp_path, eval_sets=EVAL, max_steps=30, warmup_steps=3, lr=1e-3, eval_examples=16)
    before = trainer.evaluate(with_exact_match=False)["train_unseen_inputs/kl"]
    history = trainer.fit()
    after = trainer.evaluate(with_exact_match=False)["train_unseen_inputs/kl"]
    assert len(history) == 30 and trainer.step == 30
    assert before > 0.1, "the teacher must differ from the bare student for this test to mean anything"
    # Seen settings: after/before ≈ 0.55-0.65 over trainer seeds 0-3; 0.8 leaves margin.
    assert after < 0.8 * before, (before, after)
    # The training loss fell too (mean of the last 5 steps vs the first 5).
    first = sum(h["loss"] for h in history[:5]) / 5
    last = sum(h["loss"] for h in history[-5:]) / 5
    assert last < first


# -- one reference run, inspected by several tests -----------------------------------


@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
    """8 steps, a checkpoint every 2, keep the last 2, metrics to metrics.jsonl."""
    out = tmp_path_factory.mktemp("run_a")
    hyper = make_hyper()
    student_before = {k: v.clone() for k, v in hyper.student.state_dict().items()}
    initial = hypernet_state(hyper)
    trainer = make_trainer(out, hyper, logger=MetricsLogger(out / "metrics.jsonl"), save_every=2, keep_last=2)
    history = trainer.fit()
    return dict(out=out, hyper=hyper, trainer=trainer, history=history, initial=initial,
                final=hypernet_state(hyper), student_before=student_before)


def test_run_a_trains_the_hypernetwork_only(run_a):
    hyper = run_a["hyper"]
    student_after = hyper.student.state_dict()
    assert run_a["student_before"].keys() == student_after.keys()
    for key, value in run_a["student_before"].items():
        assert torch.equal(value, student_after[key]), key  # bit-identical
    assert all(p.grad is None for p in hyper.student.parameters())
    changed = [k for k in run_a["initial"] if not torch.equal(run_a["initial"][k], run_a["final"][k])]
    assert len(changed) > len(run_a["initial"]) // 2, "most hypernetwork tensors should have moved"
    assert all(math.isfinite(h["loss"]) and h["loss"] > 0 for h in run_a["history"])


def test_metrics_jsonl_has_one_line_per_step(run_a):
    lines = (run_a["out"] / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["step"] for r in rows] == list(range(1, 9))
    for row, step in zip(rows, run_a["history"]):
        assert row["loss"] == pytest.approx(step["loss"], rel=1e-12)
        assert {"loss", "kl", "grad_norm", "lr", "time"} <= set(row)


def test_logged_lr_follows_the_schedule(run_a):
    f = warmup_cosine(4, 8, 0.1)
    # After step s the scheduler has stepped s times: the logged lr is the one for the next step.
    assert [h["lr"] for h in run_a["history"]] == pytest.approx([1e-3 * f(s) for s in range(1, 9)])


def test_keep_last_leaves_only_the_newest_checkpoints(run_a):
    folder = run_a["out"] / "checkpoints"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["step-000006", "step-000008"]  # no temporary (dot) folders either
    assert [p.name for p in run_a["trainer"].checkpoints()] == names
    latest = folder / "step-000008"
    assert (latest / STATE_NAME).is_file()
    state = load_state(latest / STATE_STEM)
    assert state["step"] == 8 and state["stream"] == {"epoch": 0, "position": 64}
    loaded = HyperLoRA.from_pretrained(latest / "hyperlora", student=run_a["hyper"].student,
                                       tokenizer=run_a["hyper"].tokenizer)
    assert_states_equal(hypernet_state(loaded), run_a["final"])


def test_resume_continues_with_identical_losses(run_a, tmp_path):
    a_losses = [h["loss"] for h in run_a["history"]]
    # B, part 1: the same run stopped after 4 steps (warm-up is 4 steps, so its schedule agrees with A's).
    first = make_trainer(tmp_path, save_every=4, max_steps=4)
    b_first = [h["loss"] for h in first.fit()]
    assert b_first == pytest.approx(a_losses[:4], rel=1e-6, abs=0)
    assert [p.name for p in first.checkpoints()] == ["step-000004"]
    # Mess up the global RNG, as a new process would start from another state.
    torch.manual_seed(1234)
    # B, part 2: a new process: new student, new HyperLoRA, new Trainer, resume=True.
    second = make_trainer(tmp_path, make_hyper(seed=99), save_every=4, max_steps=8, resume=True)
    assert second.step == 4
    history = second.fit()
    assert [h["step"] for h in history] == [5, 6, 7, 8]
    torch.testing.assert_close(torch.tensor([h["loss"] for h in history], dtype=torch.float64),
                               torch.tensor(a_losses[4:], dtype=torch.float64), rtol=1e-5, atol=0)
    final = hypernet_state(second.hyper)
    for key, value in run_a["final"].items():
        torch.testing.assert_close(final[key], value, rtol=1e-5, atol=1e-7)


class _Payload:
    """Unpickling this writes a file: what an attacker's ``trainer_state.pt`` would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_resume_never_unpickles_a_planted_file(tmp_path):
    first = make_trainer(tmp_path, save_every=2, max_steps=2)
    first.fit()
    latest = first.checkpoints()[-1]
    assert not list(latest.glob("*.pt")), "trainer state must not be a pickle"
    marker = tmp_path / "payload_ran"
    torch.save({"x": _Payload(str(marker))}, latest / "trainer_state.pt")  # planted beside the real state
    resumed = make_trainer(tmp_path, make_hyper(seed=5), save_every=2, max_steps=2, resume=True)
    assert resumed.step == 2 and not marker.exists()
    torch.save({"x": _Payload(str(marker))}, latest / "trainer_state.pt")
    (latest / STATE_NAME).unlink()  # no JSON state: the folder is no complete checkpoint, so nothing is read
    fresh = make_trainer(tmp_path, make_hyper(seed=5), save_every=2, max_steps=2, resume=True)
    assert fresh.step == 0 and not marker.exists()


def test_checkpoints_are_ordered_by_step_number_past_six_digits(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=1)
    for step in (999_999, 1_000_000, 12):
        folder = tmp_path / "checkpoints" / f"step-{step:06d}"
        folder.mkdir(parents=True)
        (folder / STATE_NAME).write_text("{}")
    assert [p.name for p in trainer.checkpoints()] == ["step-000012", "step-999999", "step-1000000"]


def test_resume_applies_a_new_lr_and_schedule(tmp_path):
    first = make_trainer(tmp_path, save_every=4, max_steps=4)
    first.fit()
    second = make_trainer(tmp_path, make_hyper(seed=3), save_every=4, max_steps=8, lr=1e-4, resume=True)
    f = warmup_cosine(4, 8, 0.1)  # the new max_steps stretches the cosine too
    assert second.scheduler.base_lrs == [1e-4]
    assert second.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4 * f(4))
    history = second.fit()
    assert [h["lr"] for h in history] == pytest.approx([1e-4 * f(s) for s in range(5, 9)])


@pytest.mark.parametrize("change, key", [
    (dict(seed=1), "trainer.seed"), (dict(batch_size=4), "trainer.batch_size"),
    (dict(weight_decay=0.1), "trainer.weight_decay"), (dict(temperature=2.0), "distill.temperature"),
])
def test_resume_refuses_changed_settings_by_name(tmp_path, change, key):
    make_trainer(tmp_path, save_every=2, max_steps=2).fit()
    with pytest.raises(ValueError, match=f"Cannot resume .*{key}") as err:
        make_trainer(tmp_path, make_hyper(seed=5), max_steps=4, resume=True, **change)
    assert "\n" not in str(err.value)


def test_resume_with_another_lora_rank_names_the_key(tmp_path):
    make_trainer(tmp_path, save_every=2, max_steps=2).fit()
    with pytest.raises(ValueError, match=r"lora\.rank \(4 -> 8\)") as err:
        make_trainer(tmp_path, make_hyper(spec=LoRASpec(8, 8.0)), max_steps=4, resume=True)
    assert "\n" not in str(err.value)


def _truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_resume_falls_back_past_a_truncated_checkpoint(run_a, tmp_path, capsys):
    first = make_trainer(tmp_path, save_every=2, max_steps=4, keep_last=3)
    first.fit()
    assert [p.name for p in first.checkpoints()] == ["step-000002", "step-000004"]
    _truncate(tmp_path / "checkpoints" / "step-000004" / "trainer_state.safetensors")
    capsys.readouterr()
    torch.manual_seed(1234)
    second = make_trainer(tmp_path, make_hyper(seed=99), save_every=2, max_steps=8, resume=True)
    warned = capsys.readouterr().err.strip().splitlines()
    assert len(warned) == 1 and "step-000004" in warned[0]
    assert second.step == 2
    history = second.fit()
    torch.testing.assert_close(torch.tensor([h["loss"] for h in history], dtype=torch.float64),
                               torch.tensor([h["loss"] for h in run_a["history"][2:]], dtype=torch.float64),
                               rtol=1e-5, atol=0)
    assert [p.name for p in second.checkpoints()] == ["step-000006", "step-000008"]


def test_resume_with_every_checkpoint_damaged_is_refused(tmp_path, capsys):
    make_trainer(tmp_path, save_every=2, max_steps=2).fit()
    _truncate(tmp_path / "checkpoints" / "step-000002" / "trainer_state.safetensors")
    with pytest.raises(ValueError, match="None of the 1 checkpoints"):
        make_trainer(tmp_path, max_steps=4, resume=True)


def test_keep_last_never_deletes_the_checkpoint_just_written(tmp_path, capsys, monkeypatch):
    import shutil

    make_trainer(tmp_path, save_every=1, max_steps=4, keep_last=4).fit()
    folder = tmp_path / "checkpoints"
    shutil.rmtree(folder / "step-000003")
    _truncate(folder / "step-000004" / "trainer_state.safetensors")  # newer than what the resume will write next
    resumed = make_trainer(tmp_path, make_hyper(seed=5), save_every=1, max_steps=4, keep_last=1, resume=True)
    assert resumed.step == 2
    real = Trainer.save_checkpoint
    seen = []

    def recording(self):
        path = real(self)
        seen.append((path.name, (path / STATE_NAME).is_file(), sorted(p.name for p in folder.iterdir())))
        return path

    monkeypatch.setattr(Trainer, "save_checkpoint", recording)
    resumed.fit()
    # Before: keep_last counted the damaged step-4 and deleted step-3 right after writing it.
    assert seen[0] == ("step-000003", True, ["step-000003", "step-000004"])
    assert seen[1] == ("step-000004", True, ["step-000004"])
    assert load_state(folder / "step-000004" / STATE_STEM)["step"] == 4


def test_resume_without_checkpoint_is_a_fresh_run(tmp_path):
    trainer = make_trainer(tmp_path, resume=True, max_steps=2)
    assert trainer.step == 0
    assert len(trainer.fit()) == 2
    assert [p.name for p in trainer.checkpoints()] == ["step-000002"]  # the final weights are always saved


# -- guards ----------------------------------------------------------------------


def test_non_finite_loss_stops_with_the_step(tmp_path, monkeypatch):
    real = trainer_module.distillation_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            out = {k: v * float("nan") for k, v in out.items()}
        return out

    monkeypatch.setattr(trainer_module, "distillation_loss", poisoned)
    trainer = make_trainer(tmp_path, max_steps=5)
    trainer.train_step()
    trainer.train_step()
    after_two = hypernet_state(trainer.hyper)
    with pytest.raises(FloatingPointError, match="at step 3"):
        trainer.fit()
    assert trainer.step == 2
    assert_states_equal(hypernet_state(trainer.hyper), after_two)  # the bad step did not touch the weights


def _poison_loss(monkeypatch, at_call: int, factor: float) -> None:
    """Multiply every loss term of the ``at_call``-th call of ``distillation_loss`` by ``factor``."""
    real = trainer_module.distillation_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        calls["n"] += 1
        return {k: v * factor for k, v in out.items()} if calls["n"] == at_call else out

    monkeypatch.setattr(trainer_module, "distillation_loss", poisoned)


def test_stop_message_is_true_and_its_advice_works(tmp_path, monkeypatch):
    _poison_loss(monkeypatch, 3, float("nan"))
    trainer = make_trainer(tmp_path, max_steps=6, save_every=2)
    with pytest.raises(FloatingPointError) as err:
        trainer.fit()
    message = str(err.value)
    assert "\n" not in message
    assert "at step 3" in message and "step-000002" in message and "is intact" in message
    assert "trainer.resume=true trainer.lr=" in message
    assert [p.name for p in trainer.checkpoints()] == ["step-000002"]  # nothing after the bad step was saved
    # The advice: resume with a lower lr. It takes effect (it used to come back from the checkpoint).
    monkeypatch.undo()
    resumed = make_trainer(tmp_path, make_hyper(seed=7), max_steps=6, save_every=2, lr=1e-4, resume=True)
    assert resumed.step == 2 and resumed.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4 * 0.75)
    history = resumed.fit()
    assert [h["step"] for h in history] == [3, 4, 5, 6] and all(math.isfinite(h["loss"]) for h in history)


def test_first_step_without_checkpoint_says_so(tmp_path, monkeypatch):
    _poison_loss(monkeypatch, 1, float("inf"))
    with pytest.raises(FloatingPointError, match="at step 1: .*no checkpoint was saved yet"):
        make_trainer(tmp_path, max_steps=3).fit()
    assert not (tmp_path / "checkpoints").exists()


def test_non_finite_gradient_stops_before_the_step(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=5)
    trainer.train_step()
    trainer.train_step()
    after_two = hypernet_state(trainer.hyper)
    param = trainer.hyper.trainable_parameters()[0]
    param.register_hook(lambda grad: grad * float("nan"))  # the loss stays finite, one gradient does not
    with pytest.raises(FloatingPointError, match="gradient norm .* at step 3"):
        trainer.fit()
    assert trainer.step == 2
    assert_states_equal(hypernet_state(trainer.hyper), after_two)
    assert not (tmp_path / "checkpoints").exists()


def test_an_overflowing_lr_never_leaves_non_finite_weights(tmp_path):
    # lr=inf is refused by the config; a finite lr whose update overflows float32 is caught after the step.
    with pytest.raises(ValueError, match="trainer.lr"):
        TrainerConfig(lr=float("inf"))
    trainer = make_trainer(tmp_path, max_steps=3, lr=1e39, warmup_steps=0)
    initial = hypernet_state(trainer.hyper)
    with pytest.raises(FloatingPointError, match="optimiser step overflows .* at step 1"):
        trainer.fit()
    assert_states_equal(hypernet_state(trainer.hyper), initial)  # restored, also the tensors torch had updated
    assert not (tmp_path / "checkpoints").exists()


def test_non_finite_weights_after_the_step_are_undone(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path / "a", max_steps=3, save_every=1)
    trainer.train_step()
    trainer.save_checkpoint()
    after_one = hypernet_state(trainer.hyper)
    real = trainer.optimizer.step

    def overflowing(*args, **kwargs):
        out = real(*args, **kwargs)
        with torch.no_grad():
            trainer.hyper.trainable_parameters()[-1].add_(float("inf"))
        return out

    monkeypatch.setattr(trainer.optimizer, "step", overflowing)
    with pytest.raises(FloatingPointError,
                       match="Non-finite weights after the optimiser step .* at step 2: .*step-000001"):
        trainer.fit()
    assert_states_equal(hypernet_state(trainer.hyper), after_one)
    assert [p.name for p in trainer.checkpoints()] == ["step-000001"]


def test_save_refuses_non_finite_weights(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=2)
    trainer.train_step()
    trainer.save_checkpoint()
    with torch.no_grad():
        trainer.hyper.trainable_parameters()[0].view(-1)[0] = float("nan")
    with pytest.raises(FloatingPointError, match="Non-finite weights .* nothing was saved; .*step-000001"):
        trainer.save_checkpoint()
    assert [p.name for p in trainer.checkpoints()] == ["step-000001"]
    state = load_state(trainer.checkpoints()[0] / STATE_STEM)
    assert state["step"] == 1


def test_an_exploding_loss_stops_the_run(tmp_path, monkeypatch):
    # A loss 1000 times the first one (0.34 -> 125 was seen with a diverging lr) stops the run before its step.
    _poison_loss(monkeypatch, 4, 1000.0)
    trainer = make_trainer(tmp_path, max_steps=6)
    with pytest.raises(FloatingPointError, match="max_loss_ratio=100 .* at step 4"):
        trainer.fit()
    assert trainer.step == 3
    _poison_loss(monkeypatch, 4, 1000.0)
    assert len(make_trainer(tmp_path / "off", max_steps=6, max_loss_ratio=0).fit()) == 6  # 0 = no check
    # A tiny first loss (a nearly uniform student: KL ~1e-4) does not make a rise to 1e-2 an explosion.
    _poison_loss(monkeypatch, 1, 1e-4)
    history = make_trainer(tmp_path / "tiny_first", max_steps=3).fit()
    assert history[1]["loss"] > 100 * history[0]["loss"] and len(history) == 3


def test_grad_clip_zero_means_no_clipping(tmp_path):
    off = make_trainer(tmp_path / "off", max_steps=2, grad_clip=0.0)
    huge = make_trainer(tmp_path / "huge", max_steps=2, grad_clip=1e9)
    a, b = off.train_step(), huge.train_step()
    assert a == b and a["grad_norm"] > 0
    assert_states_equal(hypernet_state(off.hyper), hypernet_state(huge.hyper))


# -- gradient checkpointing ----------------------------------------------------------


def _one_step(tmp_path, checkpointing: bool):
    trainer = make_trainer(tmp_path, gradient_checkpointing=checkpointing, max_steps=2, lr=1e-2, warmup_steps=1)
    metrics = trainer.train_step()
    return metrics, hypernet_state(trainer.hyper)


def test_gradient_checkpointing_gives_the_same_step(tmp_path):
    plain, plain_state = _one_step(tmp_path / "plain", False)
    ckpt, ckpt_state = _one_step(tmp_path / "ckpt", True)
    assert ckpt["loss"] == pytest.approx(plain["loss"], rel=1e-6)
    assert ckpt["grad_norm"] == pytest.approx(plain["grad_norm"], rel=1e-5)
    for key, value in plain_state.items():
        torch.testing.assert_close(ckpt_state[key], value, rtol=1e-5, atol=1e-6)


def test_gradient_checkpointing_actually_recomputes(tmp_path):
    """With the flag on, backward must replay the student's layers (else no memory is saved).

    A q_proj call counter: the teacher's forward (no grad) and the student's forward give 2
    calls per step; checkpointing replays the student's layer in backward: 3.
    """
    counts = {}
    for flag in (False, True):
        trainer = make_trainer(tmp_path / str(flag), gradient_checkpointing=flag, max_steps=2)
        calls = [0]
        q_proj = trainer.hyper.student.model.layers[0].self_attn.q_proj
        handle = q_proj.register_forward_pre_hook(lambda module, args: calls.__setitem__(0, calls[0] + 1))
        trainer.train_step()
        handle.remove()
        counts[flag] = calls[0]
    assert counts[False] == 2
    assert counts[True] == 3, (
        "trainer.gradient_checkpointing=True does not recompute anything: HyperLoRA.train() puts the student in "
        "eval mode and transformers only checkpoints layers in training mode."
    )


def test_lora_dropout_is_applied_in_training(tmp_path):
    """LoRASpec.dropout must act on the training forward (and not on the eval forward)."""
    hyper = make_hyper(spec=LoRASpec(4, 8.0, dropout=0.5))
    trainer = make_trainer(tmp_path, hyper, max_steps=3, lr=1e-2, warmup_steps=1)
    for _ in range(2):  # move B off zero so the adapters contribute
        trainer.train_step()
    batch = trainer.collator(TRAIN[:4])
    hyper.eval()
    with torch.no_grad():
        e1 = distill_forward(hyper, hyper.student, batch, trainer.device).student
        e2 = distill_forward(hyper, hyper.student, batch, trainer.device).student
    assert torch.equal(e1, e2)
    hyper.train()  # what Trainer.train_step does
    torch.manual_seed(0)
    t1 = distill_forward(hyper, hyper.student, batch, trainer.device).student
    t2 = distill_forward(hyper, hyper.student, batch, trainer.device).student
    assert not torch.equal(t1, t2), (
        "LoRA dropout is inert in training: HyperLoRA.train() keeps the student's modules in eval mode and the "
        "injector applies dropout only when module.training."
    )


def test_frozen_student_gets_no_gradients_even_with_ce(tmp_path):
    hyper = make_hyper()
    before = copy.deepcopy(hyper.student.state_dict())
    trainer = make_trainer(tmp_path, hyper, max_steps=2, ce_weight=0.5)
    metrics = trainer.train_step()
    assert "ce" in metrics and metrics["loss"] == pytest.approx(metrics["kl"] + 0.5 * metrics["ce"], rel=1e-6)
    assert all(p.grad is None and not p.requires_grad for p in hyper.student.parameters())
    for key, value in before.items():
        assert torch.equal(value, hyper.student.state_dict()[key])


# -- the L2 penalty on the generated adapters (distill.adapter_l2) ------------------------


def test_adapter_l2_default_gives_exactly_the_kl_step(tmp_path):
    plain = make_trainer(tmp_path / "a", max_steps=2).train_step()
    zero = make_trainer(tmp_path / "b", max_steps=2, adapter_l2=0.0).train_step()
    assert zero == plain and "adapter_l2" not in zero and zero["loss"] == zero["kl"]


def test_adapter_l2_reaches_the_generator_and_shrinks_the_adapters(tmp_path):
    probe = [r.prompt for r in TRAIN[:8]]

    def after_steps(adapter_l2: float, steps: int) -> tuple[float, dict[str, float]]:
        hyper = make_hyper()  # the same initial weights for both runs (seeded)
        trainer = make_trainer(tmp_path / str(adapter_l2), hyper, max_steps=steps, lr=1e-2, warmup_steps=0,
                               adapter_l2=adapter_l2)
        for _ in range(steps):
            metrics = trainer.train_step()
        with torch.no_grad():
            return adapter_l2_penalty(hyper.adapters(probe)).item(), metrics

    # The penalty alone has a gradient on the generator's parameters (B starts at zero, A does not).
    hyper = make_hyper()
    adapter_l2_penalty(hyper.hypernet(probe)).backward()
    grads = [p.grad for p in hyper.hypernet.generator.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)

    plain, _ = after_steps(0.0, 2)
    penalised, metrics = after_steps(10.0, 2)
    assert metrics["adapter_l2"] > 0
    assert metrics["loss"] == pytest.approx(metrics["kl"] + 10.0 * metrics["adapter_l2"], rel=1e-6)
    assert penalised < 0.9 * plain, (penalised, plain)


# -- the prompt-agnostic baseline -------------------------------------------------------


def test_prompt_agnostic_training_never_sees_the_prompts(tmp_path):
    # The trainer calls the hypernetwork module directly (and DDP wraps that module), so
    # the baseline's one-prompt substitution must happen there, in training as in use.
    hyper = make_hyper()
    hyper.config.prompt_agnostic = True
    hyper.hypernet.prompt_agnostic = True
    seen: list[list[str]] = []
    original = hyper.hypernet.encoder.forward
    hyper.hypernet.encoder.forward = lambda prompts: seen.append(list(prompts)) or original(prompts)
    make_trainer(tmp_path, hyper, max_steps=3).fit()
    assert len(seen) == 3 and all(p == ["Do the task."] * 8 for p in seen)
    # After training, two different prompts still get one and the same adapter.
    with torch.no_grad():
        adapters = hyper.hypernet([TRAIN[0].prompt, TRAIN[5].prompt])
    for A, B in adapters.values():
        assert torch.equal(A[0], A[1]) and torch.equal(B[0], B[1])
