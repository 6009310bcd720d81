"""How `bookstream status` reads one snapshot (snapshot.py) from Redis and MongoDB: `Collector`.

Redis is read in one pipeline of the reads of every symbol (reads.py), MongoDB in one aggregation over every
book whose depths and best levels the server computes; what either holds is read leniently (a field of the
wrong type becomes null), since any process, or a person, may have written it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pymongo
import pymongo.errors
import redis
from redis.exceptions import NoScriptError

from services.core.keys import BOOKS_COLLECTION, SESSION_PATTERN, SYMBOL_PATTERN, TOP10_GROUP, Keys
from services.core.liveness import IngestLiveness
from services.core.slots import cluster_node_urls, is_cluster_url
from services.core.text import as_text
from services.runtime.config import mask_url, redact
from services.runtime.redis_client import connect, evicting_policy
from services.status.reads import STREAM_SUMMARY, SymbolReplies, ok, queue_reads, split_reads
from services.status.snapshot import (
    SCHEMA,
    Book,
    Consumer,
    Group,
    Instances,
    Level,
    MongoEndpoint,
    Owner,
    RedisEndpoint,
    RedisNode,
    Snapshot,
    Stream,
    Subscriptions,
    SymbolStatus,
    Top10,
)


def epoch_seconds(value: object) -> float | None:
    """A time as stored by whoever wrote it (BSON date, ISO text, epoch s/ms/µs number) in epoch seconds."""
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
        # Magnitude tells the unit apart: 1e11 s is the year 5138, 1e14 ms the year 5138 too.
        return number / 1e6 if number > 1e14 else number / 1e3 if number > 1e11 else number
    if isinstance(value, str):
        try:
            return epoch_seconds(datetime.fromisoformat(value.replace("Z", "+00:00")))
        except ValueError:
            return None
    return None


def stream_id_ms(stream_id: str) -> int:
    return int(stream_id.partition("-")[0])


def _age(now_s: float, then_s: float | None) -> float | None:
    return None if then_s is None else round(max(0.0, now_s - then_s), 3)


def _level(raw: object) -> Level | None:
    if isinstance(raw, list | tuple) and len(raw) >= 2:
        try:
            return float(raw[0]), float(raw[1])
        except (TypeError, ValueError):
            return None
    return None


def _first_level(json_text: str | None) -> Level | None:
    if not json_text:
        return None
    try:
        levels = orjson.loads(json_text)
    except orjson.JSONDecodeError:
        return None
    return _level(levels[0]) if isinstance(levels, list) and levels else None


def _int_or_none(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[call-overload, no-any-return]
    except (TypeError, ValueError):
        return None


def _text_or_none(value: object) -> str | None:
    if value is None:
        return None
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _first_clause(exc: Exception) -> str:
    """The gist of a driver error: pymongo appends its whole topology description to the cause."""
    return str(exc).split(" (configured timeouts")[0].split(", Timeout:")[0][:200]


class Collector:
    """Reads snapshots from one Redis and one MongoDB; keep it across `--watch` refreshes to reuse connections."""

    def __init__(self, redis_url: str, mongo_url: str, mongo_database: str, key_prefix: str,
                 source: str = "settings", live_idle_s: float = 30.0, symbols: tuple[str, ...] = ()) -> None:
        """`symbols` are shown even before anything exists for them (`bookstream dev` knows what to expect)."""
        self.keys = Keys(key_prefix)
        self.symbols = symbols
        self.source = source
        self.live_idle_s = live_idle_s
        self._redis_url, self._mongo_url, self._database = redis_url, mongo_url, mongo_database
        self._redis_client: redis.Redis | redis.RedisCluster | None = None
        self._nodes: list[RedisNode] = []
        self._mongo: pymongo.MongoClient[dict[str, Any]] | None = None

    @property
    def _redis(self) -> redis.Redis | redis.RedisCluster:
        # Made on first use, inside the error handling: a cluster client connects as it is made.
        if self._redis_client is None:
            self._redis_client = _open_redis(self._redis_url)
        return self._redis_client

    def close(self) -> None:
        if self._redis_client is not None:
            self._redis_client.close()
        if self._mongo is not None:
            self._mongo.close()

    def _mongo_client(self) -> pymongo.MongoClient[dict[str, Any]]:
        # Made on first use, inside the error handling: a `mongodb+srv://` name is resolved right here, and a
        # name that does not resolve is a finding to report, not a traceback.
        if self._mongo is None:
            self._mongo = pymongo.MongoClient(
                self._mongo_url, serverSelectionTimeoutMS=1500, connectTimeoutMS=1500, socketTimeoutMS=3000,
                tz_aware=True, appname="bookstream-status")
        return self._mongo

    def collect(self) -> Snapshot:
        """Read everything once; derived fields (`rate_per_s`, `problems`) are left for `problems.analyze`."""
        now_s = time.time()
        books, mongo, ignored = self._read_books(now_s)
        self._nodes = []
        try:
            symbols, instances, ignored_in_redis = self._read_redis(books)
            redis_endpoint = RedisEndpoint(mask_url(self._redis_url), True, None, self._evicting_policy(),
                                           tuple(self._nodes))
            ignored += ignored_in_redis
        except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
            if self._redis_client is not None:  # a cluster's map is read again next time
                self._redis_client.close()
                self._redis_client = None
            redis_endpoint = RedisEndpoint(mask_url(self._redis_url), False,
                                           f"{type(exc).__name__}: {redact(_first_clause(exc), self._redis_url)}",
                                           None, tuple(self._nodes))
            symbols = tuple(SymbolStatus(sym, None, None, Owner(None, None, None), None, book)
                            for sym, book in sorted(books.items()))
            instances = Instances((), (), ())
        return Snapshot(SCHEMA, int(now_s * 1e6), self.source, self.keys.prefix, redis_endpoint, mongo,
                        symbols, instances, (), ignored)

    def _evicting_policy(self) -> str | None:
        async def check() -> str | None:
            client = connect(self._redis_url, socket_timeout=3, client_name="bookstream-status")
            try:
                return await evicting_policy(client)
            finally:
                await client.aclose()

        try:
            return asyncio.run(check())
        except redis.RedisError:  # the reads just succeeded: Redis going away now is for the next sample
            return None

    def _read_books(self, now_s: float) -> tuple[dict[str, Book], MongoEndpoint, int]:
        pipeline: list[dict[str, Any]] = [{"$project": {
            "status": 1, "reason": 1, "updated_at": 1, "timestamp": 1, "stream_id": 1, "session": 1, "seq": 1,
            "epoch": 1, "version": 1,
            # The full books never cross the network: depths are stored beside the level map (layout 2) or
            # counted by the server in the arrays (layout 1), whose first levels are the best either way.
            "bid_depth": {"$ifNull": ["$bid_depth", {"$size": {"$ifNull": ["$bids", []]}}]},
            "ask_depth": {"$ifNull": ["$ask_depth", {"$size": {"$ifNull": ["$asks", []]}}]},
            "best_bid": {"$arrayElemAt": ["$bids", 0]}, "best_ask": {"$arrayElemAt": ["$asks", 0]}}}]
        url = mask_url(self._mongo_url)
        try:
            documents = list(self._mongo_client()[self._database][BOOKS_COLLECTION].aggregate(pipeline))
        except pymongo.errors.PyMongoError as exc:
            error = f"{type(exc).__name__}: {redact(_first_clause(exc), self._mongo_url)}"
            return {}, MongoEndpoint(url, self._database, False, error), 0
        names, ignored = _valid_symbols(str(doc["_id"]) for doc in documents)
        books = {str(doc["_id"]): Book(
            status=_text_or_none(doc.get("status")), reason=_text_or_none(doc.get("reason")),
            age_s=_age(now_s, epoch_seconds(doc.get("updated_at"))), timestamp=_text_or_none(doc.get("timestamp")),
            bid_depth=int(doc.get("bid_depth") or 0), ask_depth=int(doc.get("ask_depth") or 0),
            best_bid=_level(doc.get("best_bid")), best_ask=_level(doc.get("best_ask")),
            stream_id=_text_or_none(doc.get("stream_id")), session=_text_or_none(doc.get("session")),
            seq=_int_or_none(doc.get("seq")), epoch=_int_or_none(doc.get("epoch")),
            version=_text_or_none(doc.get("version"))) for doc in documents if str(doc["_id"]) in names}
        return books, MongoEndpoint(url, self._database, True, None), ignored

    def _discover_symbols(self) -> tuple[set[str], int]:
        """The symbols named in Redis, and how many names were not symbols (anyone may write keys there)."""
        found: list[str] = []
        # The walk comes first: on a cluster it notes every primary's reachability before any read can fail.
        for kind in ("l2", "ob10"):
            for key in self._scan(f"{self.keys.prefix}:{kind}:*", "stream"):
                try:
                    found.append(self.keys.symbol_of(as_text(key)))
                except ValueError:
                    continue
        found += [as_text(member) for member in self._redis.smembers(self.keys.symbols)]
        return _valid_symbols(found)

    def _sessions_with_a_key(self) -> set[str]:
        start = len(self.keys.ingest_alive(""))
        found = (as_text(key)[start:] for key in self._scan(self.keys.ingest_alive("*")))
        return {session for session in found if SESSION_PATTERN.fullmatch(session)}

    def _scan(self, match: str, kind: str | None = None) -> Iterator[Any]:
        """The keys matching `match` (of type `kind`) on one server, or on every primary of a cluster. The first
        walk of a snapshot notes each primary's reachability; one that fails fails the snapshot's Redis read,
        after the others were tried (so `redis.nodes` names every one that did not answer)."""
        client = self._redis
        if not isinstance(client, redis.RedisCluster):
            yield from client.scan_iter(match=match, _type=kind, count=1000)
            return
        walk = not self._nodes
        failed: Exception | None = None
        for node in client.get_primaries():  # type: ignore[no-untyped-call]
            address = f"{node.host}:{node.port}"
            try:
                keys = list(client.get_redis_connection(node).scan_iter(match=match, _type=kind, count=1000))
            except redis.RedisError as exc:
                failed = failed or exc
                if walk:
                    self._nodes.append(RedisNode(address, False, f"{type(exc).__name__}: "
                                                                 f"{redact(_first_clause(exc), self._redis_url)}"))
                continue
            if walk:
                self._nodes.append(RedisNode(address, True, None))
            yield from keys
        if failed is not None:
            raise failed

    def _alive(self, sessions: set[str]) -> dict[str, IngestLiveness]:
        """The ingest sessions among `sessions` whose liveness key exists, with what the key says."""
        ordered = sorted(sessions)
        pipe = self._redis.pipeline(transaction=False)
        for session in ordered:
            pipe.get(self.keys.ingest_alive(session))
        return {session: IngestLiveness.decode(value)
                for session, value in zip(ordered, pipe.execute(), strict=True) if value is not None}

    def _read_redis(self, books: dict[str, Book]) -> tuple[tuple[SymbolStatus, ...], Instances, int]:
        discovered, ignored = self._discover_symbols()
        names = sorted(discovered | set(books) | set(self.symbols))
        keys = self.keys
        results = self._pipelined_reads(names)
        if any(isinstance(result, NoScriptError) for result in results):  # Redis restarted or flushed its scripts
            self._redis.script_load(STREAM_SUMMARY.source)
            results = self._pipelined_reads(names)
        reads = split_reads(results, names)
        redis_now_ms = reads.redis_now_ms
        # Scores are expiry times on the Redis clock (l2builder's heartbeat uses TIME), so compare with it.
        members = tuple(name for name, expiry in reads.members or () if expiry > redis_now_ms)
        consumers = self._read_consumers(names, reads.symbols)
        # Sessions named by the streams, and those with a liveness key but nothing written yet (every topic
        # rejected, say): both are ingest's to report on.
        alive = self._alive({summary[4] for replies in reads.symbols
                             for summary in (replies.l2_summary, replies.ob10_summary) if summary and summary[4]}
                            | self._sessions_with_a_key())
        symbols = []
        for sym, replies in zip(names, reads.symbols, strict=True):
            ttl = replies.lease_pttl
            symbols.append(SymbolStatus(
                symbol=sym,
                l2=_stream(keys.l2_stream(sym), replies.l2_summary, replies.l2_groups, consumers, alive,
                           redis_now_ms),
                ob10=_stream(keys.ob10_stream(sym), replies.ob10_summary, replies.ob10_groups, consumers, alive,
                             redis_now_ms),
                owner=Owner(replies.lease, _int_or_none(replies.epoch),
                            ttl / 1000 if isinstance(ttl, int) and ttl >= 0 and replies.lease else None),
                top10=_top10(replies.top10, redis_now_ms / 1000),
                book=books.get(sym)))
        return tuple(symbols), self._instances(symbols, members, alive), ignored

    def _pipelined_reads(self, names: list[str]) -> list[Any]:
        pipe = self._redis.pipeline(transaction=False)
        queue_reads(pipe, self.keys, names)
        now = self._redis.time()
        results: list[Any] = pipe.execute(raise_on_error=False)
        return [now, *results]

    def _read_consumers(self, names: list[str], replies: list[SymbolReplies]) -> dict[tuple[str, str], list[Any]]:
        wanted: list[tuple[str, str]] = []
        for sym, symbol_replies in zip(names, replies, strict=True):
            for stream, groups in ((self.keys.l2_stream(sym), symbol_replies.l2_groups),
                                   (self.keys.ob10_stream(sym), symbol_replies.ob10_groups)):
                wanted.extend((stream, group["name"]) for group in groups or ())
        if not wanted:
            return {}
        pipe = self._redis.pipeline(transaction=False)
        for stream, group in wanted:
            pipe.xinfo_consumers(stream, group)
        return {pair: ok(found) or [] for pair, found in zip(wanted, pipe.execute(raise_on_error=False), strict=True)}

    def _instances(self, symbols: list[SymbolStatus], members: tuple[str, ...],
                   alive: dict[str, IngestLiveness]) -> Instances:
        sessions = set(alive)
        readers: set[str] = set()
        for status in symbols:
            for stream in (status.l2, status.ob10):
                if stream and stream.last_session and (stream.last_age_s or 0.0) < self.live_idle_s:
                    sessions.add(stream.last_session)
            group = status.ob10.group(TOP10_GROUP) if status.ob10 else None
            if group is not None:
                readers.update(c.name for c in group.consumers if c.idle_s < self.live_idle_s)
        subscriptions = tuple(Subscriptions(session, said.instance, said.subscribed, said.rejected)
                              for session, said in sorted(alive.items()))
        return Instances(tuple(sorted(sessions)), tuple(sorted(readers)), tuple(sorted(members)), subscriptions)


def _open_redis(url: str) -> redis.Redis | redis.RedisCluster:
    """Status's client of `url`: one server's, or a cluster's found through the first seed node that answers."""
    options: dict[str, Any] = {"decode_responses": True, "encoding_errors": "replace", "socket_timeout": 3,
                               "socket_connect_timeout": 2, "client_name": "bookstream-status"}
    if not is_cluster_url(url):
        return redis.Redis.from_url(url, **options)
    error: Exception | None = None
    for node in cluster_node_urls(url):
        try:
            return redis.RedisCluster.from_url(node, **options)
        except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
            error = exc
    raise redis.exceptions.ClusterError(f"no seed node answered: {error}")


