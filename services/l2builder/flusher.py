"""Persisting the owned books: one bulk write of every changed book, then XACK what it covered.

Each book goes as a delta (the levels changed since its last acknowledged write) unless
`full_write_reason` says it must be written whole (services.l2builder.store).

An entry is acknowledged only after the write covering it succeeded. What the flusher does with each
symbol a write carried is decided by `flush_decisions`, a pure function of the write's result: a symbol
whose write failed is retried alone after its own backoff, never holding up the others; one a newer owner
wrote is given up; one that cannot be stored goes stale; one whose version is stored with another status
waits for a new epoch. A book waiting for a new epoch (`Owned.epoch_pending`) is not written at all.
Symbols that must move are released here, once everything read from them is settled.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from pymongo.errors import PyMongoError
from redis.exceptions import RedisError

from services.l2builder import metrics
from services.l2builder.owned import BACKOFF_FIRST, Owned, OwnedBooks
from services.l2builder.ownership import Ownership
from services.l2builder.store import (
    MAX_DOCUMENT_BYTES,
    UTC,
    BookStore,
    Delta,
    Document,
    PlannedWrite,
    WriteResult,
    plan_write,
)
from services.l2builder.streams import L2Streams
from services.l2builder.symbol_state import FlushTicket, Outcome, StaleKind
from services.runtime.dependency import DependencyHealth
from services.runtime.logs import EventLog

log = EventLog("l2builder")

MONGO_PING_EVERY = 2.0
"""How long MongoDB may go unused before a ping (at most a third of HEALTH_STALE_AFTER), so an idle
but healthy server never makes /healthz fail."""


class FlushAction(enum.Enum):
    ACKNOWLEDGE = "acknowledge"
    """Durable: acknowledge the entries the write covered."""
    DROP = "drop"
    """A newer owner wrote the book: give the symbol up; its entries are the new owner's."""
    RETRY = "retry"
    """Not written: keep its entries unacknowledged and retry this symbol alone, after its own backoff."""
    REWRITE = "rewrite"
    """A delta found no document to build on: keep its entries unacknowledged, write it whole next flush."""
    NEW_EPOCH = "new_epoch"
    """The document holds this very version with another status or reason (the book changed without a new
    entry): keep its entries unacknowledged and write it once the ownership loop moved its lease on."""
    MARK_STALE = "mark_stale"
    """The book cannot be stored: make it stale without levels (`stale_kind`, `reason`); the next flush
    writes that document and acknowledges the entries."""


@dataclass(frozen=True, slots=True)
class FlushDecision:
    action: FlushAction
    stale_kind: StaleKind | None = None
    detail: str | None = None
    """What went wrong, for the log (and, after `stale_kind`, the stale reason)."""


def flush_decisions(symbols: Iterable[str], result: WriteResult | None) -> dict[str, FlushDecision]:
    """What to do with each symbol whose document a write carried; `result` None when the write raised,
    which decided nothing."""
    decisions: dict[str, FlushDecision] = {}
    for symbol in symbols:
        if result is None:
            decision = FlushDecision(FlushAction.RETRY)
        elif symbol in result.superseded:
            decision = FlushDecision(FlushAction.DROP, detail=f"stored version {result.superseded[symbol]}")
        elif symbol in result.too_large:
            detail = f"{result.too_large[symbol]} bytes, over the {MAX_DOCUMENT_BYTES}-byte limit"
            decision = FlushDecision(FlushAction.MARK_STALE, StaleKind.TOO_LARGE, detail)
        elif symbol in result.unwritable:
            problem = result.unwritable[symbol]
            decision = FlushDecision(FlushAction.MARK_STALE, StaleKind.UNWRITABLE, f"book cannot be stored: {problem}")
        elif symbol in result.same_version:
            decision = FlushDecision(FlushAction.NEW_EPOCH, detail=result.same_version[symbol])
        elif symbol in result.rebase:
            decision = FlushDecision(FlushAction.REWRITE, detail=result.rebase[symbol])
        elif symbol in result.failed:
            decision = FlushDecision(FlushAction.RETRY, detail=result.failed[symbol])
        else:
            decision = FlushDecision(FlushAction.ACKNOWLEDGE)
        decisions[symbol] = decision
    return decisions


