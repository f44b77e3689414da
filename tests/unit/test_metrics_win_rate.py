"""Tests for harness.metrics.win_rate with hand-computed values."""

import pytest

from harness.metrics.win_rate import win_points


def test_win_tie_loss_are_worth_one_half_zero():
    # Pairs: 3>1 win, 1=1 tie, 2<4 loss, 5>0 win.
    assert win_points([3.0, 1.0, 2.0, 5.0], [1.0, 1.0, 4.0, 0.0]) == [1.0, 0.5, 0.0, 1.0]


def test_pairs_are_compared_index_wise_not_as_pools():
    # Each candidate loses to its own baseline although it beats the other baseline: comparing pools (or sorted
    # lists) would not give two losses.
    assert win_points([1.0, 3.0], [2.0, 4.0]) == [0.0, 0.0]


def test_swapping_candidate_and_other_gives_the_complement():
    candidate = [0.1, 0.9, 0.5, 0.5, -2.0]
    other = [0.3, 0.2, 0.5, 0.4, -3.0]
    forward, backward = win_points(candidate, other), win_points(other, candidate)
    assert forward == [0.0, 1.0, 0.5, 1.0, 1.0]
    assert [a + b for a, b in zip(forward, backward)] == [1.0] * 5


def test_different_lengths_raise_naming_both():
    with pytest.raises(ValueError, match="3 candidate and 2 other"):
        win_points([1.0, 2.0, 3.0], [1.0, 2.0])


def test_empty_lists_give_no_points():
    assert win_points([], []) == []
