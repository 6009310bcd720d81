"""Hand-made orderBook10 entries for the top10 tests, written with the stream codec exactly as ingest writes them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import redis
from redis.typing import EncodableT, FieldT

from services.core.activity import signal_command
from services.core.entries import encode_entry
from services.core.keys import INGEST_ALIVE_RENEW, INGEST_ALIVE_TTL_MS, TOP10_GROUP, Keys
from testkit.harness import ServiceProcess, wait_until

BASE_US = 1_767_225_600_000_000
"""2026-01-01T00:00:00Z in epoch microseconds: exchange times in the tests are offsets from it."""
SESSION = "testsession"
"""The ingest session of the entries the tests write, unless they say otherwise."""

RunService = Callable[..., ServiceProcess]


def iso(ts_us: int) -> str:
    """The BitMEX rendering of an exchange time: milliseconds and a Z."""
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ts_us)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class Snapshot:
    """One orderBook10 row as sent, and the stream id it got."""

    symbol: str
    ts_us: int
    bids: list[list[float | int]]
    asks: list[list[float | int]]
    stream_id: str = ""

    @property
    def timestamp(self) -> str:
        return iso(self.ts_us)

    def frame(self) -> str:
        row = {"symbol": self.symbol, "bids": self.bids, "asks": self.asks, "timestamp": self.timestamp}
        return orjson.dumps({"table": "orderBook10", "action": "update", "data": [row]}).decode()


def snapshot(symbol: str, ts_ms: int, mid: float = 1000.0) -> Snapshot:
    """A valid top 10 around `mid` at exchange time BASE + `ts_ms` milliseconds."""
    return snapshot_at(symbol, BASE_US + ts_ms * 1000, mid)


def snapshot_at(symbol: str, ts_us: int, mid: float = 1000.0) -> Snapshot:
    """A valid top 10 around `mid` at exchange time `ts_us` (epoch microseconds, cut to the milliseconds that
    BitMEX timestamps carry)."""
    ts_us -= ts_us % 1000
    bids: list[list[float | int]] = [[mid - 0.5 * (level + 1), 100 + level] for level in range(10)]
    asks: list[list[float | int]] = [[mid + 0.5 * (level + 1), 200 + level] for level in range(10)]
    return Snapshot(symbol, ts_us, bids, asks)


def add(client: redis.Redis, keys: Keys, *snapshots: Snapshot, seq: int = 1, session: str = SESSION,
        register: bool = True) -> list[Snapshot]:
    """XADD each snapshot to its symbol's ob10 stream (registering the symbol unless told not to); return them
    with their ids."""
    pipe = client.pipeline(transaction=False)
    for offset, item in enumerate(snapshots):
        if register:
            pipe.sadd(keys.symbols, item.symbol)
        fields = encode_entry(item.frame(), "orderBook10", "update", session, seq + offset, time.time_ns() // 1000)
        pipe.xadd(keys.ob10_stream(item.symbol), _fields(fields))
    if snapshots:
        signal = signal_command(keys.activity("ob10"), [item.symbol for item in snapshots])
        pipe.execute_command(*signal)  # type: ignore[no-untyped-call]
    replies = pipe.execute()[:len(snapshots) * (2 if register else 1)]
    ids = [_text(reply) for reply in (replies[1::2] if register else replies)]
    return [Snapshot(item.symbol, item.ts_us, item.bids, item.asks, stream_id)
            for item, stream_id in zip(snapshots, ids, strict=True)]


def add_raw(client: redis.Redis, keys: Keys, symbol: str, fields: dict[str, str]) -> str:
    """XADD arbitrary fields to `symbol`'s ob10 stream, e.g. a malformed entry."""
    client.sadd(keys.symbols, symbol)
    stream_id = _text(client.xadd(keys.ob10_stream(symbol), _fields(fields)))
    client.execute_command(*signal_command(keys.activity("ob10"), [symbol]))  # type: ignore[no-untyped-call]
    return stream_id


def cached(client: redis.Redis | redis.RedisCluster, keys: Keys, symbol: str) -> dict[str, Any]:
    """The top10 hash of `symbol` with bids and asks decoded; empty when absent."""
    raw: dict[str, Any] = {_text(key): _text(value) for key, value in client.hgetall(keys.top10(symbol)).items()}
    for side in ("bids", "asks"):
        if side in raw:
            raw[side] = orjson.loads(raw[side])
    return raw


