"""Helpers for the l2builder service tests: streams written the way ingest writes them, an independent
reconstruction of the expected books, and waits on what l2builder persisted.

The reconstruction is deliberately naive (a dict of id -> level, sorted at the end) and shares no code
with the book engine, so agreeing with it means something.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import orjson
import pymongo
import redis

from services.core.activity import signal_command
from services.core.bookdoc import book_levels
from services.core.capture import iter_capture
from services.core.entries import encode_entry, encode_gap
from services.core.keys import INGEST_ALIVE_RENEW, INGEST_ALIVE_TTL_MS, L2BUILDER_GROUP, Keys
from testkit.harness import ServiceProcess, wait_until

TABLE = "orderBookL2"
Levels = dict[str, list[list[Any]]]


@dataclass(frozen=True, slots=True)
class Frame:
    symbol: str
    action: str
    text: str
    recv_us: int


def capture_frames(path: Path) -> list[Frame]:
    """The orderBookL2 frames of a capture, in order (the captures never mix symbols in a frame)."""
    frames = []
    for recv_time, text in iter_capture(path):
        if not text.startswith('{"table":"orderBookL2"'):
            continue
        message = orjson.loads(text)
        rows = message["data"]
        symbol = rows[0]["symbol"] if rows else message["filter"]["symbol"]
        frames.append(Frame(symbol, message["action"], text, int(recv_time * 1_000_000)))
    return frames


def make_frame(symbol: str, action: str, rows: list[tuple[int, str, int | None, float | None]]) -> Frame:
    """A current-format frame from (id, side, size, price) rows; None leaves a field out."""
    data = []
    for ident, side, size, price in rows:
        row: dict[str, Any] = {"symbol": symbol, "id": ident, "side": side}
        if size is not None:
            row["size"] = size
        if price is not None:
            row["price"] = price
        data.append(row)
    text = orjson.dumps({"table": TABLE, "action": action, "data": data, "filter": {"symbol": symbol}}).decode()
    return Frame(symbol, action, text, time.time_ns() // 1000)


def reconstruct(frames: Iterable[Frame]) -> tuple[dict[str, Levels], list[bool]]:
    """Expected books per symbol, and for each frame whether a correct builder applies it."""
    books: dict[str, dict[int, list[Any]]] = {}
    applied = []
    for frame in frames:
        message = orjson.loads(frame.text)
        if frame.action == "partial":
            books[frame.symbol] = {}
        book = books.get(frame.symbol)
        applied.append(book is not None)
        if book is None:
            continue
        for row in message["data"]:
            if frame.action in ("partial", "insert"):
                book[row["id"]] = [row["side"], row["price"], row["size"]]
            elif frame.action == "update":
                book[row["id"]][2] = row["size"]
            else:
                del book[row["id"]]
    expected = {}
    for symbol, book in books.items():
        bids = sorted(([price, size, ident] for ident, (side, price, size) in book.items() if side == "Buy"),
                      key=lambda level: -level[0])
        asks = sorted(([price, size, ident] for ident, (side, price, size) in book.items() if side == "Sell"),
                      key=lambda level: level[0])
        expected[symbol] = {"bids": bids, "asks": asks}
    return expected, applied


class Feed:
    """Writes l2 stream entries like ingest: per symbol a session and a seq without holes.

    With `alive` every write also sets the session's liveness key without expiry, as an ingest that
    renews it for ever; without, the test sets it itself (`Liveness`)."""

    def __init__(self, redis_url: str, prefix: str, session: str = "session-1", alive: bool = True) -> None:
        self.client: redis.Redis = redis.Redis.from_url(redis_url, decode_responses=True)
        self.keys = Keys(prefix)
        self.session = session
        self.alive = alive
        self.seq: dict[str, int] = defaultdict(int)
        self.last_id: dict[str, str] = {}
        self._signalled: set[str] = set()
        """Symbols appended to in the pipeline being built: its activity signal names them."""

    def _add(self, symbol: str, fields: dict[str, str], pipe: Any) -> None:
        pipe.xadd(self.keys.l2_stream(symbol), fields)
        pipe.sadd(self.keys.symbols, symbol)
        self._signalled.add(symbol)

    def _next_seq(self, symbol: str) -> int:
        self.seq[symbol] += 1
        return self.seq[symbol]

    def frames(self, frames: Iterable[Frame]) -> None:
        pipe = self.client.pipeline(transaction=False)
        order = []
        for frame in frames:
            fields = encode_entry(frame.text, TABLE, frame.action, self.session, self._next_seq(frame.symbol),
                                  frame.recv_us)
            self._add(frame.symbol, fields, pipe)
            order.append(frame.symbol)
        self._record(order, self._execute(pipe))

    def gap(self, symbol: str, reason: str) -> None:
        fields = encode_gap(TABLE, self.session, self._next_seq(symbol), time.time_ns() // 1000, reason)
        self.raw(symbol, fields)

    def raw(self, symbol: str, fields: dict[str, str]) -> None:
        pipe = self.client.pipeline(transaction=False)
        self._add(symbol, fields, pipe)
        self._record([symbol], self._execute(pipe))

    def _execute(self, pipe: Any) -> list[Any]:
        """Run the pipeline, with the activity signal (services.core.activity) and, `alive`, the liveness
        write; the replies, two per entry."""
        extra = [signal_command(self.keys.activity("l2"), self._signalled)] if self._signalled else []
        self._signalled = set()
        for command in extra:
            pipe.execute_command(*command)
        if self.alive:
            pipe.set(self.keys.ingest_alive(self.session), "feed")
            extra.append(("SET",))
        replies = cast(list[Any], pipe.execute())
        return replies[:len(replies) - len(extra)]

    def skip_seq(self, symbol: str) -> None:
        """Lose the next entry, as if ingest's write had vanished (a hole)."""
        self._next_seq(symbol)

    def new_session(self, session: str) -> None:
        self.session = session
        self.seq.clear()

    def _record(self, symbols: list[str], replies: list[Any]) -> None:
        for symbol, stream_id in zip(symbols, replies[::2], strict=True):
            self.last_id[symbol] = stream_id

    def paced(self, frames: list[Frame], seconds: float, chunk: int = 50) -> Publisher:
        """Publish `frames` spread over about `seconds` from a background thread."""
        chunks = [frames[start:start + chunk] for start in range(0, len(frames), chunk)]
        publisher = Publisher(self, chunks, seconds / max(len(chunks), 1))
        publisher.start()
        return publisher

    def control_requests(self) -> list[dict[str, str]]:
        entries = cast(list[tuple[str, dict[str, str]]], self.client.xrange(self.keys.control))
        return [fields for _, fields in entries]

    def pending(self, symbol: str) -> int:
        return int(self.client.xpending(self.keys.l2_stream(symbol), L2BUILDER_GROUP)["pending"])

    def lease_holders(self) -> dict[str, str | None]:
        return {symbol: cast(str | None, self.client.get(self.keys.lease(symbol))) for symbol in self.last_id}


