"""The command line: bad input and the machine's refusals give one line and exit 2; bugs keep their traceback."""

from __future__ import annotations

import errno
import sys
import types

import pytest

from hyperlora import cli


def _command(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    """Register ``hyperlora boom``, whose entry point raises ``error``."""
    module = types.ModuleType("hyperlora_test_boom")

    def main(argv: list[str]) -> int:
        raise error

    module.main = main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(cli.COMMANDS, "boom", (module.__name__, "raises"))


@pytest.mark.parametrize("error, words", [
    (OSError(errno.ENOSPC, "No space left on device", "/data/out/model.safetensors"),
     "no space left on the device writing /data/out/model.safetensors; free some space"),
    (PermissionError(errno.EACCES, "Permission denied", "/ro/out"), "no permission to write /ro/out; choose a folder"),
    (OSError(errno.EROFS, "Read-only file system", "/ro/out"), "no permission to write /ro/out"),
    (ValueError("--top-p must be in (0, 1], got 2.\n"), "--top-p must be in (0, 1], got 2."),
    (FileExistsError("out exists; pass --force"), "out exists; pass --force"),
])
def test_user_errors_are_one_line_and_exit_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                             error: BaseException, words: str) -> None:
    _command(monkeypatch, error)
    assert cli.main(["boom"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("hyperlora boom: error: ") and words in err


def test_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    _command(monkeypatch, ZeroDivisionError("division by zero"))
    with pytest.raises(ZeroDivisionError):
        cli.main(["boom"])


def test_an_unknown_command_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["trian"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'trian'" in err and "train" in err and "generate" in err
