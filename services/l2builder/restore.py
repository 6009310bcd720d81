"""Restoring a symbol just taken and catching it up with the stream, until the reader may take it over.

Taking a symbol loads its stored document (the book and its position) and then reads with XRANGE what
the group already handed out but nobody made durable: a previous owner's pending entries, which the group
never delivers again. A seq hole in what the group delivers, or a failed XREADGROUP that may still have
been served, is repaired the same way: back to catching up from the book's own position. One task per
symbol does this (`Owned.task`); it ends by making the symbol READY, or when the symbol is forgotten.

The phase moves of services.l2builder.phase are made here, from taking a lease to the start of a hand-off,
but for the one a document's load makes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from typing import Any

from pymongo.errors import PyMongoError
from redis.exceptions import RedisError

from services.core.backoff import Backoff
from services.core.entries import EntryError, decode_entry, parse_stream_id
from services.l2builder import metrics
from services.l2builder.owned import BACKOFF_FIRST, BACKOFF_MAX, Owned, OwnedBooks
from services.l2builder.ownership import Lease, Ownership
from services.l2builder.phase import Phase, kept_phase
from services.l2builder.store import BookStore, Document, restore_state
from services.l2builder.streams import L2Streams
from services.l2builder.symbol_state import Outcome, StaleKind
from services.l2builder.upkeep import Upkeep
from services.runtime.dependency import DependencyHealth
from services.runtime.health import safe_error
from services.runtime.logs import EventLog

log = EventLog("l2builder")

DocumentsTask = asyncio.Task[dict[str, Document]]
RANGE_COUNT = 1000
"""Entries per XRANGE page while catching up."""
RESTORE_CONCURRENCY = 16
"""Restores and catch-ups talking to Redis at once. Each holds a connection of the shared pool (redis-py's
default: 100) while it waits; hundreds of symbols taken at once would otherwise exhaust it, and every
restore, the ownership loop's renewals included, would fail and back off."""


