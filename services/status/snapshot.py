"""One snapshot of the whole system as plain frozen dataclasses (read by collect.py from Redis and MongoDB).

The dataclasses are the `bookstream status --json` schema: orjson serializes them field by field in
the order written here, tuples as arrays, None as null. Schema `bookstream.status/1`:

    {"schema": "bookstream.status/1", "taken_at_us": int,      # local clock, epoch microseconds
     "source": "settings" | "dev",                              # "dev": found through `bookstream dev`'s state file
     "key_prefix": str,
     "redis": {"url": str (password masked), "ok": bool, "error": str|null,
               "evicting_policy": str|null,                    # maxmemory-policy when it may evict, else null
               "nodes": [{"address": str, "ok": bool, "error": str|null}]},   # a cluster's primaries; [] on one server
     "mongo": {"url": str (password masked), "database": str, "ok": bool, "error": str|null},
     "symbols": [{
        "symbol": str,
        "l2": Stream|null, "ob10": Stream|null,                # null: the stream does not exist
        "owner": {"instance": str|null, "epoch": int|null, "ttl_s": float|null},   # l2builder lease
        "top10": {"age_s": float|null, "stream_id": str|null, "timestamp": str|null,
                  "best_bid": [price, size]|null, "best_ask": [price, size]|null} | null,
        "book": {"status": str|null, "reason": str|null, "age_s": float|null, "timestamp": str|null,
                 "bid_depth": int, "ask_depth": int, "best_bid": [price, size]|null, "best_ask": [price, size]|null,
                 "stream_id": str|null, "session": str|null, "seq": int|null, "epoch": int|null,
                 "version": str|null} | null}],                # null: no MongoDB document (or MongoDB down)
     "instances": {"ingest": [session], "top10": [consumer], "l2builder": [member]},
     "problems": [{"kind": str, "severity": "error"|"warning", "symbol": str|null,
                   "subject": "redis"|"mongo"|"l2"|"ob10"|"l2:group"|"ob10:group"|"owner"|"book"|"top10",
                   "detail": str}],
     "ignored_names": int}                                      # symbol names outside SYMBOL_PATTERN, not shown

    Stream = {"key": str, "length": int, "entries_added": int, "first_id": str|null, "last_id": str|null,
              "last_age_s": float|null,                         # age of the newest entry, by the Redis clock
              "last_session": str|null, "rate_per_s": float|null,   # entries/s since the previous sample
              "groups": [{"name": str, "pending": int, "lag": int|null, "entries_read": int|null,
                          "last_delivered_id": str,
                          "consumers": [{"name": str, "pending": int, "idle_s": float}]}],
              "last_session_alive": bool|null}                  # the liveness key of last_session exists

On a cluster every primary is walked (SCAN on each, so every symbol's keys are found wherever their slot
lives) and each one's reachability is reported in `redis.nodes`; the per-symbol reads go in one pipeline
that redis-py's cluster client splits per node.

Fields are only ever added to this schema, never renamed or removed, without changing the version.
Ages are seconds: of stream entries and top10 keys by the Redis clock (which wrote them), of books by this
host's clock against `updated_at`. `lag` is Redis 7's XINFO GROUPS lag (null when Redis cannot tell).
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

SCHEMA = "bookstream.status/1"

Level = tuple[float, float]


@dataclass(frozen=True, slots=True)
class Consumer:
    name: str
    pending: int
    idle_s: float


@dataclass(frozen=True, slots=True)
class Group:
    name: str
    pending: int
    lag: int | None
    entries_read: int | None
    last_delivered_id: str
    consumers: tuple[Consumer, ...]


@dataclass(frozen=True, slots=True)
class Stream:
    key: str
    length: int
    entries_added: int
    first_id: str | None
    last_id: str | None
    last_age_s: float | None
    last_session: str | None
    rate_per_s: float | None
    groups: tuple[Group, ...]
    last_session_alive: bool | None = None

    def group(self, name: str) -> Group | None:
        return next((group for group in self.groups if group.name == name), None)


@dataclass(frozen=True, slots=True)
class Owner:
    instance: str | None
    epoch: int | None
    ttl_s: float | None


@dataclass(frozen=True, slots=True)
class Top10:
    age_s: float | None
    stream_id: str | None
    timestamp: str | None
    best_bid: Level | None
    best_ask: Level | None
    status: str | None = None
    """`live` or `stale` (with `reason`), as top10 wrote it; None for a key older than the field."""
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Book:
    status: str | None
    reason: str | None
    age_s: float | None
    timestamp: str | None
    bid_depth: int
    ask_depth: int
    best_bid: Level | None
    best_ask: Level | None
    stream_id: str | None
    session: str | None
    seq: int | None
    epoch: int | None
    version: str | None


@dataclass(frozen=True, slots=True)
class SymbolStatus:
    symbol: str
    l2: Stream | None
    ob10: Stream | None
    owner: Owner
    top10: Top10 | None
    book: Book | None


@dataclass(frozen=True, slots=True)
class RedisNode:
    """One primary of a cluster, and whether it answered the walk."""

    address: str
    ok: bool
    error: str | None


@dataclass(frozen=True, slots=True)
class RedisEndpoint:
    url: str
    ok: bool
    error: str | None
    evicting_policy: str | None = None
    nodes: tuple[RedisNode, ...] = ()


@dataclass(frozen=True, slots=True)
class MongoEndpoint:
    url: str
    database: str
    ok: bool
    error: str | None


@dataclass(frozen=True, slots=True)
class Instances:
    """Who is alive: ingest sessions that wrote lately or keep their liveness key, top10 consumers that read
    lately, l2builder members."""

    ingest: tuple[str, ...]
    top10: tuple[str, ...]
    l2builder: tuple[str, ...]
    subscriptions: tuple[Subscriptions, ...] = ()
    """Of each live ingest session, as its liveness key tells: how many topics it holds and which were rejected."""


@dataclass(frozen=True, slots=True)
class Subscriptions:
    session: str
    instance: str
    subscribed: int | None
    rejected: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding; `subject` says which part it is about, so a table can highlight the right cell."""

    kind: str
    severity: str
    symbol: str | None
    subject: str
    detail: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    schema: str
    taken_at_us: int
    source: str
    key_prefix: str
    redis: RedisEndpoint
    mongo: MongoEndpoint
    symbols: tuple[SymbolStatus, ...]
    instances: Instances
    problems: tuple[Problem, ...]
    ignored_names: int = 0

    def to_json(self) -> bytes:
        return orjson.dumps(self)
