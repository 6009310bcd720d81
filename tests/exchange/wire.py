"""What the exchange tests share: a recording websocket client, HTTP helpers and a tiny book.

The book here is deliberately neither the simulator's (`services.exchange.market`) nor the engine under
test (`services.core.book`): the simulator is checked against something that shares no code with it.
"""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

QUIET_SECONDS = 0.5
RECV_SECONDS = 10
IDLE_DEADLINE_SECONDS = 60


def ws_url(port: int, *topics: str) -> str:
    query = f"?subscribe={','.join(topics)}" if topics else ""
    return f"ws://127.0.0.1:{port}/realtime{query}"


def open_client(port: int, *topics: str) -> connect:
    """A websocket client for the tests: no compression, any frame size.

    A client closing while frames still flow stops reading once its queue is full and so never sees the
    server's closing frame; a short close timeout keeps such a test from waiting 10 s for nothing.
    """
    return connect(ws_url(port, *topics), max_size=None, compression=None, open_timeout=10, close_timeout=1)


def http_get(port: int, path: str) -> tuple[int, Any, dict[str, str]]:
    """`(status, decoded JSON body, headers)` of `GET path` on the exchange's port."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return int(reply.status), orjson.loads(reply.read()), dict(reply.headers)
    except urllib.error.HTTPError as exc:
        return int(exc.code), orjson.loads(exc.read()), dict(exc.headers)


def truth(port: int, symbol: str, depth: int = 0) -> list[dict[str, Any]]:
    status, rows, _ = http_get(port, f"/api/v1/orderBook/L2?symbol={symbol}&depth={depth}")
    assert status == 200, rows
    assert isinstance(rows, list)
    return rows


def health(port: int) -> dict[str, Any]:
    status, body, _ = http_get(port, "/healthz")
    assert status == 200, body
    assert isinstance(body, dict)
    return body


async def recv_json(ws: ClientConnection) -> Any:
    return orjson.loads(await asyncio.wait_for(ws.recv(), RECV_SECONDS))


async def recv_until_idle(ws: ClientConnection, port: int) -> list[str]:
    """Every frame until the exchange is idle (market stopped, queues empty) and the line is quiet."""
    frames: list[str] = []
    deadline = time.monotonic() + IDLE_DEADLINE_SECONDS
    while time.monotonic() < deadline:
        try:
            frames.append(str(await asyncio.wait_for(ws.recv(), QUIET_SECONDS)))
        except TimeoutError:
            if (await asyncio.to_thread(health, port))["idle"]:
                return frames
    raise AssertionError(f"the exchange was not idle after {IDLE_DEADLINE_SECONDS}s ({len(frames)} frames)")


async def recv_until_closed(ws: ClientConnection) -> list[str]:
    """Every frame until the server ends the connection."""
    frames: list[str] = []
    try:
        async with asyncio.timeout(IDLE_DEADLINE_SECONDS):
            while True:
                frames.append(str(await ws.recv()))
    except ConnectionClosed:
        return frames


def tables_only(frames: list[str]) -> list[dict[str, Any]]:
    """The table frames of `frames`, decoded."""
    decoded = [orjson.loads(frame) for frame in frames if frame.startswith('{"table"')]
    return [message for message in decoded if isinstance(message, dict)]


@dataclass
class Book:
    """One symbol's L2 book rebuilt from frames; an update/delete without price takes it from the id."""

    rows: dict[tuple[str, int], tuple[float, int]] = field(default_factory=dict)

    def apply(self, message: dict[str, Any]) -> None:
        action = message["action"]
        if action == "partial":
            self.rows.clear()
        for row in message["data"]:
            key = (row["side"], row["id"])
            if action in ("partial", "insert"):
                assert key not in self.rows, f"insert of a known level {row}"
                self.rows[key] = (row["price"], row["size"])
            elif action == "update":
                assert key in self.rows, f"update of an unknown level {row}"
                price = row.get("price", self.rows[key][0])
                assert price == self.rows[key][0], f"update moved a level {row}"
                self.rows[key] = (price, row["size"])
            else:
                assert key in self.rows, f"delete of an unknown level {row}"
                del self.rows[key]

    def levels(self, side: str) -> list[tuple[float, int, int]]:
        """`(price, size, id)` of one side, best first."""
        levels = [(price, size, ident) for (row_side, ident), (price, size) in self.rows.items()
                  if row_side == side]
        return sorted(levels, reverse=side == "Buy")

    def top(self, depth: int) -> tuple[list[list[float]], list[list[float]]]:
        """`(bids, asks)` as orderBook10 writes them: `[price, size]`, best first."""
        return ([[price, size] for price, size, _ in self.levels("Buy")[:depth]],
                [[price, size] for price, size, _ in self.levels("Sell")[:depth]])

    def as_rest(self) -> list[tuple[str, int, float, int]]:
        """`(side, id, price, size)` in the REST order: price descending, sells then buys."""
        sells = [("Sell", ident, price, size) for price, size, ident in reversed(self.levels("Sell"))]
        buys = [("Buy", ident, price, size) for price, size, ident in self.levels("Buy")]
        return sells + buys


def rest_levels(rows: list[dict[str, Any]]) -> list[tuple[str, int, float, int]]:
    return [(row["side"], row["id"], row["price"], row["size"]) for row in rows]
