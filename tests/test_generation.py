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
