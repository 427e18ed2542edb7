"""The pool checks both built-in suites run on each kind of instruction."""

from __future__ import annotations

import pytest

from hyperlora.data.suites import check_pools


def test_usable_pools_pass() -> None:
    check_pools("type 'x'", ["a", "b"], 2, [1, 2], [3])
    check_pools("type 'x'", ["a", "b"], 2, [], [])


@pytest.mark.parametrize("phrasings, train, heldout, words", [
    (["a"], [], [], "at least 2 phrasings, got 1"),
    (["a", "b"], [1], [], "both train and held-out"),
    (["a", "b"], [1, 2], [2, 3], "held-out parameter values [2] are also train values"),
])
def test_unusable_pools_are_named(phrasings: list[str], train: list[int], heldout: list[int], words: str) -> None:
    with pytest.raises(ValueError, match=r"^type 'x'") as err:
        check_pools("type 'x'", phrasings, 2, train, heldout)
    assert words in str(err.value)
