"""The log throttle: a burst goes through, the rest is held back and reported with the next line."""

from __future__ import annotations

from services.ingest.throttle import Throttle


def test_a_burst_is_logged_then_held_back_until_the_window_ends() -> None:
    throttle = Throttle(burst=2, window=10.0)
    assert [throttle.admit(0.0), throttle.admit(1.0), throttle.admit(2.0), throttle.admit(9.9)] == [0, 0, None, None]
    assert throttle.admit(10.0) == 2, "the first line of the next window says how many were not logged"
    assert throttle.admit(10.1) == 0
    assert throttle.admit(10.2) is None
