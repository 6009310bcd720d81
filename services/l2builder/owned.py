"""The symbols one instance owns: their phase, books and unacknowledged work, shared by the loops.

`Owned` is one symbol whose lease this instance holds; `OwnedBooks` holds them all with what every part of
the service does to them: feed entries to a book, note what a book became, forget a symbol, tell what is
still unsettled. The ownership loop, the reader, the restores and the flusher run on one event loop, so
they share these without locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from services.core.backoff import Backoff
from services.core.liveness import SessionTracker
from services.l2builder import metrics
from services.l2builder.ownership import Lease
from services.l2builder.phase import Phase, transition
from services.l2builder.streams import RawEntry
from services.l2builder.symbol_state import Outcome, StaleKind, SymbolState
from services.runtime.logs import EventLog

log = EventLog("l2builder")

BACKOFF_FIRST, BACKOFF_MAX = 0.1, 5.0


@dataclass(slots=True)
class Owned:
    """A symbol whose lease this instance holds, in its `phase` (services.l2builder.phase). `state` is None
    until its document is loaded; `task` restores or catches it up. `deferred` keeps what a read-ahead
    delivered while it was catching up, applied once the catch-up is done. A write that failed is not tried
    again before `retry_at` (monotonic), which `write_backoff` pushes back per failure."""

    lease: Lease
    phase: Phase = Phase.RESTORING
    state: SymbolState | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    deferred: list[list[RawEntry]] = field(default_factory=list, repr=False)
    retry_at: float = 0.0
    write_backoff: Backoff = field(default_factory=lambda: Backoff(BACKOFF_FIRST, BACKOFF_MAX), repr=False)
    lost: str | None = None
    """Redis lost state of the symbol before its document was loaded: the restored book must not be live."""
    changed_under: int | None = None
    """An epoch under which the book changed without a new entry (it went stale where it stood): under it,
    its document would have the version of the one stored before, so it waits for a higher one
    (`epoch_pending`)."""

    def move(self, target: Phase) -> None:
        """Enter `target`; raises IllegalTransition for a move the lifecycle does not allow."""
        self.phase = transition(self.phase, target)

    @property
    def ready(self) -> bool:
        return self.phase is Phase.READY

    @property
    def releasing(self) -> bool:
        return self.phase is Phase.RELEASING

    @property
    def epoch_pending(self) -> bool:
        """The flusher leaves the book until the ownership loop has moved its lease past `changed_under`."""
        return self.changed_under is not None and self.lease.epoch <= self.changed_under

    def cancel_task(self) -> None:
        """Stop restoring or catching up (not from inside that task, which ends by itself)."""
        task = self.task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()


class OwnedBooks:
    def __init__(self, sessions: SessionTracker) -> None:
        self.owned: dict[str, Owned] = {}
        self.ack_backlog: dict[str, list[str]] = {}
        """Ids covered by a durable write, waiting for XACK, by symbol."""
        self.sessions = sessions
        self.frames_applied = self.rows_applied = 0

    def states(self) -> list[SymbolState]:
        return [owned.state for owned in self.owned.values() if owned.state is not None]

    def describe(self) -> dict[str, Any]:
        """The owned symbols' part of /healthz detail."""
        states = self.states()
        return {"owned": len(self.owned), "symbols": sorted(self.owned), "live": sum(state.live for state in states),
                "stale": sum(not state.live for state in states), "restoring": len(self.owned) - len(states),
                "unacked": self.unacked()}

    def feed(self, symbol: str, state: SymbolState, entries: list[RawEntry], refilled: bool) -> bool:
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
            self.note(symbol, state, outcome)
        frames, rows = state.frames_applied - frames, state.rows_applied - rows
        self.frames_applied += frames
        self.rows_applied += rows
        metrics.FRAMES_APPLIED.inc(frames)
        metrics.ROWS_APPLIED.inc(rows)
        return complete

    def note(self, symbol: str, state: SymbolState, outcome: Outcome) -> None:
        if outcome is Outcome.DUPLICATE:
            metrics.ENTRIES_SKIPPED.inc()
        elif outcome is Outcome.STALE:
            metrics.STALE.labels(str(state.stale_kind)).inc()
            log.warning("book_stale", symbol=symbol, kind=state.stale_kind, reason=state.reason,
                        stream_id=state.stream_id)
        elif outcome is Outcome.LIVE:
            log.info("book_live", symbol=symbol, stream_id=state.stream_id, session=state.session, seq=state.seq)

    def drop(self, symbol: str, reason: str, change: str) -> None:
        """Forget a symbol at once: its unwritten work is replayed from the stream by the next owner."""
        owned = self.owned.pop(symbol, None)
        if owned is None:
            return
        owned.cancel_task()
        metrics.LEASE_CHANGES.labels(change).inc()
        with contextlib.suppress(KeyError):
            metrics.LAG.remove(symbol)
        event = log.info if change == "released" else log.warning
        event(f"lease_{change}", symbol=symbol, epoch=owned.lease.epoch, reason=reason)

    def expire(self, now: float) -> None:
        """Stop touching symbols whose lease could not be renewed in time, before anyone may take them."""
        for symbol, owned in list(self.owned.items()):
            if not owned.lease.valid(now):
                self.drop(symbol, "lease could not be renewed in time", "lost")

    def unacked(self) -> int:
        pending = sum(len(state.pending_ids) for state in self.states())
        return pending + sum(len(ids) for ids in self.ack_backlog.values())

    def unacked_of(self, symbol: str, state: SymbolState) -> int:
        return len(state.pending_ids) + len(self.ack_backlog.get(symbol, ()))

    def settled(self, symbol: str, owned: Owned) -> bool:
        """Everything read from the symbol is durable and acknowledged."""
        state = owned.state
        return state is None or not (state.dirty or state.pending_ids or symbol in self.ack_backlog)

    def unsettled(self) -> bool:
        return bool(self.ack_backlog) or not all(self.settled(symbol, owned) for symbol, owned in self.owned.items())
