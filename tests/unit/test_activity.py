"""The activity signal's decisions, without Redis; then its commands against a real Redis."""

from __future__ import annotations

import redis

from services.core.activity import (
    ACTIVITY_MAXLEN,
    READ_SIGNALS,
    ActivityReads,
    signal_command,
    signalled_symbols,
)
from services.core.keys import Keys

KEY = "p:activity:l2"
SERVED = {"A", "B", "C"}


def xread(*entries: tuple[bytes, list[bytes]]) -> list[tuple[bytes, list[tuple[bytes, list[bytes]]]]]:
    """A raw XREAD reply of the activity stream."""
    return [(KEY.encode(), list(entries))] if entries else []


def learnt(reads: ActivityReads, last: bytes = b"5-0") -> ActivityReads:
    """`reads` after its first call: the end of the stream learnt, the full read done at time 0."""
    reads.signals([(last, [b"s", b"A"])])
    reads.read_done(reads.plan(SERVED, 0.0), 0.0)
    return reads


def test_a_signal_names_the_symbols_once_sorted() -> None:
    assert signal_command(KEY, ["B", "A", "B"]) == ("XADD", KEY, "MAXLEN", "~", ACTIVITY_MAXLEN, "*", "s", "A B")


def test_the_first_read_learns_where_the_stream_ends_and_reads_everything() -> None:
    reads = ActivityReads(KEY, full_read_interval=1.0)
    assert reads.learning and reads.signal_read(100) == ("XREVRANGE", KEY, "+", "-", "COUNT", 1)
    assert reads.plan(SERVED, 0.0).full and reads.plan(SERVED, 0.0).symbols == ["A", "B", "C"]
    learnt(reads)
    # The signal already there is covered by the full read: only later ones are read.
    assert not reads.learning and reads.signal_read(100) == ("XREAD", "COUNT", READ_SIGNALS, "BLOCK", 100,
                                                              "STREAMS", KEY, "5-0")
    assert reads.signal_read(None) == ("XREAD", "COUNT", READ_SIGNALS, "STREAMS", KEY, "5-0")
    assert reads.plan(SERVED, 0.5).symbols == []


def test_an_empty_stream_is_read_from_its_beginning() -> None:
    reads = ActivityReads(KEY)
    reads.signals([])
    assert reads.signal_read(None)[-1] == "0-0"


def test_signalled_symbols_are_read_once_served_ones_only() -> None:
    reads = learnt(ActivityReads(KEY, full_read_interval=1.0))
    reads.signals(xread((b"6-0", [b"s", b"B OTHER"]), (b"7-0", [b"s", b"C"])))
    assert reads.signal_read(None)[-1] == "7-0"
    plan = reads.plan(SERVED, 0.5)
    assert plan == plan.__class__(["B", "C"], False)
    reads.read_done(plan, 0.5, filled=["C"])
    assert reads.plan(SERVED, 0.6).symbols == ["C"], "a read that came back full is read again at once"
    reads.read_done(reads.plan(SERVED, 0.6), 0.6)
    assert reads.plan(SERVED, 0.7).symbols == []


def test_everything_is_read_every_interval_after_a_failure_and_after_a_full_reply() -> None:
    reads = learnt(ActivityReads(KEY, full_read_interval=1.0))
    assert reads.plan(SERVED, 1.0).full, "signals are hints: every stream is read every interval"
    reads.read_done(reads.plan(SERVED, 1.0), 1.0)
    reads.read_failed()
    assert reads.plan(SERVED, 1.1).full, "a failed read may have missed signals"
    reads.read_done(reads.plan(SERVED, 1.1), 1.1)
    reads.signals(xread(*[(f"{8 + number}-0".encode(), [b"s", b"A"]) for number in range(READ_SIGNALS)]))
    assert reads.plan(SERVED, 1.2).full, "a full reply may have skipped signals"


def test_a_new_stream_is_read_unsignalled_and_a_lost_position_is_learnt_again() -> None:
    reads = learnt(ActivityReads(KEY, full_read_interval=1.0))
    reads.wake(["D"])
    assert reads.plan({*SERVED, "D"}, 0.5).symbols == ["D"]
    reads.forget_position()
    assert reads.learning and reads.plan(SERVED, 0.5).full


def test_names_that_are_no_symbol_are_dropped() -> None:
    last, symbols = signalled_symbols([(b"1-0", [b"s", b"OK bad\x1b[0m " + b"X" * 40 + b" A.B"]),
                                       (b"2-0", [b"other", b"Z"])])
    assert (last, symbols) == ("2-0", {"OK", "A.B"})


def test_the_commands_run_on_a_real_redis(redis_url: str, key_prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    key = Keys(key_prefix).activity("ob10")
    reads = ActivityReads(key)
    reads.signals(client.execute_command(*reads.signal_read(None)))  # type: ignore[no-untyped-call]
    client.execute_command(*signal_command(key, ["XBTUSD", "ETHUSD"]))  # type: ignore[no-untyped-call]
    reads.read_done(reads.plan({"XBTUSD", "ETHUSD", "SOLUSD"}, 0.0), 0.0)
    reads.signals(client.execute_command(*reads.signal_read(10)))  # type: ignore[no-untyped-call]
    assert reads.plan({"XBTUSD", "ETHUSD", "SOLUSD"}, 0.1).symbols == ["ETHUSD", "XBTUSD"]
    assert Keys(key_prefix).stream_activity(Keys(key_prefix).ob10_stream("XBTUSD")) == key
    assert Keys(key_prefix).stream_activity(Keys(key_prefix).table_stream("trade", "XBTUSD")) is None
