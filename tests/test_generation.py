"""``hyperlora generate`` and the refusals shared by the use-it commands.

The central check: a ``--batch`` of rows with different prompts (one generate
call, a different adapter per row) gives what each row gives run alone.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from checkpoint_fixture import PROMPTS, build_checkpoint

from hyperlora import cli
from hyperlora.generation import generate_records
from hyperlora.model import HyperLoRA

INPUTS = ["abc def", "hello there", "x"]  # different lengths: rows are left-padded
NEW = ["--max-new-tokens", "6", "--min-new-tokens", "6", "--device", "cpu"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("generate")
    base, ckpt = build_checkpoint(root, "llama")
    other_base, _ = build_checkpoint(root, "gpt2")
    return {"base": base, "ckpt": ckpt, "other_base": other_base, "root": root}


def _jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(args)
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code: int, err: str) -> None:
    assert code != 0
    assert err.count("\n") == 1 and err.startswith("hyperlora "), err
    assert "Traceback" not in err


def test_mixed_prompt_batch_equals_one_prompt_runs(dirs: dict[str, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    batch = _jsonl(tmp_path / "batch.jsonl", [{"prompt": p, "input": x} for p, x in zip(PROMPTS, INPUTS)])
    out_file = tmp_path / "out.jsonl"
    code, stdout, _ = _run(["generate", "--checkpoint", str(dirs["ckpt"]), "--batch", str(batch),
                            "--out", str(out_file), *NEW], capsys)
    assert code == 0 and stdout == ""  # --out: nothing on stdout
    mixed = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [(r["prompt"], r["input"]) for r in mixed] == list(zip(PROMPTS, INPUTS))
    for row in mixed:
        code, stdout, _ = _run(["generate", "--checkpoint", str(dirs["ckpt"]), "--prompt", row["prompt"],
                                "--input", row["input"], *NEW], capsys)
        assert code == 0
        assert json.loads(stdout) == row
    # The rows really differ per prompt: the same input under each prompt's adapter.
    hyper = HyperLoRA.from_pretrained(dirs["ckpt"])
    same_input = generate_records(hyper, PROMPTS, [INPUTS[0]] * 3, max_new_tokens=6, min_new_tokens=6)
    assert len({r["output"] for r in same_input}) > 1
    # The Python helper agrees with the command line.
    assert generate_records(hyper, PROMPTS, INPUTS, batch_size=2, max_new_tokens=6, min_new_tokens=6) == mixed


def test_malformed_lines_are_reported_and_good_lines_still_run(dirs: dict[str, Path], tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    batch = _jsonl(tmp_path / "mixed.jsonl", [
        {"prompt": PROMPTS[0], "input": "ab"},
        "{not json",
        {"prompt": PROMPTS[1]},
        {"prompt": "  ", "input": "cd"},
        {"prompt": PROMPTS[2], "input": "ef"},
    ])
    code, stdout, err = _run(["generate", "--checkpoint", str(dirs["ckpt"]), "--batch", str(batch), *NEW], capsys)
    assert code == 1
    reported = err.strip().splitlines()
    assert [line.split(": ")[0] for line in reported] == [f"{batch}:{n}" for n in (2, 3, 4)]
    assert "Traceback" not in err
    assert [json.loads(line)["input"] for line in stdout.splitlines()] == ["ab", "ef"]


def test_compare_sampling_and_beams(dirs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    common = ["generate", "--checkpoint", str(dirs["ckpt"]), "--prompt", PROMPTS[0], "--input", INPUTS[1], *NEW]
    code, stdout, _ = _run([*common, "--compare"], capsys)
    row = json.loads(stdout)
    assert code == 0 and set(row) == {"prompt", "input", "output", "base_with_prompt", "base_without_prompt"}
    sampled = [_run([*common, "--do-sample", "--top-k", "20", "--temperature", "1.5", "--seed", "3"], capsys)[1]
               for _ in range(2)]
    assert sampled[0] == sampled[1]  # --seed makes sampling repeatable
    code, stdout, _ = _run([*common, "--num-beams", "2"], capsys)
    assert code == 0 and len(stdout.splitlines()) == 1


def test_missing_checkpoint_in_a_real_process(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hyperlora.cli", "generate", "--checkpoint", str(tmp_path / "nowhere"),
         "--prompt", "Be brief.", "--input", "hi"],
        capture_output=True, text=True, timeout=120,
    )
    _one_line_error(result.returncode, result.stderr)
    assert "does not exist" in result.stderr


def test_checkpoint_for_another_base_model(dirs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    for job in (["generate", "--input", "hi"], ["inspect"], ["export", "--out", str(dirs["root"] / "x")]):
        code, _, err = _run([job[0], "--checkpoint", str(dirs["ckpt"]), "--base-model", str(dirs["other_base"]),
                             "--prompt", PROMPTS[0], *job[1:]], capsys)
        _one_line_error(code, err)
        assert "another student" in err


@pytest.mark.parametrize("case", ["empty prompt", "missing batch file", "no --input", "batch and prompt",
                                  "missing base model"])
def test_bad_input_is_one_line(case: str, dirs: dict[str, Path], tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = ["generate", "--checkpoint", str(dirs["ckpt"])]
    args = {
        "empty prompt": [*ckpt, "--prompt", " ", "--input", "hi"],
        "missing batch file": [*ckpt, "--batch", str(tmp_path / "none.jsonl")],
        "no --input": [*ckpt, "--prompt", "Be brief."],
        "batch and prompt": [*ckpt, "--batch", "x.jsonl", "--prompt", "Be brief.", "--input", "hi"],
        "missing base model": [*ckpt, "--prompt", "Be brief.", "--input", "hi", "--base-model", str(tmp_path / "no")],
    }[case]
    code, stdout, err = _run(args, capsys)
    _one_line_error(code, err)
    assert stdout == ""


def test_static_cache_generates_what_the_dynamic_cache_does(dirs: dict[str, Path], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """``--static-cache`` (inputs padded to a multiple of 64 tokens; on CUDA a compiled decoding step)
    gives the default's outputs for every row, adapted and base alike."""
    import torch
    import transformers

    sizes: list[int] = []  # the static caches generate made: one per call, sized for the padded width
    original = transformers.StaticCache.__init__

    def spy(self: object, *args: object, **kwargs: object) -> None:
        sizes.append(int(kwargs["max_cache_len"]))
        original(self, *args, **kwargs)

    monkeypatch.setattr(transformers.StaticCache, "__init__", spy)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    batch = _jsonl(tmp_path / "batch.jsonl", [{"prompt": p, "input": x} for p, x in zip(PROMPTS, INPUTS)])
    outputs = []
    for extra in ([], ["--static-cache"]):
        out_file = tmp_path / f"out{len(extra)}.jsonl"
        code, _, _ = _run(["generate", "--checkpoint", str(dirs["ckpt"]), "--batch", str(batch), "--compare",
                           "--out", str(out_file), "--max-new-tokens", "6", "--min-new-tokens", "6",
                           "--device", device, *extra], capsys)
        assert code == 0
        outputs.append([json.loads(line) for line in out_file.read_text().splitlines()])
    assert outputs[1] == outputs[0]
    # Only the second run made static caches, one per generate call (adapted, base with and without the
    # prompt), all of one size: every call's inputs were padded to 64 tokens, room for the new ones too.
    assert len(sizes) == 3 and len(set(sizes)) == 1 and 64 <= sizes[0] <= 64 + 6
    # The rows differ from each other and from the base: the comparison is not between empty outputs.
    assert len({row["output"] for row in outputs[0]}) > 1
    assert any(row["output"] != row["base_without_prompt"] for row in outputs[0])


