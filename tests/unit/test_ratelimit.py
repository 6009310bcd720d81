"""The rate-limited log: a burst goes through, the rest is held back and reported with the next line."""

from __future__ import annotations

from services.core.ratelimit import LogLimit


def test_a_burst_goes_through_then_the_next_window_says_how_many_were_held() -> None:
    limit = LogLimit(burst=2, window=10.0)
    assert [limit.admit(0.0), limit.admit(1.0), limit.admit(2.0), limit.admit(9.9)] == [0, 0, None, None]
    assert limit.admit(10.0) == 2, "the first line of the next window says how many were not logged"
    assert limit.admit(10.1) == 0
    assert limit.admit(10.2) is None


def test_one_line_per_window_counts_everything_in_between() -> None:
    limit = LogLimit(burst=1, window=10.0)
    assert limit.admit(0.0) == 0
    assert [limit.admit(now) for now in (1.0, 5.0, 9.9)] == [None, None, None]
    assert limit.admit(10.0) == 3
    assert limit.admit(12.0) is None
    assert limit.admit(100.0) == 1
