"""The l2builder service: own symbols, apply their streams in order, persist the books to MongoDB.

Three loops share one event loop and the owned symbols (services.l2builder.owned), so no locks are needed:

- ownership, every tick: heartbeat, renew leases, compute the symbols this instance should own by
  rendezvous hashing, acquire those (then restore them) and hand off those that must move, check the
  liveness keys of the sessions of the live books, ask ingest for partials for stale books, sample lag
  (services.l2builder.upkeep);
- reader: XREADGROUP over the owned, READY streams the activity stream named; each entry goes to its
  `SymbolState`;
- flusher, every FLUSH_INTERVAL: one unordered bulk write of every changed book, then XACK what it
  covered (services.l2builder.flusher).

Each owned symbol goes through the phases of services.l2builder.phase: restored from its document and
caught up with the stream (services.l2builder.restore), then READY for the reader, then RELEASING when it
must move. When a lease cannot be renewed in time the symbol is dropped at once and its unwritten work is
left for the next owner, who replays it from the stream. Outages of Redis or MongoDB only pause things:
the loops retry with backoff; Redis coming back without the state it held is services.l2builder.upkeep's.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Mapping
from typing import Any

from redis.exceptions import RedisError, ResponseError

from services.core.backoff import Backoff
from services.core.keys import Keys
from services.core.liveness import SessionTracker
from services.l2builder import metrics
from services.l2builder.flusher import Flusher
from services.l2builder.owned import BACKOFF_FIRST, BACKOFF_MAX, OwnedBooks
from services.l2builder.ownership import Ownership
from services.l2builder.rendezvous import assigned
from services.l2builder.restore import Restorer
from services.l2builder.store import BookStore
from services.l2builder.streams import L2Streams, RawEntry
from services.l2builder.upkeep import Upkeep
from services.runtime.config import Settings, mask_url
from services.runtime.dependency import DependencyHealth
from services.runtime.logs import EventLog
from services.runtime.redis_client import EvictionWatch, connect

log = EventLog("l2builder")

ReadTask = asyncio.Task[list[tuple[str, list[RawEntry]]]]

TICK_MAX = 0.5
"""Longest pause between two ownership ticks (shorter with a short LEASE_TTL)."""
TICK_MIN = 0.05
READ_COUNT = 500
"""Entries per stream per XREADGROUP."""
READ_BLOCK_MS = 100
"""BLOCK of the activity read when no stream is to be read; short, so a newly owned stream is read within
this time."""
READ_PAUSE_SHARE = 0.1
"""After a read that filled no stream's COUNT, the next waits this share of FLUSH_INTERVAL: each read
names the streams signalled since the one before (services.core.activity), so reading at every entry would
pay a round trip, and Redis a command, per entry; a book is written once per FLUSH_INTERVAL anyway, so this
adds at most a tenth of it to the receive -> MongoDB latency. A full read is followed at once (a backlog
drains at full speed)."""
REDIS_SOCKET_TIMEOUT = 5.0
"""Longer than READ_BLOCK_MS, or every idle read would time out; short enough to notice a hung server."""
MAX_UNACKED_PER_SYMBOL = 100_000
"""Entries of one symbol read but not yet durable after which that symbol is no longer read (its writes
fail, or MongoDB is slow or down); the others read on."""
INSPECT_EVERY = 2.0
SHUTDOWN_FLUSH_SECONDS = 10.0
GC_GEN0_THRESHOLD = 50_000
"""Every entry allocates a few short-lived containers and almost no cycles, so collecting the youngest
generation far less often than Python's default saves CPU for nothing; `python -m bench.variant
--gc-threshold 700 l2builder` runs it with the default, for `python -m bench.l2builder` to compare."""


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
        self.books = OwnedBooks(SessionTracker())
        self.owned = self.books.owned
        self.members: list[str] = []
        self.redis_health = DependencyHealth("redis", log, metrics.REDIS_ERRORS.labels, per_operation=False)
        self.mongo_health = DependencyHealth("mongo", log, lambda _: metrics.FLUSH_ERRORS, per_operation=False)
        self._inspected_at = 0.0
        self._draining = False
        self._drain = asyncio.Event()
        self._wake_reader = asyncio.Event()
        self.eviction = EvictionWatch(log)
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
        """The clients of Redis and MongoDB (connected on first use) and the parts that use them."""
        settings = self.settings
        self.redis = connect(settings.redis_url, REDIS_SOCKET_TIMEOUT, f"l2builder:{self.instance}")
        self.store = BookStore(settings.mongo_url, settings.mongo_database)
        self.ownership = Ownership(self.redis, self.keys, self.instance, settings.lease_ttl)
        self.streams = L2Streams(self.redis, self.keys, self.instance, settings.redis_url, REDIS_SOCKET_TIMEOUT)
        self.upkeep = Upkeep(self.books, self.redis, self.keys, self.ownership, self.streams, self.instance)
        self.restorer = Restorer(self.books, self.store, self.streams, self.ownership, self.upkeep,
                                 self.redis_health, self.mongo_health, settings.resubscribe_interval,
                                 self._wake_reader.set)
        self.flusher = Flusher(self.books, self.store, self.streams, self.ownership, self.redis_health,
                               self.mongo_health, settings.health_stale_after, settings.book_top_levels)

    async def close(self) -> None:
        self.streams.close()
        await self.redis.aclose()
        await self.store.close()

    async def _shutdown(self, loops: list[asyncio.Task[None]]) -> None:
        """Flush, acknowledge and release everything, so other instances take over at once."""
        self._draining = True
        self._drain.set()
        await asyncio.gather(*loops, return_exceptions=True)
        tasks = [owned.task for owned in self.owned.values() if owned.task and not owned.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(RedisError):
            await self.ownership.leave()
        await self.flusher.drain(time.monotonic() + SHUTDOWN_FLUSH_SECONDS, self.upkeep.renew)
        handed = await self.flusher.release_all()
        log.info("handed_off", symbols=handed, unsettled=self.books.unsettled(),
                 frames_applied=self.books.frames_applied, rows_applied=self.books.rows_applied)
        await self.close()

    def health(self) -> tuple[bool, dict[str, Any]]:
        now = time.monotonic()
        limit = self.settings.health_stale_after
        redis_age, mongo_age = now - self.redis_health.last_ok_at, now - self.mongo_health.last_ok_at
        # The reads have a connection of their own: the ownership loop reaching Redis proves nothing about them.
        # Counted while symbols are owned: a failed read is followed by a successful one, or by none if the
        # symbols went meanwhile (nothing left to read) or their catch-ups never end (unhealthy indeed).
        reads_failing = self.redis_health.failing_for("read", now) if self.owned else 0.0
        detail = {
            "instance": self.instance,
            "members": len(self.members),
            **self.books.describe(),
            "read_paused": len(self.read_paused),
            "invalid_symbols": self.upkeep.invalid_symbols,
            "redis_ok_seconds_ago": round(redis_age, 3),
            "reads_failing_seconds": round(reads_failing, 3),
            "mongo_ok_seconds_ago": round(mongo_age, 3),
        }
        self.eviction.describe(detail)
        if reads_failing:
            detail["last_error"] = self.redis_health.last_error
        return redis_age < limit and mongo_age < limit and reads_failing < limit, detail

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
            symbols = await self.upkeep.symbols(now)
            await self.upkeep.renew(now, everything=rejoined)
        except RedisError as exc:
            self.redis_health.failed("ownership", exc)
            self.books.expire(time.monotonic())
            return
        self.redis_health.succeeded("ownership")
        self.books.expire(time.monotonic())
        if members != self.members:
            log.info("members", members=",".join(members), count=len(members))
            self.members = members
        desired = assigned(self.instance, symbols, members)
        for symbol, owned in self.owned.items():
            self.restorer.rebalance(symbol, owned, moving=symbol not in desired)
        try:
            self.restorer.take(await self.ownership.acquire(sorted(desired - self.owned.keys())))
            await self.upkeep.check_liveness(time.monotonic())
            await self.upkeep.request_resyncs(time.monotonic())
            if now - self._inspected_at >= INSPECT_EVERY:
                self._inspected_at = now
                await self.upkeep.inspect_streams(self.settings.consumer_expiry)
            await self.eviction.check(self.redis, now)
        except RedisError as exc:
            self.redis_health.failed("ownership", exc)
        self.upkeep.update_gauges(len(self.members))

    # -- reading and applying --------------------------------------------------------------------

    async def _read_loop(self) -> None:
        """Read new entries: while a backlog lasts, one XREADGROUP ahead, so Redis prepares the next batch
        while this one is applied; once reads come back short, paced (READ_PAUSE_SHARE)."""
        backoff = Backoff(BACKOFF_FIRST, BACKOFF_MAX)
        ahead: ReadTask | None = None
        pause = self.settings.flush_interval * READ_PAUSE_SHARE
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
                            await self.upkeep.check_groups()
                        except RedisError as error:
                            self.redis_health.failed("read", error)
                            await self._pause(backoff.next_delay())
                        continue
                    self.redis_health.failed("read", exc)
                    self.restorer.catch_up_after_failed_read()
                    await self._pause(backoff.next_delay())
                    continue
                self.redis_health.succeeded("read")
                backoff.reset()
                read_at = time.monotonic()
                full = any(len(entries) >= READ_COUNT for _, entries in batch)
                ahead = self._read_ahead() if full else None
                if ahead is not None:
                    await asyncio.sleep(0)  # the read-ahead sends its command now, not after this whole batch
                for symbol, entries in batch:
                    self._apply(symbol, entries)
                    await asyncio.sleep(0)
                if not full:
                    await self._pause(read_at + pause - time.monotonic())
        finally:
            if ahead is not None:
                ahead.cancel()  # whatever it delivers stays pending; the next owner reads it with XRANGE

    def _read_ahead(self) -> ReadTask | None:
        unacked = {symbol: self.books.unacked_of(symbol, owned.state) for symbol, owned in self.owned.items()
                   if owned.ready and owned.state is not None}
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
        if not owned.ready:
            # Read ahead before a hole sent the symbol back to catching up: applied after the catch-up.
            owned.deferred.append(entries)
            return
        assert owned.state is not None
        if not self.books.feed(symbol, owned.state, entries, refilled=False):
            metrics.HOLES_REFILLED.inc()
            log.info("hole", symbol=symbol, after=owned.state.stream_id, seq=owned.state.seq)
            self.restorer.catch_up(symbol, owned)

    # -- persisting ------------------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        """Flush every FLUSH_INTERVAL whatever happened: a failure only backs off the symbols it concerns."""
        previous: float | None = None
        while not self._draining:
            started = time.monotonic()
            if previous is not None:
                metrics.FLUSH_CYCLE_SECONDS.observe(started - previous)
            previous = started
            await self.flusher.flush()
            await self._pause(max(self.settings.flush_interval - (time.monotonic() - started), 0.001))