class Flusher:
    def __init__(self, books: OwnedBooks, store: BookStore, streams: L2Streams, ownership: Ownership,
                 redis: DependencyHealth, mongo: DependencyHealth, health_stale_after: float,
                 top_levels: int) -> None:
        """`top_levels`: the best levels per side stored in `bids`/`asks` (BOOK_TOP_LEVELS)."""
        self.books, self.store, self.streams, self.ownership = books, store, streams, ownership
        self.top_levels = top_levels
        self.redis, self.mongo = redis, mongo
        self._ping_every = min(MONGO_PING_EVERY, health_stale_after / 3)
        self._pinged_at = 0.0

    async def drain(self, deadline: float, renew: Callable[[float], Awaitable[None]]) -> None:
        """Flush until everything read is settled or `deadline` (monotonic) passes, renewing the leases
        meanwhile with `renew(now)` (at shutdown, when the ownership loop no longer does)."""
        while self.books.unsettled() and time.monotonic() < deadline:
            with contextlib.suppress(RedisError):
                await renew(time.monotonic())
            await self.flush()
            if self.books.unsettled():
                await asyncio.sleep(BACKOFF_FIRST)  # the symbols that failed wait for their own backoff

    async def flush(self) -> None:
        """Write every changed book that is due in one bulk write, then XACK what it covered."""
        now = time.monotonic()
        wall = dt.datetime.now(UTC)
        owned_now, backlog = self.books.owned, self.books.ack_backlog
        tickets: dict[str, tuple[Owned, FlushTicket, PlannedWrite]] = {}
        documents: dict[str, Document] = {}
        deltas: dict[str, Delta] = {}
        for symbol, owned in owned_now.items():
            state = owned.state
            if state is None or not owned.lease.valid(now) or owned.retry_at > now or owned.epoch_pending:
                continue
            ticket = state.take_flush()
            if ticket is None:
                continue
            if ticket.write:
                planned = plan_write(state, ticket, owned.lease.epoch, wall, self.top_levels)
                if planned.delta is not None:
                    deltas[symbol] = planned.delta
                elif planned.document is not None:
                    documents[symbol] = planned.document
                tickets[symbol] = (owned, ticket, planned)
                metrics.BOOK_WRITES.labels(planned.kind).inc()
            else:
                # Only entries seen again: the last durable write covers them already.
                backlog.setdefault(symbol, []).extend(ticket.ids)
        result = await self._write(documents, deltas)
        for symbol, decision in flush_decisions(tickets, result).items():
            owned, ticket, planned = tickets[symbol]
            if decision.action is FlushAction.ACKNOWLEDGE:
                if owned.state is not None:
                    owned.state.flush_written(ticket, planned.version, planned.top, planned.tombstones,
                                              stored_before=result is not None and symbol in result.stored_before,
                                              fields=planned.fields)
            elif owned.state is not None:
                owned.state.flush_failed(ticket, planned.version, lost=decision.action is FlushAction.REWRITE,
                                         tombstones=planned.tombstones)
            self._follow(symbol, owned, decision, ticket.ids, raised=result is None, now=now)
        await self._ack()
        await self._release_settled()

    def _follow(self, symbol: str, owned: Owned, decision: FlushDecision, ids: list[str], raised: bool,
                now: float) -> None:
        """Carry out what the write's result decided for one symbol, whose state took the write's outcome."""
        action = decision.action
        if action is FlushAction.ACKNOWLEDGE:
            owned.retry_at = 0.0
            owned.write_backoff.reset()
            self.books.ack_backlog.setdefault(symbol, []).extend(ids)
            return
        if action is FlushAction.REWRITE:
            # Not a failure of MongoDB: the next flush writes the book whole, without a backoff.
            log.warning("book_rewrite", symbol=symbol, detail=decision.detail)
        elif action is FlushAction.NEW_EPOCH:
            owned.changed_under = owned.lease.epoch
            log.warning("book_needs_epoch", symbol=symbol, epoch=owned.lease.epoch, detail=decision.detail)
        elif action is FlushAction.DROP:
            metrics.WRITE_CONFLICTS.inc()
            log.warning("write_conflict", symbol=symbol, epoch=owned.lease.epoch, detail=decision.detail)
            if self.books.owned.get(symbol) is owned:
                self.books.drop(symbol, "a newer owner wrote the book", "lost")
        elif action is FlushAction.RETRY:
            owned.retry_at = time.monotonic() + owned.write_backoff.next_delay()
            if not raised:
                metrics.FLUSH_ERRORS.inc()
                log.warning("write_failed", symbol=symbol, error=decision.detail,
                            failures=owned.write_backoff.failures)
        elif owned.state is not None:
            assert decision.stale_kind is not None and decision.detail is not None
            metrics.FLUSH_ERRORS.inc()
            log.error("book_unstorable", symbol=symbol, kind=decision.stale_kind, error=decision.detail)
            # The stale document without levels is small: the next flush stores it and acks these ids.
            owned.state.mark_stale(decision.stale_kind, decision.detail, now)
            self.books.note(symbol, owned.state, Outcome.STALE)

    async def _write(self, documents: dict[str, Document], deltas: dict[str, Delta]) -> WriteResult | None:
        """The bulk write of whole `documents` and `deltas`; None when it raised, which decides nothing about
        any of them. A ping proves MongoDB reachable when nothing has for a while (no writes, or only failed
        ones)."""
        result = WriteResult()
        count = len(documents) + len(deltas)
        try:
            if count:
                started = time.perf_counter()
                result = await self.store.write(documents, deltas)
                metrics.FLUSH_SECONDS.observe(time.perf_counter() - started)
                metrics.FLUSH_DOCUMENTS.observe(count)
                if len(result.failed) < count:
                    self.mongo.succeeded("write")
        except Exception as exc:  # not only PyMongoError: nothing may end the flush loop (or the shutdown)
            self._raised("write", exc)
            return None
        if time.monotonic() - max(self.mongo.last_ok_at, self._pinged_at) >= self._ping_every:
            self._pinged_at = time.monotonic()
            try:
                await self.store.ping()
                self.mongo.succeeded("ping")
            except Exception as exc:
                self._raised("ping", exc)
        return result

    def _raised(self, operation: str, exc: Exception) -> None:
        if isinstance(exc, PyMongoError):
            self.mongo.failed(operation, exc)
        else:
            metrics.FLUSH_ERRORS.inc()
            log.error("flush_failed", error=repr(exc))

    async def _ack(self) -> None:
        """XACK the backlog; what Redis refused stays in it for the next flush."""
        if not self.books.ack_backlog:
            return
        backlog, self.books.ack_backlog = self.books.ack_backlog, {}
        try:
            await self.streams.ack(backlog)
        except RedisError as exc:
            for symbol, ids in backlog.items():
                self.books.ack_backlog[symbol] = ids + self.books.ack_backlog.get(symbol, [])
            self.redis.failed("ack", exc)
            return
        self.redis.succeeded("ack")
        metrics.ACKED.inc(sum(len(ids) for ids in backlog.values()))

    async def _release_settled(self) -> None:
        """Hand off the symbols that must move once they are settled."""
        settled = [symbol for symbol, owned in self.books.owned.items()
                   if owned.releasing and self.books.settled(symbol, owned)]
        if not settled:
            return
        leases = [self.books.owned[symbol].lease for symbol in settled]
        for symbol in settled:
            self.books.drop(symbol, "rebalance", "released")
        try:
            await self.ownership.release(leases)
        except RedisError as exc:  # the leases then simply expire
            self.redis.failed("release", exc)

    async def release_all(self) -> int:
        """Give every symbol up at shutdown, settled or not, so other instances take over at once; how many."""
        handed = list(self.books.owned)
        leases = [owned.lease for owned in self.books.owned.values()]
        for symbol in handed:
            self.books.drop(symbol, "shutdown", "released")
        with contextlib.suppress(RedisError):
            await self.ownership.release(leases)
            await self.streams.forget_consumer(handed)
        return len(handed)