# -- issue 14: bad options and paths are refused in one line, before any model loads ---------------------------


@pytest.fixture
def no_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading fails the test: a refusal must come before the (slow) load."""
    import hyperlora.loading

    def refuse(*_: object) -> None:
        raise AssertionError("the model was loaded before the bad option was refused")

    monkeypatch.setattr(hyperlora.loading, "load_from_args", refuse)


def _refused(code: int, stdout: str, err: str, *words: str) -> None:
    """Exit 2, one stderr line naming the problem (``words``), nothing on stdout."""
    assert code == 2, err
    _one_line_error(code, err)
    assert stdout == ""
    assert all(w in err for w in words), err


@pytest.mark.parametrize(("option", "words"), [
    (["--num-beams", "0"], ["--num-beams", "positive integer", "got 0"]),
    (["--num-return-sequences", "0"], ["--num-return-sequences", "positive integer"]),
    (["--max-new-tokens", "0"], ["--max-new-tokens", "positive integer"]),
    (["--max-new-tokens", "-3"], ["--max-new-tokens", "got -3"]),
    (["--batch-size", "0"], ["--batch-size", "positive integer"]),
    (["--min-new-tokens", "-1"], ["--min-new-tokens", ">= 0"]),
    (["--min-new-tokens", "9", "--max-new-tokens", "3"], ["--min-new-tokens 9 exceeds --max-new-tokens 3"]),
    (["--top-p", "2"], ["--top-p", "(0, 1]", "got 2.0"]),
    (["--top-p", "0"], ["--top-p", "(0, 1]"]),
    (["--top-p", "nan"], ["--top-p", "(0, 1]"]),
    (["--top-k", "-1"], ["--top-k", ">= 0"]),
    (["--temperature", "0"], ["--temperature", "> 0"]),
    (["--temperature", "-1"], ["--temperature", "> 0"]),
    (["--temperature", "inf"], ["--temperature", "finite"]),
    (["--temperature", "nan"], ["--temperature", "finite"]),
    (["--repetition-penalty", "0"], ["--repetition-penalty", "> 0"]),
    (["--num-return-sequences", "3"], ["--num-return-sequences 3", "--num-beams 3", "--do-sample"]),
    (["--seed", "-1"], ["--seed", "non-negative"]),
])
def test_bad_generation_option_is_one_line_before_loading(option: list[str], words: list[str], dirs: dict[str, Path],
                                                          capsys: pytest.CaptureFixture[str], no_load: None) -> None:
    code, stdout, err = _run(["generate", "--checkpoint", str(dirs["ckpt"]), "--prompt", PROMPTS[0], "--input", "hi",
                              "--device", "cpu", *option], capsys)
    _refused(code, stdout, err, *words)


def test_python_api_refuses_bad_settings_by_keyword(dirs: dict[str, Path]) -> None:
    hyper = HyperLoRA.from_pretrained(dirs["ckpt"])
    for bad in ({"num_beams": 0}, {"top_p": 2.0}, {"temperature": 0.0}, {"max_new_tokens": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            generate_records(hyper, PROMPTS[:1], ["hi"], **bad)


def test_out_is_not_overwritten_without_force(dirs: dict[str, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "results.jsonl"
    out.write_text("precious\n")
    args = ["generate", "--checkpoint", str(dirs["ckpt"]), "--prompt", PROMPTS[0], "--input", "hi", "--out", str(out),
            *NEW]
    import hyperlora.loading

    real_load = hyperlora.loading.load_from_args
    monkeypatch.setattr(hyperlora.loading, "load_from_args", lambda *_: pytest.fail("loaded before refusing"))
    code, stdout, err = _run(args, capsys)
    _refused(code, stdout, err, str(out), "already exists", "--force")
    assert out.read_text() == "precious\n"
    code, stdout, err = _run([*args[:-len(NEW)], "--out", str(tmp_path), *NEW], capsys)  # a folder: never
    _refused(code, stdout, err, "is a folder")
    monkeypatch.setattr(hyperlora.loading, "load_from_args", real_load)
    code, _, _ = _run([*args, "--force"], capsys)
    assert code == 0 and json.loads(out.read_text())["prompt"] == PROMPTS[0]


def test_batch_with_a_bad_byte_and_a_truncated_line_reports_each_line(dirs: dict[str, Path], tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    good = [json.dumps({"prompt": p, "input": x}).encode() for p, x in zip(PROMPTS, ["ab", "cd", "ef"])]
    batch = tmp_path / "batch.jsonl"
    batch.write_bytes(b"\n".join([good[0], b'{"prompt": "Be brief.", "input": "caf\xe9"}', good[1],
                                  b'{"prompt": "Be brief.", "input": "x"', good[2]]) + b"\n")
    out = tmp_path / "out.jsonl"
    code, stdout, err = _run(["generate", "--checkpoint", str(dirs["ckpt"]), "--batch", str(batch), "--out", str(out),
                              *NEW], capsys)
    assert code == 1 and stdout == "" and "Traceback" not in err  # a partial batch: exit 1, the good lines ran
    lines = err.strip().splitlines()
    assert len(lines) == 2, err
    assert lines[0].startswith(f"{batch}:2: not valid UTF-8") and "0xe9" in lines[0]
    assert lines[1].startswith(f"{batch}:4: not valid JSON") and "column 37" in lines[1] and "truncated" in lines[1]
    assert [json.loads(line)["input"] for line in out.read_text().splitlines()] == ["ab", "cd", "ef"]


def test_num_return_sequences_gives_one_row_per_sequence(dirs: dict[str, Path],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = _run(["generate", "--checkpoint", str(dirs["ckpt"]), "--prompt", PROMPTS[0], "--input", "hi",
                            "--num-beams", "2", "--num-return-sequences", "2", "--compare", *NEW], capsys)
    rows = [json.loads(line) for line in stdout.splitlines()]
    assert code == 0 and len(rows) == 2 and all(r["input"] == "hi" and "base_with_prompt" in r for r in rows)


# == issue 14 (checkpoint loading): --device, the base model and damaged checkpoints, refused in one line ==========


def _generate(ckpt: Path, *extra: str) -> list[str]:
    return ["generate", "--checkpoint", str(ckpt), "--prompt", PROMPTS[0], "--input", INPUTS[1],
            "--max-new-tokens", "6", "--min-new-tokens", "6", *extra]


def test_device_cuda_without_a_gpu_is_one_line(dirs: dict[str, Path], capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, stdout, err = _run(_generate(dirs["ckpt"], "--device", "cuda"), capsys)
    _one_line_error(code, err)
    assert "no CUDA device here; use --device cpu" in err and stdout == ""


@pytest.mark.parametrize("device", ["tpu9", "gpu", "cuda:x", "cpu:3"])
def test_unknown_device_is_one_line_listing_the_valid_forms(device: str, dirs: dict[str, Path],
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, err = _run(_generate(dirs["ckpt"], "--device", device), capsys)
    _one_line_error(code, err)
    assert f"--device {device!r} is not a device; use one of cpu, cuda, cuda:N or mps" in err and stdout == ""


def test_checkpoint_finds_its_base_model_from_another_working_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The base model is recorded by absolute path: from another folder, even one where the same relative
    path names another model of the same shape, the checkpoint runs on the model it was trained on."""
    monkeypatch.chdir(tmp_path)
    _, ckpt = build_checkpoint(Path("run"), "llama", seed=0)  # base recorded from the relative "run/base-llama"
    capsys.readouterr()  # transformers' progress bars of the save
    code, here, err = _run(_generate(ckpt.resolve(), "--device", "cpu"), capsys)
    assert code == 0 and err == "", err
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    build_checkpoint(Path("run"), "llama", seed=1)  # elsewhere/run/base-llama: same shape, other weights
    capsys.readouterr()
    code, there, err = _run(_generate(tmp_path / "run" / "ckpt-llama", "--device", "cpu"), capsys)
    assert code == 0 and err == "", err
    assert json.loads(there) == json.loads(here)
    # The tiny random models both generate "": check which model was loaded, by its weights.
    from hyperlora.fingerprint import model_fingerprint
    from hyperlora.toy.models import tiny_model

    loaded = HyperLoRA.from_pretrained(tmp_path / "run" / "ckpt-llama").student
    assert model_fingerprint(loaded) == model_fingerprint(tiny_model("llama", seed=0))


