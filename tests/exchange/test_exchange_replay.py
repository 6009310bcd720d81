"""`bookstream exchange --replay` on the real 2021 captures, through the real command line."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson

from services.core.bitmex import TableFrame, parse_frame
from services.core.capture import iter_capture
from services.core.orderbook10 import parse_orderbook10
from tests.conftest import RunService
from tests.exchange.wire import Book, health, open_client, recv_json, recv_until_idle, rest_levels, tables_only, truth
from tests.harness import free_port

CAPTURE = "2021-07-22.capture"


def start_replay(run_service: RunService, capture: Path, *flags: str) -> int:
    port = free_port()
    run_service("exchange", "--replay", str(capture), "--host", "127.0.0.1", "--port", str(port), *flags)
    return port


def recorded(capture: Path, wanted: set[tuple[str, str]]) -> list[str]:
    """The frames a client subscribed to `wanted` (table, symbol) must get: each book from its partial on."""
    started: set[tuple[str, str]] = set()
    frames = []
    for _, text in iter_capture(capture):
        message = orjson.loads(text)
        if "table" not in message:
            continue
        symbol = message["data"][0]["symbol"] if message["data"] else message["filter"]["symbol"]
        topic = (message["table"], symbol)
        if topic not in wanted:
            continue
        if message["action"] == "partial":
            started.add(topic)
        if topic in started or message["table"] in ("quote", "trade"):
            frames.append(text)
    return frames


def books_of(messages: list[dict[str, Any]]) -> dict[str, Book]:
    books: dict[str, Book] = defaultdict(Book)
    for message in messages:
        if message["table"] == "orderBookL2":
            symbol = message["data"][0]["symbol"] if message["data"] else message["filter"]["symbol"]
            books[symbol].apply(message)
    return books


def test_replay_delivers_exactly_the_recorded_frames_of_the_subscribed_topics(
        run_service: RunService, captures_dir: Path) -> None:
    capture = captures_dir / CAPTURE
    port = start_replay(run_service, capture, "--max")
    symbols = sorted({orjson.loads(text)["filter"]["symbol"] for _, text in iter_capture(capture)
                      if text.startswith('{"table":"orderBookL2","action":"partial"')})
    assert len(symbols) == 10

    async def scenario() -> list[str]:
        async with open_client(port, "orderBookL2", "trade:XBTUSD", "quote:SOLUSDT") as ws:
            return await recv_until_idle(ws, port)

    frames = asyncio.run(scenario())
    first_line = next(iter_capture(capture))[1]
    assert frames[0] == first_line, "the recorded welcome"
    acks = [orjson.loads(frame) for frame in frames[1:4]]
    assert [ack["subscribe"] for ack in acks] == ["orderBookL2", "trade:XBTUSD", "quote:SOLUSDT"]
    wanted = {("orderBookL2", symbol) for symbol in symbols} | {("trade", "XBTUSD"), ("quote", "SOLUSDT")}
    assert frames[4:] == recorded(capture, wanted)
    for symbol, book in books_of(tables_only(frames)).items():
        assert book.as_rest() == rest_levels(truth(port, symbol)), symbol


def test_a_late_subscription_gets_a_rebuilt_partial(run_service: RunService, captures_dir: Path) -> None:
    capture = captures_dir / CAPTURE
    port = start_replay(run_service, capture, "--speed", "20")

    async def scenario() -> list[str]:
        async with open_client(port, "orderBookL2:XBTUSD") as ws:
            frames = [str(await ws.recv()) for _ in range(300)]
            await ws.send('{"op":"subscribe","args":["orderBookL2:BCHUSD"]}')
            frames += await recv_until_idle(ws, port)
            return frames

    frames = asyncio.run(scenario())
    messages = tables_only(frames)
    partials = [message for message in messages if message["action"] == "partial"]
    assert [partial["filter"]["symbol"] for partial in partials] == ["XBTUSD", "BCHUSD"]
    recorded_bch = next(text for text in recorded(capture, {("orderBookL2", "BCHUSD")}))
    assert orjson.dumps(partials[1]).decode() != recorded_bch, "the book had moved since its recorded partial"
    assert set(partials[1]) == set(orjson.loads(recorded_bch)), "in the recording's own format"
    books = books_of(messages)
    for symbol in ("XBTUSD", "BCHUSD"):
        assert books[symbol].as_rest() == rest_levels(truth(port, symbol))


def test_replay_loops_and_paces(run_service: RunService, captures_dir: Path) -> None:
    capture = captures_dir / "2021-04-17.capture"
    times = [recv_time for recv_time, text in iter_capture(capture) if text.startswith('{"table"')]
    port = start_replay(run_service, capture, "--speed", "15", "--loop")
    expected = recorded(capture, {("orderBookL2", "LTCUSD")})

    async def scenario() -> tuple[list[str], float]:
        async with open_client(port, "orderBookL2:LTCUSD") as ws:
            await recv_json(ws)
            await recv_json(ws)
            frames = [str(await asyncio.wait_for(ws.recv(), 10))]
            started = time.monotonic()
            while len(frames) < len(expected) + 5:
                frames.append(str(await asyncio.wait_for(ws.recv(), 10)))
            return frames, time.monotonic() - started

    frames, elapsed = asyncio.run(scenario())
    assert frames[:len(expected)] == expected
    assert frames[len(expected):] == expected[:5], "the second pass starts again at the partial"
    recorded_span = (times[-1] - times[0]) / 15
    assert elapsed > 0.7 * recorded_span, "paced like the recording, 15 times faster"
    assert not health(port)["finished"]


def test_a_capture_without_orderbook10_serves_one_derived_from_its_book(
        run_service: RunService, captures_dir: Path) -> None:
    """The 2021 captures have no orderBook10: the replay computes it from the replayed L2 book, so a
    top-10 consumer gets data, and every snapshot is the top 10 of the book at that point of the stream."""
    capture = captures_dir / CAPTURE
    port = start_replay(run_service, capture, "--max")

    async def scenario() -> list[str]:
        async with open_client(port, "orderBookL2:XBTUSD", "orderBook10:XBTUSD") as ws:
            frames = await recv_until_idle(ws, port)
            await ws.send('{"op":"subscribe","args":["orderBook10:BCHUSD"]}')
            return frames + await recv_until_idle(ws, port)

    messages = tables_only(asyncio.run(scenario()))
    book = Book()
    snapshots = 0
    for message in messages:
        if message["table"] == "orderBookL2":
            book.apply(message)
            continue
        assert message["table"] == "orderBook10"
        frame = parse_frame(orjson.dumps(message))
        assert isinstance(frame, TableFrame), frame
        row = parse_orderbook10(frame)[0]
        if row.symbol == "BCHUSD":
            continue
        assert message["action"] == ("partial" if snapshots == 0 else "update")
        assert (row.bids, row.asks) == book.top(10), f"snapshot {snapshots} is not the book's top 10"
        snapshots += 1
    l2_changes = sum(1 for message in messages if message["table"] == "orderBookL2")
    assert 10 < snapshots < l2_changes, "one snapshot per change of the top 10, not per L2 frame"
    late = [message for message in messages if message["table"] == "orderBook10"
            and message["data"][0]["symbol"] == "BCHUSD"]
    assert [message["action"] for message in late] == ["partial"], "a late subscription gets the book as it is"
    final = Book()
    for level in truth(port, "BCHUSD"):
        final.apply({"action": "insert", "data": [level]})
    assert (late[0]["data"][0]["bids"], late[0]["data"][0]["asks"]) == final.top(10)
