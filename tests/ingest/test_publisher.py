"""The publisher against a real Redis: order, exactly-once after failures, refusals, buffer bound."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis as AsyncRedis

from services.core.activity import signalled_symbols
from services.core.entries import decode_entry, encode_entry, encode_gap
from services.core.keys import Keys
from services.ingest import metrics
from services.ingest.publisher import OPERATION, Publisher
from services.ingest.session import Entry
from services.runtime.dependency import DependencyHealth, OperationHealth
from services.runtime.logs import EventLog
from services.runtime.redis_wire import open_wire
from testkit.harness import RedisServer, free_port, node_url, redis_client

BUSY_SCRIPT = """
local started = redis.call('TIME')
while true do
    local now = redis.call('TIME')
    if (now[1] - started[1]) * 1000000 + (now[2] - started[2]) > tonumber(ARGV[1]) then return 1 end
end
"""


def sample(name: str, **labels: str) -> float:
    """A sample of this process's metrics, read the way a scrape reads it (0 before its first count)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def entries(keys: Keys, symbols: list[str], count: int, session: str = "s1") -> list[Entry]:
    made = []
    for n in range(count):
        symbol = symbols[n % len(symbols)]
        text = f'{{"table":"orderBookL2","action":"update","n":{n}}}'
        made.append(Entry(keys.l2_stream(symbol), symbol,
                          encode_entry(text, "orderBookL2", "update", session, n // len(symbols) + 1, n),
                          time.perf_counter_ns()))
    return made


def stream_frames(url: str, stream: str) -> list[tuple[str, str]]:
    """`(seq, frame text or "gap")` of every entry of `stream`."""
    client = redis_client(url)
    try:
        raw: Any = client.xrange(stream)
    finally:
        client.close()
    decoded = [decode_entry(stream_id, fields) for stream_id, fields in raw]
    return [(str(entry.seq), entry.frame or entry.action) for entry in decoded]


def run_publisher(url: str, key_prefix: str, scenario: Callable[[Publisher], Awaitable[None]],
                  capacity: int = 10_000, timeout: float = 5.0) -> OperationHealth:
    """Run a publisher while `scenario` feeds it, then drain it; returns its Redis status."""
    log = EventLog("ingest-test")
    health = DependencyHealth("redis", log, metrics.REDIS_ERRORS.labels, metrics.REDIS_UP.labels)

    async def main() -> None:
        wire = open_wire(url, timeout, "ingest-test", connect_timeout=timeout)
        publisher = Publisher(wire, Keys(key_prefix), capacity, 100_000, health, log)
        task = asyncio.create_task(publisher.run())
        try:
            await scenario(publisher)
            publisher.close()
            await asyncio.wait_for(task, 30)
        finally:
            task.cancel()
            publisher.close_connection()

    asyncio.run(main())
    return health.operation(OPERATION)


async def until_empty(publisher: Publisher) -> None:
    for _ in range(1000):
        if not len(publisher):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{len(publisher)} entries still buffered")


def expected(batch: list[Entry], stream: str) -> list[tuple[str, str]]:
    return [(e.fields["seq"], e.fields.get("frame", e.fields["action"])) for e in batch if e.stream == stream]


def test_entries_land_in_their_streams_in_order_and_symbols_are_announced(redis_target: str, key_prefix: str) -> None:
    redis_url = redis_target
    keys = Keys(key_prefix)
    batch = entries(keys, ["A", "B", "C", "D", "E", "F"], 3000)
    gap = Entry(keys.l2_stream("A"), "A", encode_gap("orderBookL2", "s1", 1001, 5, "closed"), time.perf_counter_ns())
    before = sample("bookstream_ingest_entries_published_total", kind="gap")

    async def feed(publisher: Publisher) -> None:
        for start in range(0, len(batch), 250):
            publisher.append(batch[start:start + 250])
            await asyncio.sleep(0)
        publisher.append([gap])

    status = run_publisher(redis_url, key_prefix, feed)
    assert status.up is True
    for symbol in "ABCDEF":
        want = expected(batch, keys.l2_stream(symbol)) + ([("1001", "gap")] if symbol == "A" else [])
        assert stream_frames(redis_url, keys.l2_stream(symbol)) == want
    client = redis_client(redis_url)
    assert client.smembers(keys.symbols) == {symbol.encode() for symbol in "ABCDEF"}
    # Every batch announced what it appended (services.core.activity), and only the l2 stream's signal exists.
    signals: Any = client.xrange(keys.activity("l2"))
    assert signals, "no activity signal written"
    _, named = signalled_symbols(signals)
    assert named == set("ABCDEF") and not client.exists(keys.activity("ob10"))
    client.close()
    assert sample("bookstream_ingest_entries_published_total", kind="gap") == before + 1


def test_the_signal_names_each_symbol_whole(redis_target: str, key_prefix: str) -> None:
    """One server (the batch script) and a cluster (a call of its own) write the same signal text."""
    keys = Keys(key_prefix)

    async def feed(publisher: Publisher) -> None:
        publisher.append(entries(keys, ["XBTUSD", "ETHUSD"], 4))

    assert run_publisher(redis_target, key_prefix, feed).up is True
    client = redis_client(redis_target)
    signals: Any = client.xrange(keys.activity("l2"))
    client.close()
    assert signals and signalled_symbols(signals)[1] == {"XBTUSD", "ETHUSD"}
    assert {fields[b"s"] for _, fields in signals} <= {b"ETHUSD XBTUSD", b"ETHUSD", b"XBTUSD"}


def test_the_buffer_bound_is_reported_and_room_comes_back_as_redis_catches_up(redis_url: str,
                                                                              key_prefix: str) -> None:
    keys = Keys(key_prefix)
    seen: dict[str, Any] = {}

    async def feed(publisher: Publisher) -> None:
        publisher.append(entries(keys, ["A"], 120))
        seen["full"] = publisher.full
        await asyncio.wait_for(publisher.wait_for_room(), 10)
        seen["full_after"] = publisher.full

    run_publisher(redis_url, key_prefix, feed, capacity=100)
    assert seen == {"full": True, "full_after": False}
    assert len(stream_frames(redis_url, keys.l2_stream("A"))) == 120


def test_a_stream_redis_refuses_for_good_is_dropped_loudly_and_the_others_go_on(redis_target: str,
                                                                                 key_prefix: str) -> None:
    redis_url = redis_target
    keys = Keys(key_prefix)
    client = redis_client(redis_url)
    client.set(keys.l2_stream("B"), "not a stream")
    batch = entries(keys, ["A", "B"], 200)
    dropped = sample("bookstream_ingest_dropped_entries_total", reason="redis_refused")

    async def feed(publisher: Publisher) -> None:
        publisher.append(batch)

    run_publisher(redis_url, key_prefix, feed)
    assert stream_frames(redis_url, keys.l2_stream("A")) == expected(batch, keys.l2_stream("A"))
    assert client.get(keys.l2_stream("B")) == b"not a stream"
    assert sample("bookstream_ingest_dropped_entries_total", reason="redis_refused") == dropped + 100
    client.close()


def test_entries_buffered_while_redis_is_down_land_once_when_it_is_back(redis_server: RedisServer,
                                                                        key_prefix: str) -> None:
    keys = Keys(key_prefix)
    first, second = entries(keys, ["A", "B"], 100), entries(keys, ["A", "B"], 100, session="s2")
    seen: dict[str, Any] = {}

    async def feed(publisher: Publisher) -> None:
        publisher.append(first)
        await until_empty(publisher)
        seen["stalled_empty"] = publisher.stalled_for(time.monotonic() + 60)
        await asyncio.to_thread(redis_server.stop)
        publisher.append(second)
        await asyncio.sleep(1.0)
        seen["buffered"] = len(publisher)
        seen["stalled_down"] = publisher.stalled_for(time.monotonic())
        await asyncio.to_thread(redis_server.start)
        await until_empty(publisher)
        seen["stalled_after"] = publisher.stalled_for(time.monotonic())

    status = run_publisher(redis_server.url, key_prefix, feed, timeout=0.5)
    assert seen["buffered"] == 100
    assert seen["stalled_empty"] == 0.0 == seen["stalled_after"], "an empty buffer is never stalled"
    assert seen["stalled_down"] >= 0.9, "held since the append, nothing acknowledged"
    assert status.up is True
    for symbol in "AB":
        stream = keys.l2_stream(symbol)
        assert stream_frames(redis_server.url, stream) == expected(first, stream) + expected(second, stream)


def test_a_batch_whose_reply_was_lost_is_not_appended_twice(redis_target: str, key_prefix: str,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """Redis busy past the socket timeout: the publisher gives up on a batch Redis then applies anyway (on a
    cluster, the node of A's stream is busy while the others answer at once)."""
    redis_url = redis_target
    keys = Keys(key_prefix)
    warm_up, batch = entries(keys, ["A", "B", "C"], 3), entries(keys, ["A", "B", "C"], 300, session="s2")
    errors = sample("bookstream_ingest_redis_errors_total", operation="publish")

    async def feed(publisher: Publisher) -> None:
        publisher.append(warm_up)  # the connection is open and the script loaded before Redis stalls
        await until_empty(publisher)
        blocker = AsyncRedis.from_url(node_url(redis_url, keys.l2_stream("A")))
        busy: asyncio.Future[Any] = asyncio.ensure_future(blocker.eval(BUSY_SCRIPT, 0, 1_000_000))
        await asyncio.sleep(0.1)
        publisher.append(batch)
        await busy
        await blocker.aclose()

    with caplog.at_level(logging.INFO, logger="bookstream"):
        status = run_publisher(redis_url, key_prefix, feed, timeout=0.3)
    assert sample("bookstream_ingest_redis_errors_total", operation="publish") > errors
    assert "batch_reconciled" in [record.getMessage() for record in caplog.records]
    assert status.up is True
    for symbol in "ABC":
        stream = keys.l2_stream(symbol)
        assert stream_frames(redis_url, stream) == expected(warm_up, stream) + expected(batch, stream)


def test_entries_given_up_at_stop_are_counted_and_logged(key_prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    keys = Keys(key_prefix)
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    dropped = sample("bookstream_ingest_dropped_entries_total", reason="stop")

    async def feed(publisher: Publisher) -> None:
        publisher.append(entries(keys, ["A", "B"], 10))
        await asyncio.sleep(0.3)
        assert publisher.drop_all("stop") == 10
        assert len(publisher) == 0

    with caplog.at_level(logging.INFO, logger="bookstream"):
        status = run_publisher(nowhere, key_prefix, feed, timeout=0.2)
    assert status.up is False
    assert sample("bookstream_ingest_dropped_entries_total", reason="stop") == dropped + 10
    assert "entries_dropped" in [record.getMessage() for record in caplog.records]
