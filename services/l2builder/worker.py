"""The l2builder service: own symbols, apply their streams in order, persist the books to MongoDB.

Three loops share one event loop and the per-symbol states, so no locks are needed:

- ownership, every tick: heartbeat, renew leases, compute the symbols this instance should own by
  rendezvous hashing, acquire those (then restore them) and hand off those that must move, check the
  liveness keys of the sessions of the live books, ask ingest for partials for stale books, sample lag;
- reader: XREADGROUP over the owned, caught-up streams; each entry goes to its `SymbolState`;
- flusher, every FLUSH_INTERVAL: one unordered bulk write of every changed book, then XACK what it covered;
  a symbol whose write failed is retried alone after its own backoff, never holding up the others.

Taking a symbol restores its document and reads with XRANGE what the group already handed out but nobody
made durable (a previous owner's pending entries); a seq hole in what the group delivers is repaired the
same way. An entry is acknowledged only after the write covering it succeeded; when a lease cannot be
renewed in time the symbol is dropped at once and its unwritten work is left for the next owner, who
replays it from the stream. Outages of Redis or MongoDB only pause things: the loops retry with backoff.

Redis may also come back without the state it held (FLUSHALL, eviction, a failover to a replica behind):
an epoch key missing or lower than a held lease's, a stream or group gone, a group that went back before
a book's position. The books concerned go stale (`redis_lost`) and ask for partials; a lease whose epoch
vanished is taken again with an epoch above the one it had, so fencing never goes backwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from pymongo.errors import PyMongoError
from redis.exceptions import RedisError, ResponseError

from services.core.backoff import Backoff
from services.core.entries import EntryError, decode_entry, parse_stream_id
from services.core.keys import Keys
from services.core.liveness import SessionTracker
from services.core.ratelimit import LogLimit
from services.core.text import excerpt
from services.l2builder import metrics
from services.l2builder.ownership import Lease, Ownership
from services.l2builder.rendezvous import assigned
from services.l2builder.store import (
    UTC,
    BookStore,
    Document,
    FlushAction,
    WriteResult,
    book_document,
    flush_decisions,
    restore_state,
)
from services.l2builder.streams import L2Streams, RawEntry
from services.l2builder.symbol_state import FlushTicket, Outcome, StaleKind, Status, SymbolState
from services.runtime.config import Settings, mask_url
from services.runtime.health import safe_error
from services.runtime.logs import EventLog
from services.runtime.redis_client import EvictionWatch, connect, sessions_alive

log = EventLog("l2builder")

DocumentsTask = asyncio.Task[dict[str, Document]]
ReadTask = asyncio.Task[list[tuple[str, list[RawEntry]]]]

TICK_MAX = 0.5
"""Longest pause between two ownership ticks (shorter with a short LEASE_TTL)."""
TICK_MIN = 0.05
READ_COUNT = 500
"""Entries per stream per XREADGROUP."""
READ_BLOCK_MS = 100
"""XREADGROUP BLOCK; short, so a newly owned stream is read within this time."""
REDIS_SOCKET_TIMEOUT = 5.0
"""Longer than READ_BLOCK_MS, or every idle read would time out; short enough to notice a hung server."""
RANGE_COUNT = 1000
"""Entries per XRANGE page while catching up."""
MAX_UNACKED_PER_SYMBOL = 100_000
"""Entries of one symbol read but not yet durable after which that symbol is no longer read (its writes
fail, or MongoDB is slow or down); the others read on."""
INSPECT_EVERY = 2.0
MONGO_PING_EVERY = 2.0
"""How long MongoDB may go unused before a ping (at most a third of HEALTH_STALE_AFTER), so an idle
but healthy server never makes /healthz fail."""
SHUTDOWN_FLUSH_SECONDS = 10.0
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 5.0
INVALID_REMEMBERED = 10_000
"""Invalid names remembered so each is counted once; beyond that the memory starts afresh."""
GC_GEN0_THRESHOLD = 50_000
"""Every entry allocates a few short-lived containers and almost no cycles, so collecting the youngest
generation far less often than Python's default saves CPU for nothing; `python -m bench.variant
--gc-threshold 700 l2builder` runs it with the default, for `python -m bench.l2builder` to compare."""


@dataclass(slots=True)
class Owned:
    """A symbol whose lease this instance holds. `state` is None until its document is loaded; the reader
    takes it only once `ready` (caught up) and not `releasing` (handing it off). `deferred` keeps what a
    read-ahead delivered while it was catching up, applied once the catch-up is done. A write that failed
    is not tried again before `retry_at` (monotonic), which `write_backoff` pushes back per failure."""

    lease: Lease
    state: SymbolState | None = None
    ready: bool = False
    releasing: bool = False
    restore: asyncio.Task[None] | None = field(default=None, repr=False)
    deferred: list[list[RawEntry]] = field(default_factory=list, repr=False)
    retry_at: float = 0.0
    write_backoff: Backoff = field(default_factory=lambda: Backoff(BACKOFF_FIRST, BACKOFF_MAX), repr=False)
    lost: str | None = None
    """Redis lost state of the symbol before its document was loaded: the restored book must not be live."""


def split_by_backlog(unacked: Mapping[str, int], bound: int) -> tuple[list[str], list[str]]:
    """The symbols to read and those to leave unread because their own unacknowledged entries reached
    `bound`: one symbol whose writes fail never stops the others."""
    read = [symbol for symbol, count in unacked.items() if count < bound]
    paused = [symbol for symbol, count in unacked.items() if count >= bound]
    return read, paused


class L2Builder:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.instance = settings.instance_name
        self.keys = Keys(settings.key_prefix)
        self.owned: dict[str, Owned] = {}
        self.ack_backlog: dict[str, list[str]] = {}
        self.members: list[str] = []
        self.redis_ok_at = self.mongo_ok_at = time.monotonic()
        self._redis_down_since: float | None = None
        self._mongo_down_since: float | None = None
        self._inspected_at = 0.0
        self.frames_applied = self.rows_applied = 0
        self._ping_every = min(MONGO_PING_EVERY, settings.health_stale_after / 3)
        self._pinged_at = 0.0
        self._draining = False
        self._drain = asyncio.Event()
        self._wake_reader = asyncio.Event()
        self.sessions = SessionTracker()
        self.eviction = EvictionWatch(log)
        self._invalid_seen: set[bytes] = set()
        self._invalid_log = LogLimit(burst=1)
        """Invalid members of the symbols set stay there (anyone may add some): one line per window."""
        self.invalid_symbols = 0
        self.read_paused: set[str] = set()

    # -- lifecycle -------------------------------------------------------------------------------

    async def main(self, stop: asyncio.Event) -> int:
        gc.set_threshold(GC_GEN0_THRESHOLD)
        settings = self.settings
        self.open()
        log.info("config", instance=self.instance, mongo_url=mask_url(settings.mongo_url),
                 database=settings.mongo_database, lease_ttl=settings.lease_ttl,
                 flush_interval=settings.flush_interval)
        loops = [asyncio.create_task(self._ownership_loop(), name="ownership"),
                 asyncio.create_task(self._read_loop(), name="reader"),
                 asyncio.create_task(self._flush_loop(), name="flusher")]
        stopped = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([stopped, *loops], return_when=asyncio.FIRST_COMPLETED)
        crashed = [task for task in done if task is not stopped and task.exception() is not None]
        for task in crashed:
            log.error("loop_crashed", loop=task.get_name(), error=repr(task.exception()))
        stopped.cancel()
        await self._shutdown(loops)
        return 1 if crashed else 0

    def open(self) -> None:
        """The clients of Redis and MongoDB (connected on first use)."""
        settings = self.settings
        self.redis = connect(settings.redis_url, REDIS_SOCKET_TIMEOUT, f"l2builder:{self.instance}")
        self.store = BookStore(settings.mongo_url, settings.mongo_database)
        self.ownership = Ownership(self.redis, self.keys, self.instance, settings.lease_ttl)
        self.streams = L2Streams(self.redis, self.keys, self.instance, settings.redis_url, REDIS_SOCKET_TIMEOUT)

    async def close(self) -> None:
        self.streams.close()
        await self.redis.aclose()
        await self.store.close()

    async def _shutdown(self, loops: list[asyncio.Task[None]]) -> None:
        """Flush, acknowledge and release everything, so other instances take over at once."""
        self._draining = True
        self._drain.set()
        await asyncio.gather(*loops, return_exceptions=True)
        restores = [owned.restore for owned in self.owned.values() if owned.restore and not owned.restore.done()]
        for task in restores:
            task.cancel()
        await asyncio.gather(*restores, return_exceptions=True)
        with contextlib.suppress(RedisError):
            await self.ownership.leave()
        deadline = time.monotonic() + SHUTDOWN_FLUSH_SECONDS
        while self._unsettled() and time.monotonic() < deadline:
            with contextlib.suppress(RedisError):
                await self._renew(time.monotonic())
            await self._flush()
            if self._unsettled():
                await asyncio.sleep(BACKOFF_FIRST)  # the symbols that failed wait for their own backoff
        handed = list(self.owned)
        leases = [owned.lease for owned in self.owned.values()]
        for symbol in handed:
            self._drop(symbol, "shutdown", "released")
        with contextlib.suppress(RedisError):
            await self.ownership.release(leases)
            await self.streams.forget_consumer(handed)
        log.info("handed_off", symbols=len(handed), unsettled=self._unsettled(),
                 frames_applied=self.frames_applied, rows_applied=self.rows_applied)
        await self.close()

    def health(self) -> tuple[bool, dict[str, Any]]:
        now = time.monotonic()
        limit = self.settings.health_stale_after
        redis_age, mongo_age = now - self.redis_ok_at, now - self.mongo_ok_at
        states = [owned.state for owned in self.owned.values() if owned.state is not None]
        detail = {
            "instance": self.instance,
            "members": len(self.members),
            "owned": len(self.owned),
            "symbols": sorted(self.owned),
            "live": sum(state.live for state in states),
            "stale": sum(not state.live for state in states),
            "restoring": len(self.owned) - len(states),
            "unacked": self._unacked(),
            "read_paused": len(self.read_paused),
            "invalid_symbols": self.invalid_symbols,
            "redis_ok_seconds_ago": round(redis_age, 3),
            "mongo_ok_seconds_ago": round(mongo_age, 3),
        }
        self.eviction.describe(detail)
        return redis_age < limit and mongo_age < limit, detail

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake up when the service starts draining."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drain.wait(), max(seconds, 0.0))

    # -- ownership -------------------------------------------------------------------------------

    async def _ownership_loop(self) -> None:
        tick = max(TICK_MIN, min(TICK_MAX, self.settings.lease_ttl / 6))
        while not self._draining:
            await self._tick()
            await self._pause(tick)

    async def _tick(self) -> None:
        now = time.monotonic()
        try:
            members, rejoined = await self.ownership.heartbeat()
            if rejoined and self.members:
                # Our membership expired (a long pause) or Redis lost it: check every lease now.
                metrics.REDIS_LOST.labels("membership").inc()
                log.warning("membership_lost", owned=len(self.owned))
            symbols = await self._symbols(now)
            await self._renew(now, everything=rejoined)
        except RedisError as exc:
            self._redis_failed("ownership", exc)
            self._expire(time.monotonic())
            return
        self._redis_ok()
        self._expire(time.monotonic())
        if members != self.members:
            log.info("members", members=",".join(members), count=len(members))
            self.members = members
        desired = assigned(self.instance, symbols, members)
        for symbol, owned in self.owned.items():
            moving = symbol not in desired
            if moving and not owned.releasing:
                log.info("handing_off", symbol=symbol, epoch=owned.lease.epoch)
            owned.releasing = moving
        try:
            await self._acquire(sorted(desired - self.owned.keys()))
            await self._check_liveness(time.monotonic())
            await self._request_resyncs(time.monotonic())
            if now - self._inspected_at >= INSPECT_EVERY:
                self._inspected_at = now
                await self._inspect_streams()
            await self.eviction.check(self.redis, now)
        except RedisError as exc:
            self._redis_failed("ownership", exc)
        self._update_gauges()

    async def _symbols(self, now: float) -> set[str]:
        """The valid names of the symbols set; the others are counted once each and logged now and then."""
        symbols, invalid = await self.streams.symbols()
        self.invalid_symbols = len(invalid)
        new = [member for member in invalid if member not in self._invalid_seen]
        if new:
            if len(self._invalid_seen) + len(new) > INVALID_REMEMBERED:
                self._invalid_seen.clear()
            self._invalid_seen.update(new)
            metrics.INVALID_SYMBOLS.inc(len(new))
        held = self._invalid_log.admit(now) if invalid else None
        if held is not None:
            log.warning("invalid_symbols", count=len(invalid), example=excerpt(repr(min(invalid)), 80),
                        suppressed=held)
        return symbols

    async def _renew(self, now: float, everything: bool = False) -> None:
        leases = [owned.lease for owned in self.owned.values()]
        renewal = await self.ownership.renew(leases if everything else self.ownership.due(leases, now))
        for lease in renewal.lost:
            owned = self.owned.get(lease.symbol)
            if owned is not None and owned.lease is lease:
                self._drop(lease.symbol, "lease taken over or expired", "lost")
        if renewal.vanished:
            await self._retake(renewal.vanished)

    async def _retake(self, leases: list[Lease]) -> None:
        """Redis lost the epoch keys of these leases: take them again above the epochs already written
        under, and mark their books stale, since the streams may have lost entries too."""
        floors = {lease.symbol: lease.epoch + 1 for lease in leases}
        taken = {lease.symbol: lease for lease in await self.ownership.acquire(sorted(floors), floors)}
        for lease in leases:
            owned = self.owned.get(lease.symbol)
            if owned is None or owned.lease is not lease:
                continue
            new = taken.get(lease.symbol)
            if new is None:
                self._drop(lease.symbol, "Redis lost the lease's epoch and another instance holds it", "lost")
                continue
            owned.lease = new  # a new epoch: the stale book below is written under a new version
            metrics.REDIS_LOST.labels("epoch").inc()
            log.warning("lease_retaken", symbol=lease.symbol, epoch=new.epoch, previous=lease.epoch)
            state = owned.state
            if state is None:
                owned.lost = "the lease's epoch vanished from Redis"
                continue
            state.mark_stale(StaleKind.REDIS_LOST, "the lease's epoch vanished from Redis", time.monotonic())
            self._note(lease.symbol, state, Outcome.STALE)
            await self.streams.ensure_group(lease.symbol, state.stream_id)

    async def _stale_in_place(self, marks: dict[str, tuple[StaleKind, str, bool]]) -> list[str]:
        """Mark books stale where they stand, by symbol (kind, detail, keep_levels); return those marked.

        The books turn stale in memory before anything is awaited: a flush running meanwhile must never
        store one of them live under the new epoch, which would leave the stale document that follows at
        the same version, refused. No entry moved them, and a document's version is (epoch, stream id), so
        each lease then moves to a new epoch and its book is written again under it, over the live one
        stored at the same position (a flush during the move wrote it under the old epoch, refused).
        """
        targets: dict[str, tuple[Owned, SymbolState]] = {
            symbol: (owned, owned.state) for symbol in marks
            if (owned := self.owned.get(symbol)) is not None and owned.state is not None}
        now = time.monotonic()
        for symbol, (_, state) in targets.items():
            kind, detail, keep_levels = marks[symbol]
            state.mark_stale(kind, detail, now, keep_levels=keep_levels)
            self._note(symbol, state, Outcome.STALE)
        unmoved = await self.ownership.advance([owned.lease for owned, _ in targets.values()])
        for _, state in targets.values():
            state.dirty = True
        if unmoved:  # the epoch key is gone or another instance holds the lease
            await self._retake(unmoved)
            for lease in unmoved:
                targets.pop(lease.symbol)
        return [symbol for symbol, (owned, _) in targets.items() if self.owned.get(symbol) is owned]

    async def _check_liveness(self, now: float) -> None:
        """Mark stale the live books of ingest sessions whose liveness key has been gone too long."""
        named = {owned.state.session for owned in self.owned.values()
                 if owned.state is not None and owned.state.session is not None}
        sessions = self.sessions.watch(named, now)
        changes = self.sessions.observe(await sessions_alive(self.redis, self.keys, sessions), now)
        for session in changes.lost:
            log.warning("session_lost", session=session, absent_for_s=round(self.sessions.absent_for(session, now), 1))
        # The books are read again after the await: one may have moved on to another session meanwhile.
        marks = {symbol: (StaleKind.INGEST_LOST, self.sessions.lost_detail(state.session, now), True)
                 for symbol, owned in self.owned.items()
                 if (state := owned.state) is not None and state.live and state.session is not None
                 and self.sessions.is_lost(state.session)}
        if marks:
            await self._stale_in_place(marks)

    def _expire(self, now: float) -> None:
        """Stop touching symbols whose lease could not be renewed in time, before anyone may take them."""
        for symbol, owned in list(self.owned.items()):
            if not owned.lease.valid(now):
                self._drop(symbol, "lease could not be renewed in time", "lost")

    async def _acquire(self, symbols: list[str]) -> None:
        leases = await self.ownership.acquire(symbols)
        if not leases:
            return
        # One query for the documents of every symbol taken at once (all of them at start-up).
        documents = asyncio.create_task(self.store.load_many([lease.symbol for lease in leases]))
        for lease in leases:
            owned = Owned(lease)
            self.owned[lease.symbol] = owned
            metrics.LEASE_CHANGES.labels("acquired").inc()
            log.info("lease_acquired", symbol=lease.symbol, epoch=lease.epoch)
            owned.restore = self._spawn(self._restore(lease.symbol, owned, documents), lease.symbol)

    def _spawn(self, coroutine: Coroutine[Any, Any, None], symbol: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coroutine, name=f"restore-{symbol}")
        task.add_done_callback(lambda done: self._restore_ended(symbol, done))
        return task

    def _restore_ended(self, symbol: str, task: asyncio.Task[None]) -> None:
        """A restore that died of an unexpected error gives the symbol up, to be taken again cleanly."""
        if task.cancelled() or task.exception() is None:
            return
        log.error("restore_failed", symbol=symbol, error=repr(task.exception()))
        owned = self.owned.get(symbol)
        if owned is not None and owned.restore is task:
            self._drop(symbol, "restore failed", "lost")

    def _drop(self, symbol: str, reason: str, change: str) -> None:
        """Forget a symbol at once: its unwritten work is replayed from the stream by the next owner."""
        owned = self.owned.pop(symbol, None)
        if owned is None:
            return
        task = owned.restore
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
        metrics.LEASE_CHANGES.labels(change).inc()
        with contextlib.suppress(KeyError):
            metrics.LAG.remove(symbol)
        event = log.info if change == "released" else log.warning
        event(f"lease_{change}", symbol=symbol, epoch=owned.lease.epoch, reason=reason)

    async def _request_resyncs(self, now: float) -> None:
        for symbol, owned in list(self.owned.items()):
            state = owned.state
            if state is None or not owned.lease.valid(now) or not state.resync_due(now):
                continue
            await self.streams.request_resync(symbol, state.reason or "stale", self.instance)
            state.resync_requested(now)
            metrics.RESYNC_REQUESTS.inc()
            log.info("resync_requested", symbol=symbol, reason=state.reason)

    async def _inspect_streams(self) -> None:
        """Check the group of every owned stream, sample its lag and tidy it of consumers long gone."""
        await self._check_groups()
        symbols = [symbol for symbol, owned in self.owned.items() if owned.state is not None]
        removed = await self.streams.remove_idle_consumers(symbols, self.settings.consumer_expiry)
        if removed:
            log.info("consumers_removed", count=removed)

    async def _check_groups(self) -> None:
        """Find the streams whose group Redis lost: gone, or gone back before the book's position (which
        never passes what the group handed out)."""
        symbols = [symbol for symbol, owned in self.owned.items() if owned.ready and owned.state is not None]
        marks: dict[str, tuple[StaleKind, str, bool]] = {}
        for symbol, group in (await self.streams.groups(symbols)).items():
            owned = self.owned.get(symbol)
            if owned is None or owned.state is None:
                continue
            if group is None:
                marks[symbol] = (StaleKind.REDIS_LOST, "its stream or consumer group vanished", False)
            elif parse_stream_id(group.last_delivered) < owned.state.position:
                marks[symbol] = (StaleKind.REDIS_LOST, f"its consumer group went back to {group.last_delivered}",
                                 False)
            elif group.lag is not None:
                metrics.LAG.labels(symbol).set(group.lag + self._unacked_of(symbol, owned.state))
        if not marks:
            return
        metrics.REDIS_LOST.labels("group").inc(len(marks))
        for symbol in await self._stale_in_place(marks):
            owned = self.owned.get(symbol)
            if owned is not None and owned.state is not None:
                # Recreated at the book's position: what follows is read, and nothing twice.
                await self.streams.ensure_group(symbol, owned.state.stream_id)

    def _update_gauges(self) -> None:
        states = [owned.state for owned in self.owned.values() if owned.state is not None]
        live = sum(state.live for state in states)
        metrics.OWNED.set(len(self.owned))
        metrics.MEMBERS.set(len(self.members))
        metrics.BOOKS.labels(Status.LIVE).set(live)
        metrics.BOOKS.labels(Status.STALE).set(len(states) - live)

    # -- restore and catch-up --------------------------------------------------------------------

    async def _restore(self, symbol: str, owned: Owned, documents: DocumentsTask | None = None) -> None:
        """Load the stored book (first time only), then catch up with XRANGE until the reader may take over.

        `documents` is a query already loading the documents of the symbols acquired together; if it
        fails, each symbol loads its own document, retrying until MongoDB answers.
        """
        backoff = Backoff(BACKOFF_FIRST, BACKOFF_MAX)
        while self.owned.get(symbol) is owned:
            try:
                if owned.state is None:
                    preloaded = None
                    if documents is not None:
                        with contextlib.suppress(PyMongoError):
                            preloaded = await asyncio.shield(documents)
                        documents = None
                    document = preloaded.get(symbol) if preloaded is not None else await self.store.load(symbol)
                    await self._load(symbol, owned, document)
                if owned.state is None or not await self._catch_up(symbol, owned):
                    return
                deferred, owned.deferred = owned.deferred, []
                if all(self._feed(symbol, owned.state, entries, refilled=False) for entries in deferred):
                    owned.ready = True
                    self._wake_reader.set()
                    return
                metrics.HOLES_REFILLED.inc()  # a hole in what was read ahead: catch up once more
            except (RedisError, PyMongoError) as exc:
                log.warning("restore_retry", symbol=symbol, error=safe_error(exc))
                await asyncio.sleep(backoff.next_delay())

    async def _load(self, symbol: str, owned: Owned, document: Document | None) -> None:
        self._mongo_ok()
        stored_epoch = document.get("epoch") if document else None
        if isinstance(stored_epoch, int) and stored_epoch >= owned.lease.epoch:
            log.warning("epoch_behind_document", symbol=symbol, epoch=owned.lease.epoch, stored=stored_epoch)
            if not await self.ownership.raise_epoch(owned.lease, stored_epoch + 1):
                self._drop(symbol, "lease lost while raising its epoch", "lost")
                return
        now = time.monotonic()
        state = restore_state(symbol, document, self.settings.resubscribe_interval, now)
        if owned.lost is not None:
            state.mark_stale(StaleKind.REDIS_LOST, owned.lost, now)
            self._note(symbol, state, Outcome.STALE)
            owned.lost = None
        await self.streams.ensure_group(symbol, state.stream_id)
        head = await self.streams.head(symbol)
        first_id, first = None, None
        if head.first is not None:
            first_id = head.first[0].decode()
            with contextlib.suppress(EntryError):
                first = decode_entry(*head.first)
        if not state.check_retained(first_id, first, head.max_deleted_id, now):
            self._note(symbol, state, Outcome.STALE)
        elif not state.check_stream_end(head.last_generated_id, now):
            metrics.REDIS_LOST.labels("stream").inc()
            self._note(symbol, state, Outcome.STALE)
        if state.stream_id is not None:
            await self.streams.ack_covered(symbol, state.stream_id)
        owned.state = state
        log.info("restored", symbol=symbol, epoch=owned.lease.epoch, stream_id=state.stream_id,
                 seq=state.seq, status=state.status, reason=state.reason)

    async def _catch_up(self, symbol: str, owned: Owned) -> bool:
        """Apply what the group handed out after the stored position; False when the lease went meanwhile."""
        state = owned.state
        assert state is not None
        until = await self.streams.last_delivered(symbol)
        if until is None:  # ensured when the document was loaded: Redis lost it since
            metrics.REDIS_LOST.labels("group").inc()
            await self._stale_in_place({symbol: (StaleKind.REDIS_LOST, "its stream or consumer group vanished",
                                                 False)})
            await self.streams.ensure_group(symbol, state.stream_id)
            return True
        end = parse_stream_id(until)
        while state.position < end:
            if self.owned.get(symbol) is not owned or not owned.lease.valid(time.monotonic()):
                return False
            page = await self.streams.read_range(symbol, state.stream_id, until, RANGE_COUNT)
            self._redis_ok()
            if not page:
                break
            self._feed(symbol, state, page, refilled=True)
            await asyncio.sleep(0)
        return True

    # -- reading and applying --------------------------------------------------------------------

    async def _read_loop(self) -> None:
        """Read new entries, always one XREADGROUP ahead, so Redis prepares the next batch while this
        one is applied."""
        backoff = Backoff(BACKOFF_FIRST, BACKOFF_MAX)
        ahead: ReadTask | None = None
        try:
            while not self._draining:
                ahead = ahead or self._read_ahead()
                if ahead is None:
                    self._wake_reader.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake_reader.wait(), READ_BLOCK_MS / 1000)
                    continue
                try:
                    batch = await ahead
                except RedisError as exc:
                    ahead = None
                    if isinstance(exc, ResponseError) and str(exc).startswith(("NOGROUP", "UNBLOCKED")):
                        log.warning("group_missing")
                        try:
                            await self._check_groups()
                        except RedisError as error:
                            self._redis_failed("read", error)
                            await self._pause(backoff.next_delay())
                        continue
                    self._redis_failed("read", exc)
                    self._catch_up_after_failed_read()
                    await self._pause(backoff.next_delay())
                    continue
                self._redis_ok()
                backoff.reset()
                ahead = self._read_ahead()
                if ahead is not None:
                    await asyncio.sleep(0)  # the read-ahead sends its command now, not after this whole batch
                for symbol, entries in batch:
                    self._apply(symbol, entries)
                    await asyncio.sleep(0)
        finally:
            if ahead is not None:
                ahead.cancel()  # whatever it delivers stays pending; the next owner reads it with XRANGE

    def _catch_up_after_failed_read(self) -> None:
        """A failed XREADGROUP may still have been served: its entries are then delivered to this consumer
        (pending) but were never seen, and `>` will not hand them out again. Every symbol goes back to
        catching up with XRANGE from its own position, which reads them from the stream itself."""
        for symbol, owned in self.owned.items():
            if owned.ready and not owned.releasing:
                owned.ready = False
                owned.restore = self._spawn(self._restore(symbol, owned), symbol)

    def _read_ahead(self) -> ReadTask | None:
        unacked = {symbol: self._unacked_of(symbol, owned.state) for symbol, owned in self.owned.items()
                   if owned.ready and not owned.releasing and owned.state is not None}
        symbols, paused = split_by_backlog(unacked, MAX_UNACKED_PER_SYMBOL)
        if paused or self.read_paused:
            self._note_paused(set(paused), unacked)
        if not symbols:
            return None
        return asyncio.create_task(self.streams.read_new(symbols, READ_COUNT, READ_BLOCK_MS))

    def _note_paused(self, paused: set[str], unacked: dict[str, int]) -> None:
        for symbol in sorted(paused - self.read_paused):
            log.warning("read_paused", symbol=symbol, unacked=unacked[symbol])
        for symbol in sorted(self.read_paused - paused):
            log.info("read_resumed", symbol=symbol, unacked=unacked.get(symbol, 0))
        self.read_paused = paused
        metrics.READ_PAUSED.set(len(paused))

    def _apply(self, symbol: str, entries: list[RawEntry]) -> None:
        owned = self.owned.get(symbol)
        if owned is None or owned.releasing or not owned.lease.valid(time.monotonic()):
            return  # left pending; whoever owns the symbol next reads them with XRANGE
        if owned.state is None or not owned.ready:
            # Read ahead before a hole sent the symbol back to catching up: applied after the catch-up.
            owned.deferred.append(entries)
            return
        if not self._feed(symbol, owned.state, entries, refilled=False):
            metrics.HOLES_REFILLED.inc()
            log.info("hole", symbol=symbol, after=owned.state.stream_id, seq=owned.state.seq)
            owned.ready = False
            owned.restore = self._spawn(self._restore(symbol, owned), symbol)

    def _feed(self, symbol: str, state: SymbolState, entries: list[RawEntry], refilled: bool) -> bool:
        """Feed entries in order; False at a hole, leaving it and the rest to a catch-up from the stream."""
        now = time.monotonic()
        frames, rows = state.frames_applied, state.rows_applied
        complete = True
        for raw_id, fields in entries:
            outcome = state.feed_raw(raw_id, fields, now, refilled)
            if outcome is Outcome.APPLIED:
                continue
            if outcome is Outcome.HOLE:
                complete = False
                break
            if outcome is Outcome.LIVE and state.session is not None and self.sessions.is_lost(state.session):
                # A late partial of a dead session: exact once, but nothing says the market stayed there.
                state.mark_stale(StaleKind.INGEST_LOST, self.sessions.lost_detail(state.session, now), now,
                                 keep_levels=True)
                outcome = Outcome.STALE
            self._note(symbol, state, outcome)
        frames, rows = state.frames_applied - frames, state.rows_applied - rows
        self.frames_applied += frames
        self.rows_applied += rows
        metrics.FRAMES_APPLIED.inc(frames)
        metrics.ROWS_APPLIED.inc(rows)
        return complete

    def _note(self, symbol: str, state: SymbolState, outcome: Outcome) -> None:
        if outcome is Outcome.DUPLICATE:
            metrics.ENTRIES_SKIPPED.inc()
        elif outcome is Outcome.STALE:
            metrics.STALE.labels(str(state.stale_kind)).inc()
            log.warning("book_stale", symbol=symbol, kind=state.stale_kind, reason=state.reason,
                        stream_id=state.stream_id)
        elif outcome is Outcome.LIVE:
            log.info("book_live", symbol=symbol, stream_id=state.stream_id, session=state.session, seq=state.seq)

    def _unacked(self) -> int:
        pending = sum(len(owned.state.pending_ids) for owned in self.owned.values() if owned.state is not None)
        return pending + sum(len(ids) for ids in self.ack_backlog.values())

    def _unacked_of(self, symbol: str, state: SymbolState) -> int:
        return len(state.pending_ids) + len(self.ack_backlog.get(symbol, ()))

    # -- persisting ------------------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        """Flush every FLUSH_INTERVAL whatever happened: a failure only backs off the symbols it concerns."""
        while not self._draining:
            started = time.monotonic()
            await self._flush()
            await self._pause(max(self.settings.flush_interval - (time.monotonic() - started), 0.001))

    async def _flush(self) -> None:
        """Write every changed book that is due in one bulk write, then XACK what it covered."""
        now = time.monotonic()
        wall = dt.datetime.now(UTC)
        tickets: dict[str, tuple[Owned, FlushTicket]] = {}
        documents = {}
        for symbol, owned in self.owned.items():
            state = owned.state
            if state is None or not owned.lease.valid(now) or owned.retry_at > now:
                continue
            ticket = state.take_flush()
            if ticket is None:
                continue
            if ticket.write:
                tickets[symbol] = (owned, ticket)
                documents[symbol] = book_document(state, owned.lease.epoch, wall)
            else:
                # Only entries seen again: the last durable write covers them already.
                self.ack_backlog.setdefault(symbol, []).extend(ticket.ids)
        result = await self._write(documents)
        for symbol, decision in flush_decisions(documents, result).items():
            owned, ticket = tickets[symbol]
            action = decision.action
            if action is FlushAction.ACKNOWLEDGE:
                owned.retry_at = 0.0
                owned.write_backoff.reset()
                self.ack_backlog.setdefault(symbol, []).extend(ticket.ids)
                continue
            if owned.state is not None:
                owned.state.flush_failed(ticket)
            if action is FlushAction.DROP:
                metrics.WRITE_CONFLICTS.inc()
                log.warning("write_conflict", symbol=symbol, epoch=owned.lease.epoch, detail=decision.detail)
                if self.owned.get(symbol) is owned:
                    self._drop(symbol, "a newer owner wrote the book", "lost")
            elif action is FlushAction.RETRY:
                owned.retry_at = time.monotonic() + owned.write_backoff.next_delay()
                if result is not None:
                    metrics.FLUSH_ERRORS.inc()
                    log.warning("write_failed", symbol=symbol, error=decision.detail,
                                failures=owned.write_backoff.failures)
            elif owned.state is not None:
                assert decision.stale_kind is not None and decision.detail is not None
                metrics.FLUSH_ERRORS.inc()
                log.error("book_unstorable", symbol=symbol, kind=decision.stale_kind, error=decision.detail)
                # The stale document without levels is small: the next flush stores it and acks these ids.
                owned.state.mark_stale(decision.stale_kind, decision.detail, now)
                self._note(symbol, owned.state, Outcome.STALE)
        await self._ack()
        await self._release_settled()

    async def _write(self, documents: dict[str, Document]) -> WriteResult | None:
        """The bulk write of `documents`; None when it raised, which decides nothing about any of them. A
        ping proves MongoDB reachable when nothing has for a while (no writes, or only failed ones)."""
        result = WriteResult()
        try:
            if documents:
                started = time.perf_counter()
                result = await self.store.write(documents)
                metrics.FLUSH_SECONDS.observe(time.perf_counter() - started)
                metrics.FLUSH_DOCUMENTS.observe(len(documents))
                if len(result.failed) < len(documents):
                    self._mongo_ok()
        except Exception as exc:  # not only PyMongoError: nothing may end the flush loop (or the shutdown)
            self._write_raised(exc)
            return None
        if time.monotonic() - max(self.mongo_ok_at, self._pinged_at) >= self._ping_every:
            self._pinged_at = time.monotonic()
            try:
                await self.store.ping()
                self._mongo_ok()
            except Exception as exc:
                self._write_raised(exc)
        return result

    def _write_raised(self, exc: Exception) -> None:
        if isinstance(exc, PyMongoError):
            self._mongo_failed(exc)
        else:
            metrics.FLUSH_ERRORS.inc()
            log.error("flush_failed", error=repr(exc))

    async def _ack(self) -> None:
        """XACK the backlog; what Redis refused stays in it for the next flush."""
        if not self.ack_backlog:
            return
        backlog, self.ack_backlog = self.ack_backlog, {}
        try:
            await self.streams.ack(backlog)
        except RedisError as exc:
            for symbol, ids in backlog.items():
                self.ack_backlog[symbol] = ids + self.ack_backlog.get(symbol, [])
            self._redis_failed("ack", exc)
            return
        self._redis_ok()
        metrics.ACKED.inc(sum(len(ids) for ids in backlog.values()))

    def _settled(self, symbol: str, owned: Owned) -> bool:
        """Everything read from the symbol is durable and acknowledged."""
        state = owned.state
        return state is None or not (state.dirty or state.pending_ids or symbol in self.ack_backlog)

    def _unsettled(self) -> bool:
        return bool(self.ack_backlog) or not all(self._settled(symbol, owned) for symbol, owned in self.owned.items())

    async def _release_settled(self) -> None:
        """Hand off the symbols that must move once they are settled."""
        settled = [symbol for symbol, owned in self.owned.items() if owned.releasing and self._settled(symbol, owned)]
        if not settled:
            return
        leases = [self.owned[symbol].lease for symbol in settled]
        for symbol in settled:
            self._drop(symbol, "rebalance", "released")
        try:
            await self.ownership.release(leases)
        except RedisError as exc:  # the leases then simply expire
            self._redis_failed("release", exc)

    # -- server health ---------------------------------------------------------------------------

    def _redis_ok(self) -> None:
        self.redis_ok_at = time.monotonic()
        if self._redis_down_since is not None:
            log.info("redis_reachable", down_seconds=round(self.redis_ok_at - self._redis_down_since, 3))
            self._redis_down_since = None

    def _redis_failed(self, op: str, exc: Exception) -> None:
        metrics.REDIS_ERRORS.labels(op).inc()
        if self._redis_down_since is None:
            self._redis_down_since = time.monotonic()
            log.warning("redis_unreachable", op=op, error=safe_error(exc))

    def _mongo_ok(self) -> None:
        self.mongo_ok_at = time.monotonic()
        if self._mongo_down_since is not None:
            log.info("mongo_reachable", down_seconds=round(self.mongo_ok_at - self._mongo_down_since, 3))
            self._mongo_down_since = None

    def _mongo_failed(self, exc: Exception) -> None:
        metrics.FLUSH_ERRORS.inc()
        if self._mongo_down_since is None:
            self._mongo_down_since = time.monotonic()
            log.warning("mongo_unreachable", error=safe_error(exc))
