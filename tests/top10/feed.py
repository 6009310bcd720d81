"""Hand-made orderBook10 entries for the top10 tests, written with the stream codec exactly as ingest writes them."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import redis
from redis.typing import EncodableT, FieldT

from services.common.entries import encode_entry
from services.common.keys import TOP10_GROUP, Keys

BASE_US = 1_767_225_600_000_000
"""2026-01-01T00:00:00Z in epoch microseconds: exchange times in the tests are offsets from it."""


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
    bids: list[list[float | int]] = [[mid - 0.5 * (level + 1), 100 + level] for level in range(10)]
    asks: list[list[float | int]] = [[mid + 0.5 * (level + 1), 200 + level] for level in range(10)]
    return Snapshot(symbol, BASE_US + ts_ms * 1000, bids, asks)


def add(client: redis.Redis, keys: Keys, *snapshots: Snapshot, seq: int = 1) -> list[Snapshot]:
    """XADD each snapshot to its symbol's ob10 stream (registering the symbol); return them with their ids."""
    pipe = client.pipeline(transaction=False)
    for offset, item in enumerate(snapshots):
        pipe.sadd(keys.symbols, item.symbol)
        fields = encode_entry(item.frame(), "orderBook10", "update", "testsession", seq + offset,
                              time.time_ns() // 1000)
        pipe.xadd(keys.ob10_stream(item.symbol), _fields(fields))
    replies = pipe.execute()
    ids = [_text(reply) for reply in replies[1::2]]
    return [Snapshot(item.symbol, item.ts_us, item.bids, item.asks, stream_id)
            for item, stream_id in zip(snapshots, ids, strict=True)]


def add_raw(client: redis.Redis, keys: Keys, symbol: str, fields: dict[str, str]) -> str:
    """XADD arbitrary fields to `symbol`'s ob10 stream, e.g. a malformed entry."""
    client.sadd(keys.symbols, symbol)
    return _text(client.xadd(keys.ob10_stream(symbol), _fields(fields)))


def cached(client: redis.Redis, keys: Keys, symbol: str) -> dict[str, Any]:
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


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _fields(fields: dict[str, str]) -> dict[FieldT, EncodableT]:
    # redis-py's dict parameter is invariant in its key and value types: a dict[str, str] is refused as is.
    return {name: value for name, value in fields.items()}


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