class Restorer:
    def __init__(self, books: OwnedBooks, store: BookStore, streams: L2Streams, ownership: Ownership,
                 upkeep: Upkeep, redis: DependencyHealth, mongo: DependencyHealth, resync_interval: float,
                 caught_up: Callable[[], None]) -> None:
        """`caught_up` is called whenever a symbol becomes READY (it wakes the reader)."""
        self.books, self.store, self.streams, self.ownership, self.upkeep = books, store, streams, ownership, upkeep
        self.redis, self.mongo = redis, mongo
        self.resync_interval = resync_interval
        self._caught_up = caught_up
        self._slots = asyncio.Semaphore(RESTORE_CONCURRENCY)

    def take(self, leases: list[Lease]) -> None:
        """Own the symbols of newly acquired leases and restore each."""
        if not leases:
            return
        # One query for the documents of every symbol taken at once (all of them at start-up).
        documents = asyncio.create_task(self.store.load_many([lease.symbol for lease in leases]))
        for lease in leases:
            owned = Owned(lease)
            self.books.owned[lease.symbol] = owned
            metrics.LEASE_CHANGES.labels("acquired").inc()
            log.info("lease_acquired", symbol=lease.symbol, epoch=lease.epoch)
            self.start(lease.symbol, owned, documents)

    def rebalance(self, symbol: str, owned: Owned, moving: bool) -> None:
        """Start handing off a symbol that must move (no longer read or caught up: the next owner reads on
        from its document), or keep one whose hand-off the membership called off."""
        if moving and not owned.releasing:
            log.info("handing_off", symbol=symbol, epoch=owned.lease.epoch)
            owned.cancel_task()
            owned.deferred.clear()
            owned.move(Phase.RELEASING)
        elif not moving and owned.releasing:
            owned.move(kept_phase(owned.state is not None))
            self.start(symbol, owned)

    def start(self, symbol: str, owned: Owned, documents: DocumentsTask | None = None) -> None:
        """Restore a symbol in RESTORING or CATCHING_UP in its own task."""
        assert owned.phase in (Phase.RESTORING, Phase.CATCHING_UP), owned.phase
        owned.task = self._spawn(self._restore(symbol, owned, documents), symbol)

    def catch_up(self, symbol: str, owned: Owned) -> None:
        """Send a READY symbol back to catching up from its own position."""
        owned.move(Phase.CATCHING_UP)
        self.start(symbol, owned)

    def catch_up_after_failed_read(self) -> None:
        """A failed XREADGROUP may still have been served: its entries are then delivered to this consumer
        (pending) but were never seen, and `>` will not hand them out again. Every symbol goes back to
        catching up with XRANGE from its own position, which reads them from the stream itself."""
        for symbol, owned in self.books.owned.items():
            if owned.ready:
                self.catch_up(symbol, owned)

    def _spawn(self, coroutine: Coroutine[Any, Any, None], symbol: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coroutine, name=f"restore-{symbol}")
        task.add_done_callback(lambda done: self._ended(symbol, done))
        return task

    def _ended(self, symbol: str, task: asyncio.Task[None]) -> None:
        """A restore that died of an unexpected error gives the symbol up, to be taken again cleanly."""
        if task.cancelled() or task.exception() is None:
            return
        log.error("restore_failed", symbol=symbol, error=repr(task.exception()))
        owned = self.books.owned.get(symbol)
        if owned is not None and owned.task is task:
            self.books.drop(symbol, "restore failed", "lost")

    async def _restore(self, symbol: str, owned: Owned, documents: DocumentsTask | None) -> None:
        """Load the stored book (first time only), then catch up with XRANGE until the reader may take over.

        `documents` is a query already loading the documents of the symbols acquired together; if it
        fails, each symbol loads its own document, retrying until MongoDB answers.
        """
        backoff = Backoff(BACKOFF_FIRST, BACKOFF_MAX)
        while self.books.owned.get(symbol) is owned:
            try:
                if owned.phase is Phase.RESTORING:
                    preloaded = None
                    if documents is not None:
                        with contextlib.suppress(PyMongoError):
                            preloaded = await asyncio.shield(documents)
                        documents = None
                    document = preloaded.get(symbol) if preloaded is not None else await self.store.load(symbol)
                    async with self._slots:
                        if not await self._load(symbol, owned, document):
                            return
                async with self._slots:
                    if not await self._catch_up(symbol, owned):
                        return
                deferred, owned.deferred = owned.deferred, []
                assert owned.state is not None
                state = owned.state
                if all(self.books.feed(symbol, state, entries, refilled=False) for entries in deferred):
                    owned.move(Phase.READY)
                    self._caught_up()
                    return
                metrics.HOLES_REFILLED.inc()  # a hole in what was read ahead: catch up once more
            except (RedisError, PyMongoError) as exc:
                log.warning("restore_retry", symbol=symbol, error=safe_error(exc))
                await asyncio.sleep(backoff.next_delay())

    async def _load(self, symbol: str, owned: Owned, document: Document | None) -> bool:
        """Continue from `document`: RESTORING to CATCHING_UP; False when the lease went meanwhile."""
        self.mongo.succeeded("restore")
        stored_epoch = document.get("epoch") if document else None
        if isinstance(stored_epoch, int) and stored_epoch >= owned.lease.epoch:
            log.warning("epoch_behind_document", symbol=symbol, epoch=owned.lease.epoch, stored=stored_epoch)
            if not await self.ownership.raise_epoch(owned.lease, stored_epoch + 1):
                self.books.drop(symbol, "lease lost while raising its epoch", "lost")
                return False
        now = time.monotonic()
        state = restore_state(symbol, document, self.resync_interval, now)
        if owned.lost is not None:
            state.mark_stale(StaleKind.REDIS_LOST, owned.lost, now)
            self.books.note(symbol, state, Outcome.STALE)
            owned.lost = None
        await self.streams.ensure_group(symbol, state.stream_id)
        head = await self.streams.head(symbol)
        first_id, first = None, None
        if head.first is not None:
            first_id = head.first[0].decode()
            with contextlib.suppress(EntryError):
                first = decode_entry(*head.first)
        if not state.check_retained(first_id, first, head.max_deleted_id, now):
            self.books.note(symbol, state, Outcome.STALE)
        elif not state.check_stream_end(head.last_generated_id, now):
            metrics.REDIS_LOST.labels("stream").inc()
            self.books.note(symbol, state, Outcome.STALE)
        if state.stream_id is not None:
            await self.streams.ack_covered(symbol, state.stream_id)
        owned.state = state
        owned.move(Phase.CATCHING_UP)
        log.info("restored", symbol=symbol, epoch=owned.lease.epoch, stream_id=state.stream_id,
                 seq=state.seq, status=state.status, reason=state.reason)
        return True

    async def _catch_up(self, symbol: str, owned: Owned) -> bool:
        """Apply what the group handed out after the book's position; False when the lease went meanwhile."""
        state = owned.state
        assert state is not None
        until = await self.streams.last_delivered(symbol)
        if until is None:  # ensured when the document was loaded: Redis lost it since
            metrics.REDIS_LOST.labels("group").inc()
            await self.upkeep.stale_in_place({symbol: (StaleKind.REDIS_LOST, "its stream or consumer group vanished",
                                                       False)})
            await self.streams.ensure_group(symbol, state.stream_id)
            return True
        end = parse_stream_id(until)
        while state.position < end:
            if self.books.owned.get(symbol) is not owned or not owned.lease.valid(time.monotonic()):
                return False
            page = await self.streams.read_range(symbol, state.stream_id, until, RANGE_COUNT)
            self.redis.succeeded("catch_up")
            if not page:
                break
            self.books.feed(symbol, state, page, refilled=True)
            await asyncio.sleep(0)
        return True
