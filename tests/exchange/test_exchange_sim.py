"""`bookstream exchange --sim` through the real command line, with a real websocket client."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from datetime import datetime
from itertools import pairwise
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import connect

from services.exchange.market import symbol_names
from tests.conftest import RunService
from tests.exchange.wire import (
    Book,
    health,
    http_get,
    open_client,
    recv_json,
    recv_until_closed,
    recv_until_idle,
    rest_levels,
    tables_only,
    truth,
    ws_url,
)
from tests.harness import free_port, wait_until

L2_KEYS = ["symbol", "id", "side"]
L2_TYPES_CURRENT = {"symbol": "symbol", "id": "long", "side": "symbol", "size": "long", "price": "float",
                    "timestamp": "timestamp", "transactTime": "timestamp"}


def start_sim(run_service: RunService, *flags: str) -> int:
    port = free_port()
    run_service("exchange", "--sim", "--host", "127.0.0.1", "--port", str(port), *flags)
    return port


def test_welcome_acks_and_partials_have_the_venue_shapes(run_service: RunService) -> None:
    port = start_sim(run_service, "--symbols", "XBTUSD,ETHUSD", "--rate", "50")

    async def scenario() -> None:
        async with open_client(port, "orderBookL2:XBTUSD") as ws:
            welcome = await recv_json(ws)
            assert welcome["info"] == "Welcome to the BitMEX Realtime API."
            assert welcome["docs"] == "https://www.bitmex.com/app/wsAPI"
            assert set(welcome) >= {"version", "timestamp", "limit"}
            assert await recv_json(ws) == {"success": True, "subscribe": "orderBookL2:XBTUSD",
                                           "request": {"op": "subscribe", "args": ["orderBookL2:XBTUSD"]}}
            partial = await recv_json(ws)
            assert partial["table"] == "orderBookL2" and partial["action"] == "partial"
            assert partial["keys"] == L2_KEYS and partial["types"] == L2_TYPES_CURRENT
            assert partial["foreignKeys"] == {"symbol": "instrument", "side": "side"}
            assert partial["filter"] == {"symbol": "XBTUSD"}
            assert len(partial["data"]) > 400
            prices = [row["price"] for row in partial["data"]]
            assert prices == sorted(prices, reverse=True)
            sides = [row["side"] for row in partial["data"]]
            assert sides == sorted(sides, reverse=True), "sells come before buys"
            assert all(set(row) == set(L2_TYPES_CURRENT) for row in partial["data"])

            request = {"op": "subscribe", "args": ["orderBook10:ETHUSD", "orderBookL2_25:ETHUSD"]}
            await ws.send(orjson.dumps(request).decode())
            ack = await recv_json(ws)
            while ack.get("table") == "orderBookL2":  # XBTUSD deltas keep coming meanwhile
                ack = await recv_json(ws)
            assert ack == {"success": True, "subscribe": "orderBook10:ETHUSD", "request": request}
            ob10 = await recv_json(ws)
            assert ob10["table"] == "orderBook10" and ob10["action"] == "partial"
            assert ob10["keys"] == ["symbol"] and ob10["filter"] == {"symbol": "ETHUSD"}
            (row,) = ob10["data"]
            assert list(row) == ["symbol", "bids", "asks", "timestamp"]
            assert len(row["bids"]) == len(row["asks"]) == 10
            assert row["bids"][0][0] < row["asks"][0][0]
            assert await recv_json(ws) == {"success": True, "subscribe": "orderBookL2_25:ETHUSD",
                                           "request": request}
            l2_25 = await recv_json(ws)
            assert l2_25["table"] == "orderBookL2_25" and l2_25["action"] == "partial"
            assert [row["side"] for row in l2_25["data"]].count("Buy") == 25

            # After the partials, only deltas of subscribed topics.
            for message in tables_only([str(await ws.recv()) for _ in range(100)]):
                assert message["action"] in ("insert", "update", "delete")
                symbol = message["data"][0]["symbol"]
                assert (message["table"], symbol) in {("orderBookL2", "XBTUSD"), ("orderBook10", "ETHUSD"),
                                                      ("orderBookL2_25", "ETHUSD")}

    asyncio.run(scenario())


def test_errors_leave_the_connection_open_and_ping_gets_pong(run_service: RunService) -> None:
    port = start_sim(run_service, "--symbols", "XBTUSD", "--rate", "20")

    async def replies(ws: Any, count: int) -> list[Any]:
        got: list[Any] = []
        while len(got) < count:
            text = str(await asyncio.wait_for(ws.recv(), 10))
            if not text.startswith('{"table"'):
                got.append(text if text == "pong" else orjson.loads(text))
        return got

    async def scenario() -> None:
        async with open_client(port) as ws:
            await recv_json(ws)
            await ws.send("{not json")
            unknown_table = {"op": "subscribe", "args": ["trades:XBTUSD"]}
            await ws.send(orjson.dumps(unknown_table).decode())
            unknown_symbol = {"op": "subscribe", "args": ["orderBookL2:NOPE"]}
            await ws.send(orjson.dumps(unknown_symbol).decode())
            too_many = {"op": "subscribe", "args": [f"orderBookL2:S{n}" for n in range(21)]}
            await ws.send(orjson.dumps(too_many).decode())
            await ws.send('{"op":"dance","args":[]}')
            await ws.send("ping")
            bad_json, table, symbol, many, op, pong = await replies(ws, 6)
            for error in (bad_json, table, symbol, many, op):
                assert error["status"] == 400 and error["meta"] == {}
            assert bad_json["request"] == {} and bad_json["error"].startswith("Unrecognized request")
            assert table["error"].startswith("Unknown table: trades") and table["request"] == unknown_table
            assert symbol["error"] == "Unknown or expired symbol." and symbol["request"] == unknown_symbol
            assert "20" in many["error"] and many["request"] == too_many
            assert op["request"] == {"op": "UNKNOWN", "args": []}
            assert pong == "pong"

            await ws.send('{"op":"subscribe","args":"orderBookL2:XBTUSD"}')
            ack, = await replies(ws, 1)
            assert ack["subscribe"] == "orderBookL2:XBTUSD"
            await ws.send('{"op":"subscribe","args":["orderBookL2:XBTUSD"]}')
            again, = await replies(ws, 1)
            assert again["status"] == 400 and "already subscribed" in again["error"]

            await ws.send('{"op":"unsubscribe","args":["orderBookL2:XBTUSD"]}')
            unsubscribed, = await replies(ws, 1)
            assert unsubscribed == {"success": True, "unsubscribe": "orderBookL2:XBTUSD",
                                    "request": {"op": "unsubscribe", "args": ["orderBookL2:XBTUSD"]}}
            await ws.send("ping")
            # Once the pong is back, everything queued before the unsubscribe has been received.
            while str(await asyncio.wait_for(ws.recv(), 10)) != "pong":
                pass
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(ws.recv(), 0.5)

    asyncio.run(scenario())


def test_books_rebuilt_from_the_frames_equal_the_rest_truth(run_service: RunService) -> None:
    symbols = ["XBTUSD", "ETHUSD", "SOLUSDT"]
    port = start_sim(run_service, "--symbols", ",".join(symbols), "--rate", "5000", "--seed", "11",
                     "--max-frames", "8000", "--depth", "120")

    async def scenario() -> list[str]:
        async with open_client(port, "orderBookL2", "orderBookL2_25:XBTUSD", "orderBook10") as ws:
            return await recv_until_idle(ws, port)

    messages = tables_only(asyncio.run(scenario()))
    l2: dict[str, Book] = defaultdict(Book)
    l2_25 = Book()
    ob10_frames: dict[str, list[dict[str, Any]]] = defaultdict(list)
    deltas = 0
    for message in messages:
        symbol = message["data"][0]["symbol"] if message["data"] else message["filter"]["symbol"]
        if message["table"] == "orderBookL2":
            if symbol == "XBTUSD" and l2_25.rows:
                # Between two L2 frames, the orderBookL2_25 frames caused by the first one are all in.
                assert l2_25.top(25) == l2[symbol].top(25), "orderBookL2_25 follows the top 25 of the L2 book"
            l2[symbol].apply(message)
            deltas += message["action"] != "partial"
        elif message["table"] == "orderBookL2_25":
            l2_25.apply(message)
            assert len(l2_25.levels("Buy")) <= 25 and len(l2_25.levels("Sell")) <= 25
        else:
            (row,) = message["data"]
            assert (row["bids"], row["asks"]) == l2[symbol].top(10), "orderBook10 equals the L2 top 10"
            ob10_frames[symbol].append(row)

    assert 0 < deltas <= 8000
    assert health(port)["changes"] == 8000
    for symbol in symbols:
        assert l2[symbol].as_rest() == rest_levels(truth(port, symbol)), symbol
        assert len(ob10_frames[symbol]) > 10
        updates = ob10_frames[symbol]
        assert all((a["bids"], a["asks"]) != (b["bids"], b["asks"]) for a, b in pairwise(updates)), \
            "orderBook10 is sent only when the top 10 changed"
    top_truth = truth(port, "XBTUSD", depth=25)
    assert l2_25.as_rest() == rest_levels(top_truth)


def test_orderbook10_throttle_still_ends_on_the_final_book(run_service: RunService) -> None:
    port = start_sim(run_service, "--symbols", "XBTUSD", "--rate", "2000", "--max-frames", "3000",
                     "--ob10-throttle", "0.2")

    async def scenario() -> list[str]:
        async with open_client(port, "orderBookL2:XBTUSD", "orderBook10:XBTUSD") as ws:
            return await recv_until_idle(ws, port)

    book = Book()
    tops = []
    for message in tables_only(asyncio.run(scenario())):
        if message["table"] == "orderBookL2":
            book.apply(message)
        else:
            row = message["data"][0]
            assert (row["bids"], row["asks"]) == book.top(10)
            tops.append(row)
    assert len(tops) >= 3
    times = [datetime.fromisoformat(row["timestamp"]).timestamp() for row in tops[1:]]
    assert all(later - earlier >= 0.199 for earlier, later in pairwise(times)), \
        "at most one orderBook10 frame per 0.2 s"
    assert (tops[-1]["bids"], tops[-1]["asks"]) == book.top(10), "the last one shows the final book"
    assert book.as_rest() == rest_levels(truth(port, "XBTUSD"))


def test_historical_format_has_no_price_on_update_and_delete(run_service: RunService) -> None:
    port = start_sim(run_service, "--symbols", "XBTUSD,ETHUSD", "--rate", "4000", "--max-frames", "3000",
                     "--historical")

    async def scenario() -> list[str]:
        async with open_client(port, "orderBookL2") as ws:
            return await recv_until_idle(ws, port)

    frames = asyncio.run(scenario())
    assert '"heartbeatEnabled"' not in frames[0] and '"version":"2021-' in frames[0]
    books: dict[str, Book] = defaultdict(Book)
    actions: set[str] = set()
    for message in tables_only(frames):
        action = message["action"]
        actions.add(action)
        expected = {"partial": {"symbol", "id", "side", "size", "price"},
                    "insert": {"symbol", "id", "side", "size", "price"},
                    "update": {"symbol", "id", "side", "size"},
                    "delete": {"symbol", "id", "side"}}[action]
        assert all(set(row) == expected for row in message["data"]), message
        symbol = message["data"][0]["symbol"]
        if symbol == "XBTUSD":  # tick 0.5, instrument index 88: the pre-2023 id rule
            assert all(row["id"] == 8_800_000_000 - round(row["price"] / 0.5)
                       for row in message["data"] if "price" in row)
        books[symbol].apply(message)
    assert actions == {"partial", "insert", "update", "delete"}
    for symbol in ("XBTUSD", "ETHUSD"):
        assert books[symbol].as_rest() == rest_levels(truth(port, symbol))


def test_same_seed_same_market_and_symbol_count(run_service: RunService) -> None:
    flags = ("--symbols", "5", "--rate", "0", "--max-frames", "3000", "--depth", "50")
    ports = [start_sim(run_service, *flags, "--seed", seed) for seed in ("3", "3", "4")]
    wait_until(lambda: all(health(port)["finished"] for port in ports), 30, "the markets to stop")

    def books(port: int) -> list[list[tuple[str, int, float, int]]]:
        return [rest_levels(truth(port, symbol)) for symbol in ("XBTUSD", "ETHUSD", "SIM0001USDT")]

    first, again, other = (books(port) for port in ports)
    assert first == again
    assert first != other
    assert health(ports[0])["symbols"] == 5
    status, rows, _ = http_get(ports[0], "/api/v1/orderBook/L2?symbol=XBTUSD")
    assert status == 200 and len(rows) == 50, "depth defaults to 25 per side, as on BitMEX"
    assert http_get(ports[0], "/api/v1/orderBook/L2?symbol=NOPE&depth=0")[:2] == (200, [])
    assert http_get(ports[0], "/api/v1/orderBook/L2")[0] == 400


def test_wildcard_topic_covers_every_symbol(run_service: RunService) -> None:
    port = start_sim(run_service, "--symbols", "4", "--rate", "200")

    async def scenario() -> None:
        async with open_client(port) as ws:
            await recv_json(ws)
            await ws.send('{"op":"subscribe","args":["orderBook10"]}')
            assert (await recv_json(ws))["subscribe"] == "orderBook10"
            partials = [await recv_json(ws) for _ in range(4)]
            assert [p["filter"]["symbol"] for p in partials] == ["XBTUSD", "ETHUSD", "XBTUSDT", "ETHUSDT"]
            assert all(p["action"] == "partial" for p in partials)

    asyncio.run(scenario())


def test_a_slow_client_is_disconnected_and_the_others_keep_up(run_service: RunService) -> None:
    port = free_port()
    service = run_service("exchange", "--sim", "--host", "127.0.0.1", "--port", str(port), "--symbols", "XBTUSD",
                          "--rate", "5000", "--client-queue-bytes", "300000")
    # A client that never reads: its library stops reading the socket after one frame.
    never_reads = connect(ws_url(port, "orderBookL2:XBTUSD"), max_size=None, compression=None, max_queue=1,
                          close_timeout=1)

    async def scenario() -> None:
        async with never_reads as slow, open_client(port, "orderBookL2") as fast:
            received = 0
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while loop.time() < deadline:
                await fast.recv()
                received += 1
                if received % 250 == 0 and health(port)["clients"] == 1:
                    break
            assert health(port)["clients"] == 1, "the client that never reads was disconnected"
            await recv_until_closed(slow)
            assert slow.close_code == 1006
            for _ in range(100):
                await asyncio.wait_for(fast.recv(), 10)
            assert service.metric("bookstream_exchange_slow_clients_closed_total") == 1
            assert "event=slow_client_closed" in service.logs()

    asyncio.run(scenario())


def test_partials_waiting_to_be_sent_are_not_lag(run_service: RunService) -> None:
    symbols = symbol_names(200)
    port = start_sim(run_service, "--symbols", "200", "--rate", "100", "--client-queue-bytes", "500000")
    # A client that reads nothing for a second after asking, 20 at a time, for 200 books of 600 levels:
    # some 14 MB of partials, most of them still queued when the next deltas arrive.
    reads_late = connect(ws_url(port), max_size=None, compression=None, max_queue=1, close_timeout=1)

    async def scenario() -> None:
        async with reads_late as ws:
            for start in range(0, 200, 20):
                args = [f"orderBookL2:{symbol}" for symbol in symbols[start:start + 20]]
                await ws.send(orjson.dumps({"op": "subscribe", "args": args}).decode())
            await asyncio.sleep(1)
            frames = [str(await asyncio.wait_for(ws.recv(), 10)) for _ in range(500)]
            partials = [frame for frame in frames if '"action":"partial"' in frame]
            assert len(partials) == 200 and sum(map(len, partials)) > 20 * 500_000
            assert health(port)["clients"] == 1

    asyncio.run(scenario())


@pytest.mark.parametrize("historical", [False, True])
def test_every_frame_parses_with_the_ingest_protocol_module(run_service: RunService, historical: bool) -> None:
    """The simulator and `services.core.bitmex` were written apart; what one sends the other must read."""
    bitmex = pytest.importorskip("services.core.bitmex")
    orderbook10 = pytest.importorskip("services.core.orderbook10")
    port = start_sim(run_service, "--symbols", "XBTUSD,DOGEUSDT", "--rate", "3000", "--max-frames", "1500",
                     *(["--historical"] if historical else []))

    async def scenario() -> list[str]:
        async with open_client(port, "orderBookL2", "orderBookL2_25:DOGEUSDT", "orderBook10") as ws:
            await ws.send('{"op":"subscribe","args":["orderBookL2:NOPE"]}')
            await ws.send("ping")
            return await recv_until_idle(ws, port)

    kinds: set[str] = set()
    for text in asyncio.run(scenario()):
        frame = bitmex.parse_frame(text)
        kinds.add(type(frame).__name__)
        if isinstance(frame, bitmex.TableFrame):
            assert frame.symbol in ("XBTUSD", "DOGEUSDT")
            if frame.table == "orderBook10":
                assert len(orderbook10.parse_orderbook10(frame)) == 1
    assert kinds == {"Welcome", "SubscriptionAck", "ErrorReply", "Pong", "TableFrame"}
