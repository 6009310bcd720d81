"""The top10 service: every `<prefix>:ob10:{SYM}` stream, read in group `top10`, into `<prefix>:top10:SYM`.

One consumer per process. The read loop takes entries from all streams in one blocking XREADGROUP, writes
the newest snapshot of each symbol through the compare-and-set script, and acknowledges the batch once the
writes succeeded. The housekeeping loop joins the streams of newly seen symbols, claims entries that dead
consumers left pending, and removes members long gone. Any instance may process any entry: the script, not
the order of processing, decides what a key holds, so instances can be added, killed or restarted at will.
The liveness loop marks `stale` the keys whose ingest session is gone (see liveness.py); every instance
does it for every key, which the marking script makes harmless. A gap marker read from a stream marks its
key `stale` the same way, unless the key holds a snapshot from after the gap (mark_gap.lua).

Redis being down is a state, not a crash: each loop logs, counts, backs off and retries, and /healthz fails
once no Redis call has succeeded for HEALTH_STALE_AFTER seconds. Redis losing state (FLUSHALL, a failover
to a replica behind, eviction) is repaired: a vanished group is created again on every stream it served,
and the next snapshots rewrite the keys.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any, Final

from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.typing import KeyT, StreamIdT

from services.core.backoff import Backoff
from services.core.entries import PendingEntry
from services.core.keys import SESSION_LOST_AFTER, SESSION_PATTERN, SYMBOL_PATTERN, TOP10_GROUP, Keys
from services.core.liveness import INGEST_LOST, SessionTracker
from services.core.ratelimit import LogLimit
from services.core.text import as_text, excerpt
from services.runtime.config import Settings
from services.runtime.dependency import DependencyHealth
from services.runtime.health import safe_error
from services.runtime.logs import EventLog
from services.runtime.redis_client import EvictionWatch, connect, sessions_alive, stream_pairs
from services.runtime.redis_wire import RedisWire
from services.runtime.scripts import LuaScript, raise_first_error
from services.top10 import group, metrics
from services.top10.liveness import KeyLiveness, keys_to_mark
from services.top10.round_trip import round_trip
from services.top10.scripts import (
    MARK_GAP,
    MARK_STALE,
    STORE_TOP10,
    ScriptCall,
    mark_gap_call,
    mark_stale_call,
    run_pipelined,
    store_top10_call,
)
from services.top10.snapshots import Acks, BatchPlan, GapMark, Top10Write, plan_batch, stream_symbol

READ_BLOCK_MS: Final = 1000
WRITING_BLOCK_MS: Final = 10
"""BLOCK of a read sent with writes: their acknowledgement waits for its reply, so it must not wait long.
(Redis ends a short block at its next event-loop pass: within milliseconds when busy, 100 ms when idle.)"""
READ_COUNT: Final = 200
"""Entries per stream per read: large enough to drain a backlog quickly, small enough to keep batches short."""
SOCKET_TIMEOUT: Final = READ_BLOCK_MS / 1000 + 4.0
"""Longer than the block: redis-py ends a read that outlasts the socket timeout with an error."""
HOUSEKEEPING_INTERVAL: Final = 1.0
LIVENESS_INTERVAL: Final = 1.0
"""How often the sessions behind the keys are checked: the contract says at least once a second."""
SHOWN_SYMBOLS: Final = 20
"""Symbols named in one log line; the count says how many there were."""
SHUTDOWN_DRAIN_SECONDS: Final = 5.0
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 5.0

WRITES_APPLIED: Final = metrics.WRITES.labels("applied")
WRITE_REJECTIONS: Final = {0: metrics.WRITES.labels("older"), -1: metrics.WRITES.labels("duplicate")}

log = EventLog("top10")


class Top10Service:
    """One member of group `top10`; `main` runs it until `stop` is set, `health` backs /healthz."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._keys = Keys(settings.key_prefix)
        self._consumer = settings.instance_name
        # No retries inside redis-py: a retried XREADGROUP would read past entries that the failed attempt
        # may already have moved to our pending list. The loops below retry, re-reading that list first.
        self._redis = connect(settings.redis_url, SOCKET_TIMEOUT, f"top10:{self._consumer}")
        self._wire = RedisWire(settings.redis_url, SOCKET_TIMEOUT, f"top10:{self._consumer}")
        """The read loop's own connection (see `_process_new`); the other operations use `_redis`."""
        self._symbols: dict[str, str] = {}
        """symbol -> ob10 stream key, for every stream this consumer has joined."""
        self._stream_symbols: dict[bytes, str] = {}
        """ob10 stream key as Redis returns it -> its symbol, for the stream keys validated so far."""
        self._tolerance_us = int(settings.timestamp_tolerance * 1_000_000)
        self._sessions = SessionTracker()
        self._future_log, self._invalid_log = LogLimit(burst=1), LogLimit(burst=1)
        self._eviction = EvictionWatch(log)
        self._streams_joined = asyncio.Event()
        self._skipped_symbols: set[str] = set()
        self._unacknowledged: Acks = {}
        """Entries whose writes are done, acknowledged in the next round trip."""
        self._planned: BatchPlan | None = None
        """The batch read last, written in the next round trip."""
        self._redis_health = DependencyHealth("redis", log, metrics.REDIS_ERRORS.labels, metrics.REDIS_UP.labels)
        self._read_ok_at = time.monotonic()

    async def main(self, stop: asyncio.Event) -> int:
        log.info("consumer_started", consumer=self._consumer, group=TOP10_GROUP,
                 claim_idle=self._settings.claim_idle, consumer_expiry=self._settings.consumer_expiry,
                 timestamp_tolerance=self._settings.timestamp_tolerance, session_lost_after=SESSION_LOST_AFTER)
        loops = [asyncio.create_task(self._consume(), name="consume"),
                 asyncio.create_task(self._housekeep(), name="housekeeping"),
                 asyncio.create_task(self._watch_liveness(), name="liveness")]
        stopping = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([*loops, stopping], return_when=asyncio.FIRST_COMPLETED)
        for task in (*loops, stopping):
            task.cancel()
        await asyncio.gather(*loops, stopping, return_exceptions=True)
        crashed = [task for task in loops if task in done]
        for task in crashed:
            try:
                task.result()
            except BaseException:
                log.error("loop_crashed", exc_info=True, loop=task.get_name())
        self._wire.close()
        await self._leave()
        await self._redis.aclose()
        return 1 if crashed else 0

    def health(self) -> tuple[bool, dict[str, Any]]:
        now = time.monotonic()
        since_ok = now - self._redis_health.last_ok_at
        # The reads have a connection of their own: housekeeping succeeding proves nothing about them.
        since_read = now - self._read_ok_at if self._symbols else 0.0
        detail: dict[str, Any] = {
            "consumer": self._consumer, "group": TOP10_GROUP, "streams": len(self._symbols),
            "redis_ok_seconds_ago": round(since_ok, 3), "read_ok_seconds_ago": round(since_read, 3),
            "sessions_lost": len(self._sessions.lost), "last_error": self._redis_health.last_error,
            "redis": self._redis_health.describe()}
        self._eviction.describe(detail)
        return max(since_ok, since_read) <= self._settings.health_stale_after, detail

    # The read loop

    async def _consume(self) -> None:
        """Read, write, acknowledge; our own pending entries first after a start or a failed read."""
        # A previous process under the same name may have left entries pending.
        own_pending_first = True
        backoff = Backoff(BACKOFF_FIRST, BACKOFF_MAX)
        while True:
            if not self._symbols:
                self._streams_joined.clear()
                await self._streams_joined.wait()
                self._read_ok_at = time.monotonic()
            try:
                if own_pending_first:
                    own_pending_first = await self._process_own_pending()
                else:
                    await self._process_new()
            except RedisError as exc:
                # The failed read may have been served: its entries are pending under our name, unseen,
                # like those of a batch not acknowledged yet. Re-reading our pending list covers both.
                own_pending_first = True
                self._unacknowledged, self._planned = {}, None
                await self._redis_failed("read", exc, backoff)
            else:
                self._read_ok_at = time.monotonic()
                self._redis_ok(("read",), backoff)

    async def _process_new(self) -> None:
        """One round trip: acknowledge the batch written last time, write the batch read last time, read on.

        The writes go out in the same pipeline as the next XREADGROUP, so an entry costs one round trip
        from its arrival to its key, and a busy loop half the system calls (and Redis wake-ups) of a
        write round trip followed by a read round trip; the round trip goes through `RedisWire`, a
        fraction of redis-py's CPU per pipeline (`python -m bench.wire`). On a host whose cores are shared
        with ingest and the exchange, that CPU is what the latency tail is made of. Redis runs the pipeline in order, so
        the keys are written before the read blocks; their replies arrive with the read's, and the
        script's reply carries the time of each write. An entry is acknowledged only in the pipeline after
        the one whose reply showed its write done; so that this is soon, a read sent with writes blocks
        only briefly.
        """
        plan, self._planned = self._planned, None
        writes = list(plan.writes.values()) if plan is not None else []
        gaps = list(plan.gap_marks.values()) if plan is not None else []
        calls, gap_calls = self._store_calls(writes), self._gap_calls(gaps)
        streams = list(self._symbols.values())
        read_new = ("XREADGROUP", "GROUP", TOP10_GROUP, self._consumer, "COUNT", READ_COUNT,
                    "BLOCK", WRITING_BLOCK_MS if calls or gap_calls else READ_BLOCK_MS,
                    "STREAMS", *streams, *(">",) * len(streams))
        trip = round_trip(self._unacknowledged, calls, gap_calls, read_new)
        replies = trip.split(await self._wire.call(trip.commands))
        raise_first_error(replies.acks)
        self._unacknowledged = {}
        if plan is not None:
            results = await self._retried(STORE_TOP10, calls, replies.stores)
            marked = await self._retried(MARK_GAP, gap_calls, replies.gap_marks)
            self._count_writes(writes, results)
            self._count_gap_marks(gaps, marked)
            self._report(plan, "new")
            self._unacknowledged = plan.acks
        if isinstance(replies.read, Exception):
            raise replies.read
        batch = list(stream_pairs(replies.read))
        if batch:
            self._planned = self._plan(batch)

    async def _retried(self, script: LuaScript, calls: list[ScriptCall], results: list[Any]) -> list[Any]:
        """The replies of `calls` sent by SHA with the read; sent again with the script loaded after NOSCRIPT."""
        if any(isinstance(result, NoScriptError) for result in results):
            results = await run_pipelined(self._redis, script, calls)
        raise_first_error(results)
        return results

    async def _process_own_pending(self) -> bool:
        """Process a page of the entries delivered to us but not acknowledged; False once there are none."""
        streams: dict[KeyT, StreamIdT] = {stream: "0" for stream in self._symbols.values()}
        reply = await self._redis.xreadgroup(TOP10_GROUP, self._consumer, streams, count=READ_COUNT)
        batch = [(stream, entries) for stream, entries in stream_pairs(reply) if entries]
        if not batch:
            return False
        await self._acknowledge(await self._process(batch, "pending"))
        return True

    def _plan(self, batch: Iterable[tuple[bytes, list[PendingEntry]]]) -> BatchPlan:
        streams = []
        for stream, entries in batch:
            symbol = self._stream_symbols.get(stream)
            if symbol is None:
                symbol = stream_symbol(self._keys, stream)
                if symbol is None:
                    # Only streams we asked for come back; a reply naming another is not to be trusted.
                    self._invalid_name("stream_key", stream)
                    continue
                self._stream_symbols[stream] = symbol
            streams.append((stream, symbol, entries))
        return plan_batch(streams, self._tolerance_us)

    async def _process(self, batch: Iterable[tuple[bytes, list[PendingEntry]]], source: str) -> Acks:
        """Write the newest snapshot per symbol; return the entries to acknowledge, now that it is done."""
        plan = self._plan(batch)
        writes, gaps = list(plan.writes.values()), list(plan.gap_marks.values())
        if writes:
            self._count_writes(writes, await run_pipelined(self._redis, STORE_TOP10, self._store_calls(writes)))
        if gaps:
            self._count_gap_marks(gaps, await run_pipelined(self._redis, MARK_GAP, self._gap_calls(gaps)))
        self._report(plan, source)
        return plan.acks

    def _store_calls(self, writes: list[Top10Write]) -> list[ScriptCall]:
        now = time.monotonic()
        return [store_top10_call(self._keys.top10(write.symbol), write, self._tolerance_us,
                                 self._sessions.lost_reason(write.session, now)
                                 if self._sessions.is_lost(write.session) else None) for write in writes]

    def _gap_calls(self, gaps: list[GapMark]) -> list[ScriptCall]:
        return [mark_gap_call(self._keys.top10(gap.symbol), gap) for gap in gaps]

    @staticmethod
    def _count_gap_marks(gaps: list[GapMark], results: list[Any]) -> None:
        marked = [gap for gap, result in zip(gaps, results, strict=True) if result == 1]
        if not marked:
            return
        metrics.STALE_MARKS.labels("gap").inc(len(marked))
        symbols = [gap.symbol for gap in marked]
        log.warning("keys_marked_stale", kind="gap", reason=marked[0].reason, keys=len(marked),
                    symbols=",".join(symbols[:SHOWN_SYMBOLS]))

    @staticmethod
    def _count_writes(writes: list[Top10Write], results: list[Any]) -> None:
        """Count each write's outcome and time the applied ones, from ingest's receipt to Redis's write."""
        for write, result in zip(writes, results, strict=True):
            if result > 0:  # the time of the write, epoch microseconds by Redis's clock
                WRITES_APPLIED.inc()
                metrics.LATENCY.observe((result - write.recv_us) / 1e6)
            else:
                WRITE_REJECTIONS[result].inc()

    async def _acknowledge(self, acks: Acks) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            self._add_acks(pipe, acks)
            await pipe.execute()

    @staticmethod
    def _add_acks(pipe: Pipeline, acks: Acks) -> None:
        for stream, ids in acks.items():
            pipe.xack(stream, TOP10_GROUP, *ids)

    def _report(self, plan: BatchPlan, source: str) -> None:
        """Count and log a batch once its writes are done (a batch redone after a failure counts again)."""
        metrics.ENTRIES.labels(source).inc(plan.entries)
        metrics.BATCH_ENTRIES.observe(plan.entries)
        if plan.superseded:
            metrics.SUPERSEDED.inc(plan.superseded)
        if plan.gaps:
            metrics.SKIPPED.labels("gap").inc(plan.gaps)
        if plan.empty:
            metrics.SKIPPED.labels("empty").inc(plan.empty)
        for rejection in plan.rejected:
            metrics.MALFORMED.inc()
            log.warning("malformed_entry", stream=rejection.stream, id=rejection.stream_id,
                        reason=rejection.reason, excerpt=rejection.excerpt)
        _report_trimmed(plan.trimmed)
        if plan.future:
            metrics.FUTURE_TIMESTAMPS.inc(len(plan.future))
            held = self._future_log.admit(time.monotonic())
            if held is not None:
                first = plan.future[0]
                log.warning("future_timestamp", symbol=first.symbol, id=first.stream_id,
                            timestamp=excerpt(first.snapshot.timestamp, 40), recv_us=first.recv_us,
                            tolerance_s=self._settings.timestamp_tolerance, in_batch=len(plan.future),
                            suppressed=held, ordered_by="recv_us")

    def _invalid_name(self, source: str, name: bytes | str) -> None:
        """Count a name read from Redis that failed validation; log it rate-limited, escaped and cut short."""
        metrics.INVALID_NAMES.labels(source).inc()
        held = self._invalid_log.admit(time.monotonic())
        if held is not None:
            log.warning("invalid_name", source=source, name=excerpt(ascii(name), 60), suppressed=held)

    # Housekeeping

    async def _housekeep(self) -> None:
        """Join new streams, claim abandoned entries and remove departed consumers, every second."""
        backoff = Backoff(BACKOFF_FIRST, BACKOFF_MAX)
        loop = asyncio.get_running_loop()
        # Departed consumers are rare and harmless, so look for them a few times per expiry period only.
        janitor_interval = min(max(self._settings.consumer_expiry / 4, HOUSEKEEPING_INTERVAL), 15.0)
        next_janitor = 0.0
        while True:
            done: list[str] = []
            operation = "eviction_check"
            try:
                await self._eviction.check(self._redis, time.monotonic())
                done.append(operation)
                operation = "discover"
                await self._join_new_streams()
                done.append(operation)
                operation = "claim"
                await self._claim_abandoned()
                done.append(operation)
                if loop.time() >= next_janitor:
                    operation = "remove_consumers"
                    await self._remove_departed()
                    done.append(operation)
                    next_janitor = loop.time() + janitor_interval
            except RedisError as exc:
                # The steps before it prove nothing: the eviction check, say, asks Redis only now and then.
                await self._redis_failed(operation, exc, backoff)
                continue
            self._redis_ok(tuple(done), backoff)
            await asyncio.sleep(HOUSEKEEPING_INTERVAL)

    async def _join_new_streams(self) -> None:
        """Join the ob10 stream of every symbol in the symbol set not joined (or skipped) yet."""
        members = {as_text(member) for member in await self._redis.smembers(self._keys.symbols)}
        candidates = []
        for symbol in sorted(members - self._symbols.keys() - self._skipped_symbols):
            if SYMBOL_PATTERN.fullmatch(symbol):
                candidates.append(symbol)
            else:
                # Remembered, so that a name sitting in the set is counted once, not once a second.
                self._skipped_symbols.add(symbol)
                self._invalid_name("symbol_set", symbol)
        if not candidates:
            return
        refused = (await group.join(self._redis, [self._keys.ob10_stream(symbol) for symbol in candidates])).refused
        joined = []
        for symbol in candidates:
            reason = refused.get(self._keys.ob10_stream(symbol))
            if reason is None:
                joined.append(symbol)
            else:
                self._skip(symbol, reason)
        if not joined:
            return
        # Copy, not mutate: the read loop builds its next read from this mapping.
        self._symbols = {**self._symbols, **{symbol: self._keys.ob10_stream(symbol) for symbol in joined}}
        metrics.STREAMS.set(len(self._symbols))
        self._streams_joined.set()
        log.info("streams_joined", symbols=",".join(joined), streams=len(self._symbols))

    def _skip(self, symbol: str, reason: str) -> None:
        """Leave a (valid) symbol of the set alone until restart, saying why once."""
        self._skipped_symbols.add(symbol)
        log.warning("symbol_skipped", symbol=symbol, reason=reason, set=self._keys.symbols)

    async def _recreate_groups(self, operation: str) -> None:
        """After Redis said a group or stream is gone: create the group again on every stream we consume.

        The symbol set may be gone too (FLUSHALL), so the streams we know are joined again, not the set's:
        from id 0 with MKSTREAM, so the entries ingest writes from now on, and any it wrote since the loss,
        are read. The keys come back with the next snapshots; entries read twice are harmless to the script.
        """
        streams = list(self._symbols.values())
        if not streams:
            return
        try:
            joined = await group.join(self._redis, streams)
        except RedisError as exc:
            # The failing operation is retried after its backoff, and fails again into this.
            log.warning("group_recreate_failed", operation=operation, error=safe_error(exc))
            return
        if joined.refused:
            refused = {symbol for symbol, stream in self._symbols.items() if stream in joined.refused}
            self._symbols = {symbol: stream for symbol, stream in self._symbols.items() if symbol not in refused}
            metrics.STREAMS.set(len(self._symbols))
            for symbol in sorted(refused):
                self._skip(symbol, joined.refused[self._keys.ob10_stream(symbol)])
        if joined.created:
            metrics.REDIS_LOST.labels("group").inc(len(joined.created))
            symbols = [self._keys.symbol_of(stream) for stream in joined.created]
            log.warning("redis_state_lost", what="group", action="recreated", operation=operation,
                        streams=len(joined.created), symbols=",".join(symbols[:SHOWN_SYMBOLS]))

    # Liveness

    async def _watch_liveness(self) -> None:
        """Every second: the sessions behind our keys, their liveness keys, the keys of lost sessions marked."""
        backoff = Backoff(BACKOFF_FIRST, BACKOFF_MAX)
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                asked_redis = await self._check_liveness()
            except RedisError as exc:
                await self._redis_failed("liveness", exc, backoff)
                continue
            if asked_redis:  # a check with no key to look at proves nothing about Redis (/healthz relies on it)
                self._redis_ok(("liveness",), backoff)
            await asyncio.sleep(max(0.0, LIVENESS_INTERVAL - (loop.time() - started)))

    async def _check_liveness(self) -> bool:
        """One pass; False when there was nothing to ask Redis."""
        symbols = list(self._symbols)
        if not symbols:
            return False
        async with self._redis.pipeline(transaction=False) as pipe:
            for symbol in symbols:
                pipe.hmget(self._keys.top10(symbol), "session", "status")
            # A key of another type answers WRONGTYPE: nothing to watch there, the next write replaces it.
            replies = await pipe.execute(raise_on_error=False)
        keys: dict[str, KeyLiveness] = {}
        for symbol, reply in zip(symbols, replies, strict=True):
            if isinstance(reply, Exception) or reply[0] is None:
                continue  # no key yet (or one written before keys named their session)
            session = as_text(reply[0])
            if not SESSION_PATTERN.fullmatch(session):
                self._invalid_name("key_session", reply[0])
                continue
            keys[symbol] = KeyLiveness(session, as_text(reply[1] or b""))
        sessions = self._sessions.watch({key.session for key in keys.values()}, time.monotonic())
        if not sessions:
            return True
        alive = await sessions_alive(self._redis, self._keys, sessions)
        now = time.monotonic()
        changes = self._sessions.observe(alive, now)
        for session in changes.lost:
            metrics.SESSIONS_LOST.inc()
            log.warning("session_lost", session=session, keys=sum(key.session == session for key in keys.values()),
                        absent_for_s=round(self._sessions.absent_for(session, now), 1))
        for session in changes.back:
            log.info("session_back", session=session, hint="its keys turn live with their next snapshot")
        marks = keys_to_mark(keys, self._sessions.lost)
        if not marks:
            return True
        reasons = {session: self._sessions.lost_reason(session, now) for _, session in marks}
        calls = [mark_stale_call(self._keys.top10(symbol), symbol, session, reasons[session])
                 for symbol, session in marks]
        results = await run_pipelined(self._redis, MARK_STALE, calls)
        marked: dict[str, list[str]] = {}
        for (symbol, session), result in zip(marks, results, strict=True):
            if result == 1:
                marked.setdefault(session, []).append(symbol)
        for session, marked_symbols in marked.items():
            metrics.STALE_MARKS.labels(INGEST_LOST).inc(len(marked_symbols))
            log.warning("keys_marked_stale", kind=INGEST_LOST, reason=reasons[session], session=session,
                        keys=len(marked_symbols), symbols=",".join(marked_symbols[:SHOWN_SYMBOLS]))
        return True

    async def _claim_abandoned(self) -> None:
        """Take over the entries pending longer than CLAIM_IDLE, whoever holds them, and process them."""
        min_idle_ms = int(self._settings.claim_idle * 1000)
        streams = list(self._symbols.values())
        async for page in group.claim_abandoned(self._redis, streams, self._consumer, min_idle_ms):
            _report_trimmed(page.trimmed)
            if page.entries:
                claimed = sum(len(entries) for _, entries in page.entries)
                metrics.CLAIMED.inc(claimed)
                log.info("entries_claimed", entries=claimed, streams=len(page.entries), min_idle_ms=min_idle_ms)
                await self._acknowledge(await self._process(page.entries, "claimed"))

    async def _remove_departed(self) -> None:
        expiry_ms = int(self._settings.consumer_expiry * 1000)
        for departure in await group.remove_departed(self._redis, list(self._symbols.values()), self._consumer,
                                                     expiry_ms):
            metrics.CONSUMERS_REMOVED.inc()
            log.info("consumer_removed", consumer=departure.consumer, streams=departure.streams,
                     idle_ms=departure.idle_ms)

    async def _leave(self) -> None:
        """At shutdown: process what a cancelled read may have left pending for us, then leave the group.

        Whatever cannot be done here (Redis down, no time left) stays pending under our name, and another
        instance claims it after CLAIM_IDLE.
        """
        streams = list(self._symbols.values())
        if not streams:
            return
        try:
            async with asyncio.timeout(SHUTDOWN_DRAIN_SECONDS):
                await self._acknowledge(self._unacknowledged)
                while await self._process_own_pending():
                    pass
                left = await group.leave(self._redis, streams, self._consumer)
            log.info("group_left", consumer=self._consumer, streams=left)
        except (RedisError, TimeoutError) as exc:  # TimeoutError: the drain's own deadline
            log.warning("group_leave_failed", consumer=self._consumer, error=safe_error(exc))

    # Redis availability

    def _redis_ok(self, operations: tuple[str, ...], backoff: Backoff) -> None:
        for operation in operations:
            self._redis_health.succeeded(operation)
        backoff.reset()

    async def _redis_failed(self, operation: str, exc: BaseException, backoff: Backoff) -> None:
        """Note the failure (logged once per change, counted every time) and wait out the loop's backoff."""
        self._redis_health.failed(operation, exc)
        delay = backoff.next_delay()
        if isinstance(exc, ResponseError) and str(exc).startswith(("NOGROUP", "UNBLOCKED")):
            # A stream or its group was deleted (FLUSHALL, a failover to a replica behind, eviction).
            await self._recreate_groups(operation)
        await asyncio.sleep(delay)


def _report_trimmed(trimmed: list[tuple[str, str]]) -> None:
    if not trimmed:
        return
    metrics.SKIPPED.labels("trimmed").inc(len(trimmed))
    streams = sorted({stream for stream, _ in trimmed})
    log.warning("pending_entries_trimmed", entries=len(trimmed), streams=",".join(streams),
                first_id=trimmed[0][1], hint="raise STREAM_MAXLEN or add top10 instances")
