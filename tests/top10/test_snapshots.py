"""The batch planner: newest valid snapshot per symbol, every entry acknowledged, bad ones reported."""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from services.core.entries import encode_entry, encode_gap
from services.core.keys import Keys
from services.top10.snapshots import BatchPlan, RawEntry, plan_batch, stream_symbol
from tests.top10.feed import BASE_US, snapshot

STREAM = b"p:ob10:{XBTUSD}"
TOLERANCE_US = 5_000_000
RECEIVED_US = BASE_US + 60_000_000
"""A receive time a minute after the exchange times of the snapshots: real frames arrive after they are stamped."""


def entry(frame: str, seq: int = 1, recv_us: int = RECEIVED_US, session: str = "s1") -> dict[bytes, bytes]:
    fields = encode_entry(frame, "orderBook10", "update", session, seq, recv_us)
    return {name.encode(): value.encode() for name, value in fields.items()}


def plan_of(streams: Sequence[tuple[bytes, str, Sequence[RawEntry]]]) -> BatchPlan:
    return plan_batch(streams, TOLERANCE_US)


def test_newest_by_exchange_time_wins_whatever_the_stream_order() -> None:
    newest, older, oldest = snapshot("XBTUSD", 30), snapshot("XBTUSD", 20), snapshot("XBTUSD", 10)
    entries: list[RawEntry] = [(b"5-0", entry(oldest.frame())),
                               (b"6-0", entry(newest.frame(), recv_us=RECEIVED_US + 99)),
                               (b"7-0", entry(older.frame()))]
    plan = plan_of([(STREAM, "XBTUSD", entries)])
    write = plan.writes["XBTUSD"]
    assert write.order == (BASE_US + 30_000, 6, 0)
    assert (write.stream_id, write.recv_us, write.snapshot.bids) == ("6-0", RECEIVED_US + 99, newest.bids)
    assert (write.session, write.future) == ("s1", False)
    assert plan.superseded == 2
    assert plan.acks == {STREAM: [b"5-0", b"6-0", b"7-0"]}
    assert plan.entries == 3


def test_stream_id_breaks_a_tie_of_exchange_time() -> None:
    first, second = snapshot("XBTUSD", 10, mid=1000), snapshot("XBTUSD", 10, mid=2000)
    plan = plan_of([(STREAM, "XBTUSD", [(b"9-1", entry(first.frame())), (b"9-2", entry(second.frame()))])])
    assert plan.writes["XBTUSD"].stream_id == "9-2"
    assert plan.writes["XBTUSD"].snapshot.bids == second.bids


def test_each_symbol_gets_its_own_write() -> None:
    xbt, eth = snapshot("XBTUSD", 1), snapshot("ETHUSD", 2)
    plan = plan_of([(STREAM, "XBTUSD", [(b"1-0", entry(xbt.frame()))]),
                       (b"p:ob10:{ETHUSD}", "ETHUSD", [(b"1-0", entry(eth.frame()))])])
    assert sorted(plan.writes) == ["ETHUSD", "XBTUSD"]
    assert plan.superseded == 0


def test_bad_entries_are_rejected_with_an_excerpt_and_still_acknowledged() -> None:
    good = snapshot("XBTUSD", 5)
    crossed = orjson.loads(snapshot("XBTUSD", 50).frame())
    crossed["data"][0]["bids"][0][0] = 5000
    other_symbol = snapshot("ETHUSD", 60).frame()
    wrong_table = {name.encode(): value.encode()
                   for name, value in encode_entry("{}", "orderBookL2", "update", "s1", 1, 1).items()}
    entries = [
        (b"1-0", entry(good.frame())),
        (b"2-0", entry("not json {" + "x" * 500)),
        (b"3-0", entry(orjson.dumps(crossed).decode())),
        (b"4-0", entry(other_symbol)),
        (b"5-0", wrong_table),
        (b"6-0", {b"frame": b"{}", b"table": b"orderBook10"}),
        (b"7-0", entry('{"info": "Welcome"}')),
        (b"8-0", {b"junk": b"1"}),
    ]
    plan = plan_of([(STREAM, "XBTUSD", entries)])
    assert plan.writes["XBTUSD"].stream_id == "1-0"
    assert [rejection.stream_id for rejection in plan.rejected] == ["2-0", "3-0", "4-0", "5-0", "6-0", "7-0", "8-0"]
    reasons = [rejection.reason for rejection in plan.rejected]
    assert "invalid JSON" in reasons[0]
    assert "crossed" in reasons[1]
    assert "ETHUSD" in reasons[2]
    assert "orderBookL2" in reasons[3]
    assert "action" in reasons[4]
    assert "Welcome" in reasons[5]
    assert plan.rejected[0].excerpt.startswith("not json {xxx") and len(plan.rejected[0].excerpt) < 200
    assert "junk" in plan.rejected[6].excerpt
    assert plan.rejected[0].stream == STREAM.decode()
    assert len(plan.acks[STREAM]) == 8