def test_base_model_of_the_same_shape_is_refused_unless_allowed(dirs: dict[str, Path], tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    other, _ = build_checkpoint(tmp_path, "llama", seed=1)  # the registry cannot tell it apart: the fingerprint can
    capsys.readouterr()
    args = _generate(dirs["ckpt"], "--device", "cpu", "--base-model", str(other))
    code, stdout, err = _run(args, capsys)
    _one_line_error(code, err)
    assert f"was trained on base model {dirs['base'].resolve()} (fingerprint" in err
    assert f"the model loaded from {other} has fingerprint" in err and "--allow-other-base-model" in err
    code, stdout, err = _run([*args, "--allow-other-base-model"], capsys)
    assert code == 0 and json.loads(stdout)["prompt"] == PROMPTS[0]
    assert err.count("\n") == 1 and err.startswith("hyperlora: warning:") and "fingerprint" in err
    # The right model moved elsewhere: --base-model finds it, and it verifies.
    moved = tmp_path / "moved"
    shutil.copytree(dirs["base"], moved)
    code, stdout, err = _run(_generate(dirs["ckpt"], "--device", "cpu", "--base-model", str(moved)), capsys)
    assert code == 0 and err == ""


def _damage(ckpt: Path, case: str) -> None:
    config = ckpt / "hyperlora_config.json"
    meta = json.loads(config.read_text())
    if case == "flipped weights":
        weights = ckpt / "hypernet.safetensors"
        data = bytearray(weights.read_bytes())
        data[-5000:-1000] = bytes(b ^ 0xFF for b in data[-5000:-1000])
        weights.write_bytes(bytes(data))
        return
    if case == "format_version":
        meta["format_version"] = "2"
    elif case == "lora.alpha":
        meta["config"]["lora"]["alpha"] = "x"
    elif case == "config":
        meta["config"] = []
    elif case == "lora":
        meta["config"]["lora"] = None
    elif case == "lora.rank":
        meta["config"]["lora"]["rank"] = 8  # well typed, but no longer the size of the saved weights
    config.write_text(json.dumps(meta))


@pytest.mark.parametrize(("case", "words"), [
    ("flipped weights", ["hypernet.safetensors is damaged"]),
    ("format_version", ["is inconsistent", "format_version must be a positive integer"]),
    ("lora.alpha", ["is inconsistent", "lora.alpha must be a number"]),
    ("config", ["is inconsistent", "hyperlora config must be a mapping"]),
    ("lora", ["is inconsistent", "lora must be a mapping"]),
    ("lora.rank", ["is inconsistent", "does not fit its weights"]),
])
def test_damaged_or_edited_checkpoint_is_one_line(case: str, words: list[str], dirs: dict[str, Path],
                                                  tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(dirs["ckpt"], ckpt)
    _damage(ckpt, case)
    code, stdout, err = _run(_generate(ckpt, "--device", "cpu"), capsys)
    _one_line_error(code, err)
    assert stdout == "" and all(w in err for w in words), err


def test_a_cuda_index_past_the_last_gpu_is_one_line(dirs: dict[str, Path], capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    code, stdout, err = _run(_generate(dirs["ckpt"], "--device", "cuda:3"), capsys)
    _one_line_error(code, err)
    assert "--device cuda:3: this machine has 1 CUDA device(s), cuda:0 to cuda:0" in err and stdout == ""
