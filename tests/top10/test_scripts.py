"""The Lua scripts against a real Redis: compare-and-set order, publication, reload, safe consumer removal."""

from __future__ import annotations

import asyncio
import itertools
import time

import redis
from redis.asyncio import Redis

from services.core.entries import EntryError, decode_entry
from services.core.keys import TOP10_GROUP, Keys
from services.top10.scripts import (
    MARK_GAP,
    MARK_STALE,
    REMOVE_CONSUMER,
    STORE_TOP10,
    ScriptCall,
    mark_gap_call,
    mark_stale_call,
    run_pipelined,
    store_top10_call,
)
from services.top10.snapshots import GapMark, Top10Write, read_snapshot
from tests.top10.feed import BASE_US, ChannelListener, cached, snapshot

TOLERANCE_US = 5_000_000
RECEIVED_US = BASE_US + 60_000_000


def write_of(ts_ms: int, stream_id: str, mid: float = 1000.0, session: str = "s") -> Top10Write:
    item = snapshot("XBTUSD", ts_ms, mid)
    fields = {b"frame": item.frame().encode(), b"table": b"orderBook10", b"action": b"update",
              b"session": session.encode(), b"seq": b"1", b"recv_us": str(RECEIVED_US).encode()}
    write = read_snapshot("XBTUSD", decode_entry(stream_id, fields), TOLERANCE_US)
    if write is None:
        raise EntryError("no snapshot")
    return write


LOST = "ingest_lost: session gone has had no liveness key for 3.0 s"


async def store(url: str, key: str, *writes: Top10Write, lost_reason: str | None = None) -> list[int]:
    client = Redis.from_url(url)
    try:
        return await run_pipelined(client, STORE_TOP10, [store_top10_call(key, write, TOLERANCE_US, lost_reason)
                                                         for write in writes])
    finally:
        await client.aclose()


async def mark(url: str, key: str, session: str) -> list[int]:
    client = Redis.from_url(url)
    try:
        return await run_pipelined(client, MARK_STALE, [mark_stale_call(key, "XBTUSD", session, LOST)])
    finally:
        await client.aclose()


def gap_at(stream_id: str, reason: str = "gap: malformed") -> GapMark:
    ms, seq = stream_id.split("-")
    return GapMark("XBTUSD", stream_id, (int(ms), int(seq)), "s", reason)


async def mark_gap(url: str, key: str, gap: GapMark) -> list[int]:
    client = Redis.from_url(url)
    try:
        return await run_pipelined(client, MARK_GAP, [mark_gap_call(key, gap)])
    finally:
        await client.aclose()


def test_a_gap_newer_than_the_snapshot_marks_it_stale_and_only_a_snapshot_after_the_gap_is_live(
        redis_url: str, key_prefix: str) -> None:
    key = Keys(key_prefix).top10("XBTUSD")
    client = redis.Redis.from_url(redis_url)
    assert asyncio.run(mark_gap(redis_url, key, gap_at("1-0"))) == [0], "no key yet: nothing to mark"
    assert not client.exists(key)
    listener = ChannelListener(client, key)
    asyncio.run(store(redis_url, key, write_of(10, "5-0")))
    assert asyncio.run(mark_gap(redis_url, key, gap_at("4-0"))) == [0], "the snapshot is newer than the gap"
    assert asyncio.run(mark_gap(redis_url, key, gap_at("6-0"))) == [1]
    assert asyncio.run(mark_gap(redis_url, key, gap_at("6-0"))) == [0], "a second instance changes nothing"
    assert client.hmget(key, "status", "reason", "gap_id") == [b"stale", b"gap: malformed", b"6-0"]
    # Processed late, a snapshot from before the gap is written (newer exchange time) but not trusted.
    asyncio.run(store(redis_url, key, write_of(20, "5-5")))
    assert client.hmget(key, "status", "stream_id") == [b"stale", b"5-5"]
    assert client.hget(key, "reason") == b"gap: the snapshot is older than the gap 6-0"
    asyncio.run(store(redis_url, key, write_of(30, "7-0")))
    assert client.hmget(key, "status", "reason") == [b"live", b""]
    assert asyncio.run(mark_gap(redis_url, key, gap_at("6-5"))) == [0], "the snapshot after it wins"
    messages = listener.collect(4)
    assert [(message["status"], message["reason"]) for message in messages] == [
        ("live", ""), ("stale", "gap: malformed"), ("stale", "gap: the snapshot is older than the gap 6-0"),
        ("live", "")]
    assert messages[1] == {"symbol": "XBTUSD", "status": "stale", "reason": "gap: malformed", "session": "s",
                           "stream_id": "6-0"}
    listener.close()
    client.delete(key)
    client.set(key, "not a hash")
    assert asyncio.run(mark_gap(redis_url, key, gap_at("9-0"))) == [0]