class Liveness(threading.Thread):
    """Renews one session's liveness key the way ingest does (TTL INGEST_ALIVE_TTL_MS, every
    INGEST_ALIVE_RENEW) until `stop`; the key then expires by itself."""

    def __init__(self, redis_url: str, prefix: str, session: str) -> None:
        super().__init__(daemon=True)
        self.client: redis.Redis = redis.Redis.from_url(redis_url, decode_responses=True)
        self.session = session
        self.key = Keys(prefix).ingest_alive(session)
        self._stopping = threading.Event()
        self.renewals = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                self.client.set(self.key, "test-ingest", px=INGEST_ALIVE_TTL_MS)
                self.renewals += 1
                self._stopping.wait(INGEST_ALIVE_RENEW)
        except BaseException as exc:
            self.error = exc

    def stop(self) -> None:
        self._stopping.set()
        self.join(10)
        if self.error is not None:
            raise self.error


class Publisher(threading.Thread):
    """A background publisher whose failure is raised by `finish`, not lost in its thread."""

    def __init__(self, feed: Feed, chunks: list[list[Frame]], pause: float) -> None:
        super().__init__(daemon=True)
        self.feed, self.chunks, self.pause = feed, chunks, pause
        self.published = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for part in self.chunks:
                self.feed.frames(part)
                self.published += len(part)
                time.sleep(self.pause)
        except BaseException as exc:
            self.error = exc

    def finish(self, timeout: float = 60) -> None:
        self.join(timeout)
        assert not self.is_alive(), "the publisher did not finish"
        if self.error is not None:
            raise self.error


class Books:
    """The documents l2builder wrote."""

    def __init__(self, mongo_url: str, database: str) -> None:
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_url, serverSelectionTimeoutMS=2000)
        self.collection = client[database]["orderbooks"]

    def get(self, symbol: str) -> dict[str, Any] | None:
        try:
            document: dict[str, Any] | None = self.collection.find_one({"_id": symbol})
        except pymongo.errors.PyMongoError:
            return None
        return document

    def all(self) -> dict[str, dict[str, Any]]:
        return {document["_id"]: document for document in self.collection.find()}

    def levels(self) -> dict[str, Levels]:
        return {symbol: book_levels(doc) for symbol, doc in self.all().items()}


def settled(feed: Feed, books: Books) -> bool:
    """Every symbol's document is at its stream's last entry and nothing is left pending."""
    for symbol, last_id in feed.last_id.items():
        document = books.get(symbol)
        if document is None or document.get("stream_id") != last_id or feed.pending(symbol):
            return False
    return True


def wait_settled(feed: Feed, books: Books, timeout: float = 30) -> None:
    wait_until(lambda: settled(feed, books), timeout, "every book persisted up to its last entry, all acked",
               interval=0.1)


def owned_symbols(process: ServiceProcess) -> list[str]:
    status, body = process.health()
    assert status == 200, body
    symbols: list[str] = orjson.loads(body)["symbols"]
    return symbols


def log_values(process: ServiceProcess, event: str, name: str) -> Iterator[str]:
    """The values of field `name` on every log line of `event`."""
    for line in process.logs().splitlines():
        if f"event={event} " in line or line.endswith(f"event={event}"):
            for part in line.split(" "):
                if part.startswith(f"{name}="):
                    yield part.split("=", 1)[1]