def holds(client: redis.Redis, keys: Keys, expected: Snapshot) -> bool:
    """Whether the top10 key of `expected.symbol` holds exactly that snapshot."""
    value = cached(client, keys, expected.symbol)
    return (value.get("stream_id") == expected.stream_id and value.get("bids") == expected.bids
            and value.get("asks") == expected.asks and value.get("timestamp") == expected.timestamp
            and value.get("ts_us") == str(expected.ts_us))


def unfinished(client: redis.Redis, keys: Keys, symbols: list[str]) -> int:
    """Entries of `symbols`' streams that group top10 has not read yet (its lag) or not acknowledged.

    Before the group exists every entry counts. When Redis cannot tell the lag (entries were deleted
    from the stream), only the unacknowledged ones count.
    """
    total = 0
    for symbol in symbols:
        stream = keys.ob10_stream(symbol)
        groups = [group for group in client.xinfo_groups(stream) if group["name"] == TOP10_GROUP.encode()]
        if not groups:
            total += int(client.xlen(stream))
            continue
        total += int(groups[0]["pending"]) + int(groups[0]["lag"] or 0)
    return total


def consumers(client: redis.Redis, keys: Keys, symbol: str) -> dict[str, int]:
    """Group top10's members on `symbol`'s stream and their pending counts."""
    return {entry["name"].decode(): int(entry["pending"])
            for entry in client.xinfo_consumers(keys.ob10_stream(symbol), TOP10_GROUP)}


def start(run_service: RunService, env: dict[str, str], name: str, **settings: str) -> ServiceProcess:
    """`bookstream top10` as consumer `name`, healthy."""
    return run_service("top10", env={**env, "INSTANCE_NAME": name, **settings}, name=name)


def wait_for_all(client: redis.Redis, keys: Keys, expected: list[Snapshot], timeout: float = 20) -> None:
    """Until every key holds its expected snapshot and the group has read and acknowledged every entry."""
    symbols = sorted({item.symbol for item in expected})
    wait_until(lambda: all(holds(client, keys, item) for item in expected)
               and unfinished(client, keys, symbols) == 0, timeout, "every key to hold its newest snapshot")


def newest_per_symbol(snapshots: list[Snapshot]) -> list[Snapshot]:
    newest: dict[str, Snapshot] = {}
    for item in snapshots:
        current = newest.get(item.symbol)
        if current is None or (item.ts_us, item.stream_id) > (current.ts_us, current.stream_id):
            newest[item.symbol] = item
    return list(newest.values())


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _fields(fields: dict[str, str]) -> dict[FieldT, EncodableT]:
    # redis-py's dict parameter is invariant in its key and value types: a dict[str, str] is refused as is.
    return {name: value for name, value in fields.items()}


class Heartbeat:
    """Renews ingest liveness keys as a healthy ingest does, until told to stop for a session or for all."""

    def __init__(self, client: redis.Redis, keys: Keys, *sessions: str) -> None:
        self._client, self._keys = client, keys
        self._sessions = set(sessions)
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self.last_renewal: dict[str, float] = {}
        """session -> time.monotonic() of its last renewal."""
        self._renew()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def start(self, session: str) -> None:
        with self._lock:
            self._sessions.add(session)
        self._renew()

    def stop(self, session: str) -> float:
        """Stop renewing `session` (its key then expires as after `kill -9`); return the time of its last renewal."""
        with self._lock:
            self._sessions.discard(session)
            return self.last_renewal[session]

    def close(self) -> None:
        self._stopped.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stopped.wait(INGEST_ALIVE_RENEW / 2):
            self._renew()

    def _renew(self) -> None:
        with self._lock:
            for session in self._sessions:
                try:
                    self._client.set(self._keys.ingest_alive(session), "test-ingest", px=INGEST_ALIVE_TTL_MS)
                except redis.RedisError:
                    continue  # a test that stops Redis; the next renewal retries
                self.last_renewal[session] = time.monotonic()


class ChannelListener:
    """A strategy's view: subscribed to top10 channels, collecting the decoded messages."""

    def __init__(self, client: redis.Redis, *channels: str) -> None:
        # redis-py leaves the synchronous pub/sub API unannotated.
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        self._pubsub.subscribe(*channels)
        self.messages: list[dict[str, Any]] = []

    def collect(self, count: int, timeout: float = 10) -> list[dict[str, Any]]:
        """Wait until `count` messages arrived in all (or `timeout` passed); return them all."""
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            message = self._pubsub.get_message(timeout=0.1)
            if message is not None:
                self.messages.append(orjson.loads(message["data"]))
        return self.messages

    def close(self) -> None:
        self._pubsub.close()