def _valid_symbols(names: Iterable[str]) -> tuple[set[str], int]:
    """The names that are symbols (SYMBOL_PATTERN) and the count of the others, which are never shown."""
    valid: set[str] = set()
    ignored: set[str] = set()
    for name in names:
        (valid if SYMBOL_PATTERN.fullmatch(name) else ignored).add(name)
    return valid, len(ignored)


def _stream(key: str, summary: list[Any] | None, groups: list[dict[str, Any]] | None,
            consumers: dict[tuple[str, str], list[Any]], alive: Collection[str], redis_now_ms: int) -> Stream | None:
    if summary is None:
        return None
    length, entries_added, first_id, last_id, last_session = summary
    return Stream(
        key=key, length=int(length), entries_added=int(entries_added), first_id=first_id, last_id=last_id,
        last_age_s=None if last_id is None else round(max(0, redis_now_ms - stream_id_ms(last_id)) / 1000, 3),
        last_session=last_session, rate_per_s=None,
        groups=tuple(Group(
            name=group["name"], pending=int(group["pending"]), lag=_int_or_none(group.get("lag")),
            entries_read=_int_or_none(group.get("entries-read")), last_delivered_id=group["last-delivered-id"],
            consumers=tuple(Consumer(c["name"], int(c["pending"]), round(int(c["idle"]) / 1000, 3))
                            for c in consumers.get((key, group["name"]), ())))
            for group in sorted(groups or (), key=lambda g: str(g["name"]))),
        last_session_alive=None if last_session is None else last_session in alive)


def _top10(fields: list[str | None] | None, now_s: float) -> Top10 | None:
    if not fields or all(value is None for value in fields):
        return None
    updated_us, stream_id, timestamp, bids, asks, status, reason = fields
    updated = _int_or_none(updated_us)
    return Top10(age_s=_age(now_s, None if updated is None else updated / 1e6), stream_id=stream_id,
                 timestamp=timestamp, best_bid=_first_level(bids), best_ask=_first_level(asks),
                 status=status, reason=reason or None)

