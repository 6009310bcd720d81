"""bench/top10.py's split of receive -> key at the XADD, whose time only the stream id's millisecond tells."""

from __future__ import annotations

import pytest

from bench.top10 import split_at_xadd

RECV_US = 1_800_000_000_123_700


@pytest.mark.parametrize("xadd_after_us", [1, 299, 300, 301, 999, 1_000, 4_321])
def test_each_leg_is_an_upper_bound_and_never_negative(xadd_after_us: int) -> None:
    xadd_us = RECV_US + xadd_after_us
    updated_us = xadd_us + 1_500
    to_xadd, to_key = split_at_xadd(RECV_US, xadd_us // 1000, updated_us)
    assert 0 < xadd_after_us < to_xadd <= xadd_after_us + 1_000
    assert 1_500 <= to_key < 1_500 + 1_000


def test_an_xadd_early_in_the_receive_millisecond_is_not_negative() -> None:
    # Received at .700 of a millisecond, written to the stream at .900 of the same one: the stream id's
    # millisecond starts before the receive, which the old `ms * 1000 - recv_us` printed as -700 us.
    assert split_at_xadd(RECV_US, RECV_US // 1000, RECV_US + 2_000) == (300, 2_700)