def test_the_greatest_exchange_time_then_stream_id_wins_in_every_processing_order(
        redis_url: str, key_prefix: str) -> None:
    writes = [write_of(10, "5-0"), write_of(10, "5-1"), write_of(10, "4-9"), write_of(30, "1-0"), write_of(20, "9-0")]
    newest = writes[3]
    orders = list(itertools.permutations(writes))

    async def store_each_order() -> list[list[int]]:
        client = Redis.from_url(redis_url)
        try:
            return [await run_pipelined(client, STORE_TOP10,
                                        [store_top10_call(f"{key_prefix}:top10:P{number}", write, TOLERANCE_US)
                                         for write in order])
                    for number, order in enumerate(orders)]
        finally:
            await client.aclose()

    client = redis.Redis.from_url(redis_url)
    for number, (order, results) in enumerate(zip(orders, asyncio.run(store_each_order()), strict=True)):
        applied = [write for write, result in zip(order, results, strict=True) if result > 0]
        assert applied[-1] is newest
        # Each applied write is newer than the one before: the key only ever moves forward.
        assert [write.order for write in applied] == sorted(write.order for write in applied)
        assert client.hget(f"{key_prefix}:top10:P{number}", "stream_id") == b"1-0"
    assert asyncio.run(store(redis_url, f"{key_prefix}:top10:P0", newest)) == [-1]


def test_the_hash_is_readable_and_each_change_is_published(redis_url: str, key_prefix: str) -> None:
    key = Keys(key_prefix).top10("XBTUSD")
    client = redis.Redis.from_url(redis_url)
    listener = ChannelListener(client, key)
    before_us = time.time_ns() // 1000
    [written_us] = asyncio.run(store(redis_url, key, write_of(20, "7-3", mid=1500)))
    assert asyncio.run(store(redis_url, key, write_of(10, "8-0"))) == [0]
    assert asyncio.run(store(redis_url, key, write_of(20, "7-3", mid=1500))) == [-1]
    value = cached(client, Keys(key_prefix), "XBTUSD")
    expected = snapshot("XBTUSD", 20, mid=1500)
    assert (value["bids"], value["asks"]) == (expected.bids, expected.asks)
    assert (value["timestamp"], value["ts_us"]) == (expected.timestamp, str(expected.ts_us))
    assert (value["stream_id"], value["recv_us"]) == ("7-3", str(RECEIVED_US))
    assert (value["status"], value["reason"], value["session"]) == ("live", "", "s")
    assert before_us - 1_000_000 <= int(value["updated_us"]) <= time.time_ns() // 1000 + 1_000_000
    assert written_us == int(value["updated_us"]), "a write answers the time it stored"
    [later_us] = asyncio.run(store(redis_url, key, write_of(30, "8-1", mid=900)))
    assert later_us >= written_us
    later = snapshot("XBTUSD", 30, mid=900)
    assert listener.collect(2) == [
        {"symbol": "XBTUSD", "bids": expected.bids, "asks": expected.asks, "timestamp": expected.timestamp,
         "stream_id": "7-3", "status": "live", "reason": ""},
        {"symbol": "XBTUSD", "bids": later.bids, "asks": later.asks, "timestamp": later.timestamp, "stream_id": "8-1",
         "status": "live", "reason": ""}]
    listener.close()


def test_a_forgotten_script_is_loaded_again(redis_url: str, key_prefix: str) -> None:
    redis.Redis.from_url(redis_url).script_flush()
    key = f"{key_prefix}:top10:XBTUSD"
    assert all(result > 0 for result in asyncio.run(store(redis_url, key, write_of(1, "1-0"), write_of(2, "2-0"))))


def test_a_cached_value_without_a_stream_id_is_older_than_any_snapshot_of_its_time(
        redis_url: str, key_prefix: str) -> None:
    key = f"{key_prefix}:top10:XBTUSD"
    client = redis.Redis.from_url(redis_url)
    client.hset(key, mapping={"ts_us": str(write_of(10, "1-0").order[0]), "stream_id": "garbage"})
    assert asyncio.run(store(redis_url, key, write_of(10, "1-0")))[0] > 0


