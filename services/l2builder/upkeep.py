"""What the ownership loop keeps true of the owned books: leases renewed, sessions alive, Redis state intact.

A book goes stale where it stands, without an entry moving it, when the liveness key of its ingest session
is gone too long or when Redis lost state it relied on. Redis may come back without the state it held
(FLUSHALL, eviction, a failover to a replica behind): an epoch key missing or lower than a held lease's, a
stream or group gone, a group that went back before a book's position. The books concerned go stale
(`redis_lost`); a lease whose epoch vanished is taken again with an epoch above the one it had, so fencing
never goes backwards. Stale books ask ingest for partials through the control stream. `stale_in_place` is
the one way a book is marked stale where it stands, and why it moves the lease to a new epoch is said there.
"""

from __future__ import annotations

import time

from services.core.entries import parse_stream_id
from services.core.keys import Keys
from services.core.ratelimit import LogLimit
from services.core.text import excerpt
from services.l2builder import metrics
from services.l2builder.owned import Owned, OwnedBooks
from services.l2builder.ownership import Lease, Ownership
from services.l2builder.streams import L2Streams
from services.l2builder.symbol_state import Outcome, StaleKind, Status, SymbolState
from services.runtime.logs import EventLog
from services.runtime.redis_client import RedisClient, sessions_alive

log = EventLog("l2builder")

Marks = dict[str, tuple[StaleKind, str, bool]]
"""Books to mark stale, by symbol: (kind, detail, keep_levels)."""
INVALID_REMEMBERED = 10_000
"""Invalid names remembered so each is counted once; beyond that the memory starts afresh."""