def test_gaps_empty_frames_and_trimmed_entries_write_nothing() -> None:
    gap = {name.encode(): value.encode()
           for name, value in encode_gap("orderBook10", "s1", 2, 3, "disconnect").items()}
    empty = '{"table": "orderBook10", "action": "partial", "data": [], "filter": {"symbol": "XBTUSD"}}'
    plan = plan_of([(STREAM, "XBTUSD", [(b"1-0", gap), (b"2-0", entry(empty)), (b"3-0", {})])])
    assert plan.writes == {}
    assert (plan.gaps, plan.empty, plan.trimmed, plan.rejected) == (1, 1, [(STREAM.decode(), "3-0")], [])
    assert plan.acks == {STREAM: [b"1-0", b"2-0", b"3-0"]}


def test_the_newest_row_of_a_frame_with_several_rows_is_its_snapshot() -> None:
    early, late = snapshot("XBTUSD", 10), snapshot("XBTUSD", 40, mid=1500)
    rows = [orjson.loads(late.frame())["data"][0], orjson.loads(early.frame())["data"][0]]
    frame = orjson.dumps({"table": "orderBook10", "action": "update", "data": rows}).decode()
    plan = plan_of([(STREAM, "XBTUSD", [(b"3-0", entry(frame))])])
    assert plan.writes["XBTUSD"].snapshot.asks == late.asks
    assert plan.writes["XBTUSD"].order[0] == late.ts_us


def test_a_frame_stamped_beyond_the_tolerance_is_ordered_by_its_receive_time() -> None:
    received_us = BASE_US + 10_000
    future = snapshot("XBTUSD", 10 + TOLERANCE_US // 1000 + 1, mid=9999)
    within = snapshot("XBTUSD", 10 + TOLERANCE_US // 1000, mid=1500)
    far = snapshot("XBTUSD", 2_000_000_000_000)
    plan = plan_of([(STREAM, "XBTUSD", [(b"1-0", entry(future.frame(), recv_us=received_us)),
                                        (b"2-0", entry(far.frame(), recv_us=received_us))])])
    assert [write.stream_id for write in plan.future] == ["1-0", "2-0"], "counted even when superseded"
    write = plan.writes["XBTUSD"]
    assert write.order == (received_us, 2, 0) and write.future
    assert write.snapshot.timestamp == far.timestamp, "the venue's timestamp is kept, only the order changes"
    trusted = plan_of([(STREAM, "XBTUSD", [(b"1-0", entry(within.frame(), recv_us=received_us))])])
    assert trusted.future == [] and trusted.writes["XBTUSD"].order[0] == within.ts_us
    # Ordered by receive time, the future frame loses to a real one stamped after it arrived.
    real = snapshot("XBTUSD", 11)
    mixed = plan_of([(STREAM, "XBTUSD", [(b"1-0", entry(far.frame(), recv_us=received_us)),
                                         (b"2-0", entry(real.frame(), recv_us=received_us + 1000))])])
    assert mixed.writes["XBTUSD"].stream_id == "2-0"


def test_an_entry_whose_session_cannot_name_a_key_is_malformed() -> None:
    good = snapshot("XBTUSD", 5).frame()
    plan = plan_of([(STREAM, "XBTUSD", [(b"1-0", entry(good, session="a b")), (b"2-0", entry(good, session="x" * 65)),
                                        (b"3-0", entry(good, session="\x1b[31m"))])])
    assert plan.writes == {} and len(plan.rejected) == 3
    assert all("invalid session" in rejection.reason for rejection in plan.rejected)


def test_only_the_ob10_stream_of_a_valid_symbol_yields_a_symbol() -> None:
    keys = Keys("p")
    assert stream_symbol(keys, b"p:ob10:{XBTUSD}") == "XBTUSD"
    for stream in (b"p:ob10:{BAD\x1b[0m}", b"p:ob10:{" + b"A" * 33 + b"}", b"p:l2:{XBTUSD}", b"q:ob10:{XBTUSD}",
                   b"p:ob10:XBTUSD", b"p:ob10:{A}{B}", b"p:ob10:{\xff}"):
        assert stream_symbol(keys, stream) is None, stream