def test_a_key_of_another_type_is_replaced_rather_than_blocking_the_batch(redis_url: str, key_prefix: str) -> None:
    key = Keys(key_prefix).top10("XBTUSD")
    client = redis.Redis.from_url(redis_url)
    client.set(key, "left by something else")
    assert asyncio.run(store(redis_url, key, write_of(10, "1-0")))[0] > 0
    assert client.type(key) == b"hash" and client.hget(key, "stream_id") == b"1-0"


def test_consumer_removal_spares_members_holding_entries_or_recently_active(redis_url: str, key_prefix: str) -> None:
    stream = Keys(key_prefix).ob10_stream("XBTUSD")
    client = redis.Redis.from_url(redis_url)
    client.xgroup_create(stream, TOP10_GROUP, id="0", mkstream=True)
    client.xadd(stream, {"a": "1"})
    client.xreadgroup(TOP10_GROUP, "holder", {stream: ">"})
    client.xgroup_createconsumer(stream, TOP10_GROUP, "idle")
    time.sleep(0.05)

    async def remove(*requests: tuple[str, int]) -> list[int]:
        async_client = Redis.from_url(redis_url)
        try:
            calls: list[ScriptCall] = [([stream], [TOP10_GROUP, name, min_idle_ms]) for name, min_idle_ms in requests]
            return await run_pipelined(async_client, REMOVE_CONSUMER, calls)
        finally:
            await async_client.aclose()

    assert asyncio.run(remove(("idle", 60_000), ("holder", 0), ("nobody", 0))) == [0, 0, 0]
    assert asyncio.run(remove(("idle", 10))) == [1]
    assert [entry["name"] for entry in client.xinfo_consumers(stream, TOP10_GROUP)] == [b"holder"]


def test_a_stored_timestamp_beyond_redis_time_plus_the_tolerance_is_replaced(redis_url: str, key_prefix: str) -> None:
    """A key pinned in the future by an older version (or a clock gone wrong) takes the next snapshot."""
    key = f"{key_prefix}:top10:XBTUSD"
    client = redis.Redis.from_url(redis_url)
    year_2099_us = 4_070_908_800_000_000
    client.hset(key, mapping={"ts_us": str(year_2099_us), "stream_id": "1-0", "status": "live", "session": "old"})
    assert asyncio.run(store(redis_url, key, write_of(10, "2-0")))[0] > 0
    assert client.hget(key, "stream_id") == b"2-0" and client.hget(key, "session") == b"s"
    # Within the tolerance of Redis's clock, a stored time is trusted and compared as always.
    redis_now_us = int(client.time()[0]) * 1_000_000
    client.hset(key, mapping={"ts_us": str(redis_now_us + TOLERANCE_US // 2), "stream_id": "3-0"})
    assert asyncio.run(store(redis_url, key, write_of(20, "4-0"))) == [0]


def test_a_lost_session_is_marked_stale_once_and_a_newer_snapshot_wins(redis_url: str, key_prefix: str) -> None:
    key = Keys(key_prefix).top10("XBTUSD")
    client = redis.Redis.from_url(redis_url)
    listener = ChannelListener(client, key)
    asyncio.run(store(redis_url, key, write_of(10, "1-0", session="gone")))
    assert asyncio.run(mark(redis_url, key, "other")) == [0], "a snapshot of another session is left alone"
    assert asyncio.run(mark(redis_url, key, "gone")) == [1]
    assert asyncio.run(mark(redis_url, key, "gone")) == [0], "a second instance deciding the same changes nothing"
    value = cached(client, Keys(key_prefix), "XBTUSD")
    assert (value["status"], value["reason"], value["session"], value["stream_id"]) == ("stale", LOST, "gone", "1-0")
    asyncio.run(store(redis_url, key, write_of(20, "2-0", session="fresh")))
    assert (cached(client, Keys(key_prefix), "XBTUSD")["status"], client.hget(key, "reason")) == ("live", b"")
    # A snapshot of a session known lost is written, but stale.
    asyncio.run(store(redis_url, key, write_of(30, "3-0", session="gone"), lost_reason=LOST))
    assert client.hmget(key, "status", "reason", "stream_id") == [b"stale", LOST.encode(), b"3-0"]
    messages = listener.collect(4)
    assert [(message.get("status"), message.get("reason"), message.get("stream_id")) for message in messages] == [
        ("live", "", "1-0"), ("stale", LOST, None), ("live", "", "2-0"), ("stale", LOST, "3-0")]
    assert messages[1] == {"symbol": "XBTUSD", "status": "stale", "reason": LOST, "session": "gone"}
    client.delete(key)
    client.set(key, "not a hash")
    assert asyncio.run(mark(redis_url, key, "gone")) == [0]
    listener.close()