class Upkeep:
    def __init__(self, books: OwnedBooks, redis: RedisClient, keys: Keys, ownership: Ownership,
                 streams: L2Streams, instance: str) -> None:
        self.books, self.redis, self.keys = books, redis, keys
        self.ownership, self.streams, self.instance = ownership, streams, instance
        self.invalid_symbols = 0
        self._invalid_seen: set[bytes] = set()
        self._invalid_log = LogLimit(burst=1)
        """Invalid members of the symbols set stay there (anyone may add some): one line per window."""

    async def symbols(self, now: float) -> set[str]:
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

    # -- leases ----------------------------------------------------------------------------------

    async def renew(self, now: float, everything: bool = False) -> None:
        """Extend the leases due (all of them with `everything`), then move on those whose book waits for a
        new epoch (`Owned.epoch_pending`): every pass, until that succeeds or the lease is gone."""
        leases = [owned.lease for owned in self.books.owned.values()]
        renewal = await self.ownership.renew(leases if everything else self.ownership.due(leases, now))
        for lease in renewal.lost:
            owned = self.books.owned.get(lease.symbol)
            if owned is not None and owned.lease is lease:
                self.books.drop(lease.symbol, "lease taken over or expired", "lost")
        if renewal.vanished:
            await self.retake(renewal.vanished)
        pending = [owned for owned in self.books.owned.values() if owned.epoch_pending]
        if pending:
            await self.advance(pending)

    async def retake(self, leases: list[Lease]) -> None:
        """Redis lost the epoch keys of these leases: take them again above the epochs already written
        under, and mark their books stale, since the streams may have lost entries too."""
        floors = {lease.symbol: lease.epoch + 1 for lease in leases}
        taken = {lease.symbol: lease for lease in await self.ownership.acquire(sorted(floors), floors)}
        for lease in leases:
            owned = self.books.owned.get(lease.symbol)
            if owned is None or owned.lease is not lease:
                continue
            new = taken.get(lease.symbol)
            if new is None:
                self.books.drop(lease.symbol, "Redis lost the lease's epoch and another instance holds it", "lost")
                continue
            owned.lease = new  # a new epoch: the stale book below is written under a new version
            metrics.REDIS_LOST.labels("epoch").inc()
            log.warning("lease_retaken", symbol=lease.symbol, epoch=new.epoch, previous=lease.epoch)
            state = owned.state
            if state is None:
                owned.lost = "the lease's epoch vanished from Redis"
                continue
            state.mark_stale(StaleKind.REDIS_LOST, "the lease's epoch vanished from Redis", time.monotonic())
            self.books.note(lease.symbol, state, Outcome.STALE)
            await self.streams.ensure_group(lease.symbol, state.stream_id)

    # -- stale where they stand ------------------------------------------------------------------

    async def stale_in_place(self, marks: Marks) -> list[str]:
        """Mark books stale where they stand, by symbol (kind, detail, keep_levels); return those marked.

        No entry moved them, and a document's version is (epoch, stream id): under the current epoch the
        stale document would have the version of the live one stored at the same position, which a whole
        write cannot replace. So each book turns stale in memory and waits for a new epoch
        (`Owned.epoch_pending`) before anything is awaited, and the flusher writes it only once its lease
        has moved on. When the move fails (Redis unavailable), `renew` tries it again on every pass.
        """
        targets: dict[str, tuple[Owned, SymbolState]] = {
            symbol: (owned, owned.state) for symbol in marks
            if (owned := self.books.owned.get(symbol)) is not None and owned.state is not None}
        now = time.monotonic()
        for symbol, (owned, state) in targets.items():
            kind, detail, keep_levels = marks[symbol]
            state.mark_stale(kind, detail, now, keep_levels=keep_levels)
            owned.changed_under = owned.lease.epoch
            self.books.note(symbol, state, Outcome.STALE)
        unmoved = {lease.symbol for lease in await self.advance([owned for owned, _ in targets.values()])}
        return [symbol for symbol, (owned, _) in targets.items()
                if symbol not in unmoved and self.books.owned.get(symbol) is owned]

    async def advance(self, targets: list[Owned]) -> list[Lease]:
        """Move the leases of `targets` to a new epoch; return those that could not be moved, taken again
        when their epoch key is gone (`retake`), dropped when another instance holds them."""
        unmoved = await self.ownership.advance([owned.lease for owned in targets])
        if unmoved:
            await self.retake(unmoved)
        return unmoved

    async def check_liveness(self, now: float) -> None:
        """Mark stale the live books of ingest sessions whose liveness key has been gone too long."""
        tracker = self.books.sessions
        named = {state.session for state in self.books.states() if state.session is not None}
        sessions = tracker.watch(named, now)
        changes = tracker.observe(await sessions_alive(self.redis, self.keys, sessions), now)
        for session in changes.lost:
            log.warning("session_lost", session=session, absent_for_s=round(tracker.absent_for(session, now), 1))
        # The books are read again after the await: one may have moved on to another session meanwhile.
        marks = {symbol: (StaleKind.INGEST_LOST, tracker.lost_detail(state.session, now), True)
                 for symbol, owned in self.books.owned.items()
                 if (state := owned.state) is not None and state.live and state.session is not None
                 and tracker.is_lost(state.session)}
        if marks:
            await self.stale_in_place(marks)

    async def check_groups(self) -> None:
        """Find the streams whose group Redis lost: gone, or gone back before the book's position (which
        never passes what the group handed out). A restoring or catching-up symbol checks its own."""
        owned_now = self.books.owned
        # Positions as they stand before asking: the reader may apply entries delivered after Redis answered,
        # so only a group behind where the book already was has gone back.
        before = {symbol: (owned.state, owned.state.position) for symbol, owned in owned_now.items()
                  if (owned.ready or owned.releasing) and owned.state is not None}
        marks: Marks = {}
        for symbol, group in (await self.streams.groups(list(before))).items():
            owned = owned_now.get(symbol)
            if owned is None or owned.state is None or owned.state is not before[symbol][0]:
                continue
            if group is None:
                marks[symbol] = (StaleKind.REDIS_LOST, "its stream or consumer group vanished", False)
            elif parse_stream_id(group.last_delivered) < before[symbol][1]:
                marks[symbol] = (StaleKind.REDIS_LOST, f"its consumer group went back to {group.last_delivered}",
                                 False)
            elif group.lag is not None:
                metrics.LAG.labels(symbol).set(group.lag + self.books.unacked_of(symbol, owned.state))
        if not marks:
            return
        metrics.REDIS_LOST.labels("group").inc(len(marks))
        for symbol in await self.stale_in_place(marks):
            owned = owned_now.get(symbol)
            if owned is not None and owned.state is not None:
                # Recreated at the book's position: what follows is read, and nothing twice.
                await self.streams.ensure_group(symbol, owned.state.stream_id)

    async def inspect_streams(self, consumer_expiry: float) -> None:
        """Check the group of every owned stream, sample its lag and tidy it of consumers long gone."""
        await self.check_groups()
        symbols = [symbol for symbol, owned in self.books.owned.items() if owned.state is not None]
        removed = await self.streams.remove_idle_consumers(symbols, consumer_expiry)
        if removed:
            log.info("consumers_removed", count=removed)

    async def request_resyncs(self, now: float) -> None:
        for symbol, owned in list(self.books.owned.items()):
            state = owned.state
            if state is None or not owned.lease.valid(now) or not state.resync_due(now):
                continue
            await self.streams.request_resync(symbol, state.reason or "stale", self.instance)
            state.resync_requested(now)
            metrics.RESYNC_REQUESTS.inc()
            log.info("resync_requested", symbol=symbol, reason=state.reason)

    def update_gauges(self, members: int) -> None:
        states = self.books.states()
        live = sum(state.live for state in states)
        metrics.OWNED.set(len(self.books.owned))
        metrics.MEMBERS.set(members)
        metrics.BOOKS.labels(Status.LIVE).set(live)
        metrics.BOOKS.labels(Status.STALE).set(len(states) - live)
