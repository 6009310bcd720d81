"""What the ingest service tests share: starting the exchange and ingest, reading streams back, and an
independent rebuild of a book from a stream to hold against the exchange's REST truth.

The rebuild is deliberately naive (a dict keyed by side and id) and shares no code with the book engine.
"""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass
from typing import Any

import orjson

from services.core.entries import StreamEntry, decode_entry
from services.core.keys import Keys
from testkit.harness import ServiceProcess, free_port, redis_client, wait_until
from tests.conftest import RunService

Levels = dict[tuple[str, int], tuple[int, float]]


@dataclass(frozen=True, slots=True)
class Exchange:
    port: int
    process: ServiceProcess

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/realtime"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as reply:
            return orjson.loads(reply.read())

    def fault(self, name: str, **query: float) -> Any:
        params = "&".join(f"{key}={value}" for key, value in query.items())
        return self.get(f"/_faults/{name}" + (f"?{params}" if params else ""))

    def idle(self) -> bool:
        return bool(self.get("/healthz")["idle"])

    def truth(self, symbol: str) -> Levels:
        rows = self.get(f"/api/v1/orderBook/L2?symbol={symbol}&depth=0")
        return {(row["side"], row["id"]): (row["size"], row["price"]) for row in rows}


def start_exchange(run_service: RunService, env: dict[str, str], *flags: str) -> Exchange:
    port = free_port()
    process = run_service("exchange", "--host", "127.0.0.1", "--port", str(port), *flags, env=env,
                          name="exchange")
    return Exchange(port, process)


def start_ingest(run_service: RunService, env: dict[str, str], exchange: Exchange, symbols: str,
                 *flags: str, **settings: str) -> ServiceProcess:
    return run_service("ingest", *flags, env=env | {"BITMEX_WS_URL": exchange.url, "SYMBOLS": symbols, **settings},
                       name="ingest")


def read_stream(redis_url: str, stream: str) -> list[StreamEntry]:
    client = redis_client(redis_url)
    try:
        raw: Any = client.xrange(stream)
    finally:
        client.close()
    return [decode_entry(stream_id, fields) for stream_id, fields in raw]


def l2(redis_url: str, prefix: str, symbol: str) -> list[StreamEntry]:
    return read_stream(redis_url, Keys(prefix).l2_stream(symbol))


def sessions_of(entries: list[StreamEntry]) -> list[list[StreamEntry]]:
    """The entries split by session, asserting each session is contiguous with seq 1, 2, 3... no holes."""
    runs: list[list[StreamEntry]] = []
    for entry in entries:
        if not runs or runs[-1][0].session != entry.session:
            assert all(run[0].session != entry.session for run in runs), f"session {entry.session} interleaved"
            runs.append([])
        runs[-1].append(entry)
    for run in runs:
        assert [entry.seq for entry in run] == list(range(1, len(run) + 1)), f"seq holes in {run[0].session}"
    return runs


def rebuild(entries: list[StreamEntry]) -> Levels:
    """The book at the end of an l2 stream: each partial starts it afresh, a gap voids it."""
    book: Levels | None = None
    for entry in entries:
        if entry.is_gap:
            book = None
            continue
        message = orjson.loads(entry.frame)
        if message["action"] == "partial":
            book = {}
        if book is None:
            continue
        for row in message["data"]:
            key = (row["side"], row["id"])
            if message["action"] == "delete":
                del book[key]
            elif message["action"] == "update":
                book[key] = (row["size"], row.get("price", book[key][1]))
            else:
                book[key] = (row["size"], row["price"])
    assert book is not None, "the stream ends without a book (no partial after the last gap)"
    return book


def buffer_entries(ingest: ServiceProcess) -> int:
    _, body = ingest.health()
    return int(orjson.loads(body)["buffer"]["entries"]) if body else -1


def health_detail(ingest: ServiceProcess) -> dict[str, Any]:
    """The /healthz body plus its HTTP `status` (0, and nothing else, while nothing answers)."""
    status, body = ingest.health()
    detail: dict[str, Any] = orjson.loads(body) if body else {}
    detail["status"] = status
    return detail


def received(ingest: ServiceProcess) -> float:
    """Every message ingest has received, by its metrics."""
    return sum(ingest.metric(name) for name in ("bookstream_ingest_frames_total", "bookstream_ingest_messages_total",
                                                "bookstream_ingest_malformed_frames_total"))


def wait_settled(exchange: Exchange, ingest: ServiceProcess, timeout: float = 30) -> None:
    """Until the exchange has sent everything, ingest has received it all (its count holds still) and
    published it all."""
    last = [-1.0]

    def settled() -> bool:
        count = received(ingest)
        still, last[0] = count == last[0], count
        return still and exchange.idle() and buffer_entries(ingest) == 0

    wait_until(settled, timeout, "exchange idle, ingest caught up and drained", interval=0.3)
