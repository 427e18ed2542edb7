"""``hyperlora selfcheck``: a tiny run passes, and a bad number is one line before any model is built."""

from __future__ import annotations

import pytest

from hyperlora import cli, selfcheck


def test_selfcheck_passes_on_one_family(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["selfcheck", "--families", "llama", "--rows", "2", "--rank", "2"]) == 0
    assert "every row matches its own merged model" in capsys.readouterr().out


@pytest.mark.parametrize(("args", "words"), [
    (["--rows", "0"], ["--rows", "positive integer", "got 0"]),
    (["--rows", "-1"], ["--rows", "got -1"]),
    (["--rank", "0"], ["--rank", "positive integer"]),
    (["--seed", "-1"], ["--seed", "non-negative"]),
    (["--seed", str(2**64)], ["--seed", "2**64"]),
])
def test_bad_numbers_are_one_line(args: list[str], words: list[str], capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(selfcheck, "check_family", lambda *_: pytest.fail("a model was built before refusing"))
    assert cli.main(["selfcheck", *args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("hyperlora selfcheck: error:") and "Traceback" not in err
    assert all(w in err for w in words), err
