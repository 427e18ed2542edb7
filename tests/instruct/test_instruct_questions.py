"""The built-in request pool: large, distinct, deterministic across processes, cut in two disjoint sides."""

from __future__ import annotations

from hyperlora.instruct.questions import QUESTIONS, TRAIN_QUESTIONS, UNSEEN_QUESTIONS, is_unseen


def test_pool_is_large_and_distinct() -> None:
    assert len(QUESTIONS) == len(set(QUESTIONS)) >= 400
    assert all(q.strip() == q and q[:1].isupper() and q[-1] in ".?" for q in QUESTIONS)
    assert all("{" not in q and "}" not in q for q in QUESTIONS)


def test_train_and_unseen_are_disjoint_and_cover_the_pool() -> None:
    assert not set(TRAIN_QUESTIONS) & set(UNSEEN_QUESTIONS)
    assert sorted(TRAIN_QUESTIONS + UNSEEN_QUESTIONS) == sorted(QUESTIONS)
    assert len(UNSEEN_QUESTIONS) >= 100 and len(TRAIN_QUESTIONS) >= 300
    # The side depends on the text alone, not on where it sits in the pool.
    assert all(is_unseen(q) for q in UNSEEN_QUESTIONS) and not any(is_unseen(q) for q in TRAIN_QUESTIONS)


# Determinism across processes (PYTHONHASHSEED) of the pool and the splits: test_instruct_suite.py, one subprocess for both.
