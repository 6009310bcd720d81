"""The status pipeline's replies taken apart by name, without Redis."""

from __future__ import annotations

import pytest
from redis.exceptions import ResponseError

from services.status.reads import HEAD, PER_SYMBOL, split_reads


def test_each_symbols_replies_are_named_and_failures_read_as_none() -> None:
    missing = ResponseError("ERR no such key")
    a = [[3, 5, "1-0", "3-0", "s1"], [{"name": "l2builder"}], missing, missing, "inst", "7", 4500,
         ["1", None, None, None, None, None, None]]
    b = [missing, missing, [1, 1, "9-0", "9-0", None], [], None, None, -2, [None] * 7]
    reads = split_reads([[1_700_000_000, 250_000], [("inst", 1.0)], *a, *b], ["A", "B"])
    assert reads.redis_now_ms == 1_700_000_000_250 and reads.members == [("inst", 1.0)]
    first, second = reads.symbols
    assert first.l2_summary == a[0] and first.l2_groups == a[1] and first.ob10_summary is None
    assert (first.lease, first.epoch, first.lease_pttl, first.top10) == ("inst", "7", 4500, a[7])
    assert second.l2_summary is None and second.ob10_summary == b[2] and second.ob10_groups == []
    assert second.lease is None and second.lease_pttl == -2


def test_a_failed_clock_raises_and_a_short_reply_is_refused() -> None:
    down = ResponseError("NOPERM")
    with pytest.raises(ResponseError, match="NOPERM"):
        split_reads([down, []], [])
    with pytest.raises(ValueError):
        split_reads([[1, 0]] + [None] * (HEAD - 1 + PER_SYMBOL - 1), ["A"])
