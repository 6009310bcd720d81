"""The book of one symbol fed in stream order: sessions, seqs, holes, stale and live, without I/O.

BitMEX has no sequence numbers, so ingest stamps every entry with `(session, seq)`: seq counts 1, 2, 3...
per websocket session and stream, without holes. That is what lets this state machine tell a replayed
entry (seen already: ignore it) from a missing one (a hole: the book can no longer be trusted) and a new
connection (a new session: the book must wait for that session's partial).

`SymbolState.feed` consumes one entry and says what happened (`Outcome`). It never guesses: whenever the
book cannot be proved right it becomes `stale`, with a reason, and stays so until the next partial. A hole
is first reported as `Outcome.HOLE` without consuming anything, because the missing entries may still be
in the stream (a consumer-group read can skip entries another reader took); the caller re-reads the range
and feeds it with `refilled=True`, and only a hole that survives that makes the book stale.

Stale books ask for a fresh partial through the control stream. Urgent causes (a malformed frame, an
inconsistency, a hole, trimmed history) ask at once; a gap marker or a new session asks only if no
partial has come after a grace period, because ingest subscribes afresh after every reconnect anyway.
`resync_due`/`resync_requested` carry that policy; the caller owns the clock and the I/O.

The state also keeps what must be persisted and acknowledged: `dirty` and the ids consumed since the last
durable write, handed out as a `FlushTicket` and given back if the write fails. So that a write can send
only the levels that changed, it also remembers what the last acknowledged write stored (`written`) and the
level ids changed since then that went out in writes whose outcome is unknown (`unsure_ids`, sent again
with the next write: a `$set` of current values is harmless twice).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from services.core.bitmex import ProtocolError, TableFrame, parse_frame
from services.core.book import BookInconsistency, L2Book
from services.core.entries import (
    GAP_ACTION,
    EntryError,
    RawFields,
    StreamEntry,
    decode_entry,
    decode_next,
    parse_stream_id,
)
from services.core.text import excerpt

StreamKey = tuple[int, int]
START: StreamKey = (0, 0)


class Status(enum.StrEnum):
    LIVE = "live"
    STALE = "stale"


class StaleKind(enum.StrEnum):
    """Why a book is stale; the label of the metric and the urgency of its resync request."""

    NO_PARTIAL = "no_partial"
    GAP = "gap"
    SESSION = "session"
    HOLE = "hole"
    MALFORMED = "malformed"
    INCONSISTENT = "inconsistency"
    TRIMMED = "trimmed"
    INVALID_DOCUMENT = "invalid_document"
    UNWRITABLE = "unwritable"
    """BSON cannot encode the book (an integer beyond 64 bits); not urgent, a new partial may bring it back."""
    TOO_LARGE = "too_large"
    """The book outgrew MongoDB's document size limit; not urgent, since a new partial may rebuild the same book."""
    RESTORED = "restored"
    INGEST_LOST = "ingest_lost"
    """The liveness key of the book's session expired: ingest died or lost the venue without a gap marker."""
    REDIS_LOST = "redis_lost"
    """Redis lost state the book relied on (its stream, group, lease or epoch): entries may be gone."""


URGENT_KINDS = frozenset({StaleKind.HOLE, StaleKind.MALFORMED, StaleKind.INCONSISTENT, StaleKind.TRIMMED,
                          StaleKind.INVALID_DOCUMENT, StaleKind.INGEST_LOST, StaleKind.REDIS_LOST})
UNSTORABLE_KINDS = frozenset({StaleKind.UNWRITABLE, StaleKind.TOO_LARGE})
"""Kinds whose levels are what cannot be stored: their stale document keeps no levels."""


def stale_reason(kind: StaleKind, detail: str) -> str:
    """A stale book's reason, `<kind>: <detail>`: its machine-readable kind is `reason.split(":")[0]`."""
    return f"{kind}: {detail}"


class Outcome(enum.Enum):
    APPLIED = "applied"
    """Consumed: a live book took the frame, or a book waiting for its partial dropped it."""
    DUPLICATE = "duplicate"
    """An entry or a seq seen already: nothing applied, but its id is acknowledged with the rest."""
    HOLE = "hole"
    """Not consumed: entries are missing before this one; re-read them, then feed again with refilled=True."""
    STALE = "stale"
    """Consumed, and the book just became stale: see `stale_kind` and `reason`."""
    LIVE = "live"
    """Consumed: a partial made a stale book live."""


TopLevels = tuple[list[list[Any]], list[list[Any]]]
"""The best levels of each side as stored in `bids`/`asks`, `[price, size, id]`, best first."""
MAX_UNSURE_WRITES = 8
"""Writes of unknown outcome in a row after which the next write is whole again (each one's version is a
stored version a delta must be able to build on)."""


@dataclass(slots=True)
class Written:
    """What an acknowledged write stored of `book`: a delta builds on it while the book is the same object
    and has loaded no partial since (`loads`). `top` is the best levels stored in `bids`/`asks`, None when
    unknown (after a restore, or a write of unknown outcome that may have changed them). `versions` are the
    versions the document may hold: the acknowledged one, then those of writes of unknown outcome."""

    book: L2Book
    loads: int
    versions: list[str]
    top: TopLevels | None = None
    tombstones: int = 0
    """At most this many removed levels (null) are in the stored level map."""
    fields: Mapping[str, Any] | None = None
    """The other fields stored (position, depths, status...), None when unknown like `top`: a delta sets
    only those that differ."""


@dataclass(frozen=True, slots=True)
class FlushTicket:
    """What one flush takes from a state: whether the book must be written and the ids it covers; for a
    write, the book shown (`SymbolState.shown_book`) with its `loads`, and the level ids changed since the
    last acknowledged write, `base` (None: no delta can build on it, write the whole book)."""

    symbol: str
    write: bool
    ids: list[str]
    book: L2Book | None = None
    loads: int = 0
    changed: set[int] = field(default_factory=set)
    base: Written | None = None


@dataclass(slots=True)
class SymbolState:
    """The book of one symbol and its position in the stream; see the module docstring.

    Create a fresh one with `SymbolState(symbol, resync_interval)` or a restored one with `restored`.
    `stream_id`, `session` and `seq` are those of the last consumed entry. `last_book` is the last exact
    book of a stale state, whose levels its document keeps until the next partial (None while live).
    """

    symbol: str
    resync_interval: float
    book: L2Book = field(init=False)
    last_book: L2Book | None = None
    live: bool = False
    stale_kind: StaleKind | None = StaleKind.NO_PARTIAL
    reason: str | None = stale_reason(StaleKind.NO_PARTIAL, "waiting for the first partial")
    stream_id: str | None = None
    session: str | None = None
    seq: int = 0
    received_us: int | None = None
    dirty: bool = False
    pending_ids: list[str] = field(default_factory=list)
    written: Written | None = None
    unsure_ids: set[int] = field(default_factory=set)
    frames_applied: int = 0
    rows_applied: int = 0
    next_resync_at: float | None = None

    def __post_init__(self) -> None:
        self.book = L2Book(self.symbol)

    @classmethod
    def restored(cls, symbol: str, resync_interval: float, now: float, *, book: L2Book | None,
                 stream_id: str | None, session: str | None, seq: int, received_us: int | None,
                 stale_kind: StaleKind | None, reason: str | None) -> SymbolState:
        """The state a previous owner persisted: a stale kind means not live, and `book` (if any) is then
        the stale document's last levels, kept until the next partial. `reason` is stored as it came."""
        state = cls(symbol, resync_interval)
        state.stream_id, state.session, state.seq, state.received_us = stream_id, session, seq, received_us
        if book is not None and stale_kind is None:
            state.book, state.live, state.stale_kind, state.reason = book, True, None, None
        else:
            state.mark_stale(stale_kind or StaleKind.RESTORED, "restored stale", now)
            state.reason = reason or state.reason
            state.last_book = book
        return state

    @property
    def status(self) -> Status:
        return Status.LIVE if self.live else Status.STALE

    @property
    def shown_book(self) -> L2Book:
        """The book the document shows: the current one, or a stale state's last exact levels."""
        return self.book if self.book.has_partial or self.last_book is None else self.last_book

    @property
    def position(self) -> StreamKey:
        """The last consumed stream id as a comparable pair."""
        return parse_stream_id(self.stream_id) if self.stream_id else START

    # -- feeding ---------------------------------------------------------------------------------

    def feed_raw(self, stream_id: bytes, fields: RawFields, now: float, refilled: bool = False) -> Outcome:
        """Consume one entry as Redis returns it: `feed` after `decode_entry`, or `feed_malformed` when it
        cannot be decoded. The next frame of our session, nearly every entry, skips the full decode."""
        expected = decode_next(stream_id, fields, self.session, self.seq + 1)
        if expected is not None:
            sid, frame, recv_us = expected
            self._next(sid, recv_us)
            return self._apply(frame, now)
        try:
            entry = decode_entry(stream_id, fields)
        except EntryError as exc:
            return self.feed_malformed(stream_id.decode(), str(exc), now)
        return self.feed(entry, now, refilled)

    def feed(self, entry: StreamEntry, now: float, refilled: bool = False) -> Outcome:
        """Consume `entry` (the next one read from the stream); see `Outcome` for what it returns."""
        if entry.seq == self.seq + 1 and entry.session == self.session:
            # The common case, kept short: the next seq of our session is newer than anything consumed,
            # because ingest appends a session's entries in seq order.
            self._next(entry.stream_id, entry.recv_us)
            return self._apply(entry.frame, now) if entry.action != GAP_ACTION else self._gap(entry, now)
        if parse_stream_id(entry.stream_id) <= self.position:
            self.pending_ids.append(entry.stream_id)
            return Outcome.DUPLICATE
        same_session = entry.session == self.session
        if same_session and entry.seq <= self.seq:
            self._take(entry)
            return Outcome.DUPLICATE
        if self.live and entry.action != "partial":
            if same_session or entry.seq != 1:
                if not refilled:
                    return Outcome.HOLE
                first = self.seq + 1 if same_session else 1
                self._take(entry)
                self.mark_stale(StaleKind.HOLE, f"entries missing from the stream: seq {first}..{entry.seq - 1}"
                                f" of session {entry.session}", now)
                return Outcome.STALE
            if self.session is not None:
                self._take(entry)
                self.mark_stale(StaleKind.SESSION, f"new ingest session {entry.session}, waiting for its partial",
                                now)
                return Outcome.STALE
        if not self.live and self.book.has_partial and entry.action != "partial":
            # Levels kept by a stale book (`keep_levels`) follow only the next seqs of their own session.
            self.book = L2Book(self.symbol)
        self._take(entry)
        return self._apply(entry.frame, now) if entry.action != GAP_ACTION else self._gap(entry, now)

    def feed_malformed(self, stream_id: str, problem: str, now: float) -> Outcome:
        """Consume an entry that could not be decoded: its session and seq are unknown, so the book is lost."""
        if parse_stream_id(stream_id) <= self.position:
            self.pending_ids.append(stream_id)
            return Outcome.DUPLICATE
        self.stream_id = stream_id
        self.pending_ids.append(stream_id)
        self.mark_stale(StaleKind.MALFORMED, f"entry {stream_id}: {problem}", now)
        return Outcome.STALE

    def check_retained(self, first_id: str | None, first: StreamEntry | None, max_deleted_id: str,
                       now: float) -> bool:
        """Check that the stream still holds every entry after `position`; if not, go stale and say False.

        `first_id`/`first` describe the oldest retained entry (`first` None when it cannot be decoded),
        `max_deleted_id` is XINFO STREAM's max-deleted-entry-id (XDEL). MAXLEN trimming does not move that
        id, so continuity is proved with seqs: the oldest entry must be the next seq of our session, or
        seq 1 of a session (whose partial is then still ahead). Anything else means entries we needed
        were trimmed away.
        """
        lost: str | None = None
        if parse_stream_id(max_deleted_id) > self.position:
            lost = f"entries up to {max_deleted_id} were deleted from the stream"
        elif first_id is not None and parse_stream_id(first_id) > self.position:
            if first is None:
                lost = f"the oldest retained entry {first_id} is malformed"
            elif not (first.seq == 1 or (first.session == self.session and first.seq == self.seq + 1)):
                lost = (f"entries before {first_id} (seq {first.seq} of session {first.session}) were trimmed"
                        f" from the stream")
        if lost is None:
            return True
        self.mark_stale(StaleKind.TRIMMED, lost, now)
        return False

    def check_stream_end(self, last_generated_id: str, now: float) -> bool:
        """Check that the stream has reached `position` (XINFO STREAM's last-generated-id); if not, Redis
        lost the entries the book was built from and whatever followed them: go stale and say False."""
        if parse_stream_id(last_generated_id) >= self.position:
            return True
        self.mark_stale(StaleKind.REDIS_LOST, f"the stream ends at {last_generated_id}, before the stored"
                        f" position {self.stream_id}", now)
        return False

    def mark_stale(self, kind: StaleKind, detail: str, now: float, keep_levels: bool = False) -> None:
        """Stop trusting the book until the next partial; urgent kinds ask for a resync at once.

        The reason is `stale_reason(kind, detail)`.

        The last exact levels stay in the document (a stale book says it cannot be trusted, but shows
        where the market was), unless they are what cannot be stored; a book that contradicted a frame
        has already emptied itself. `keep_levels` goes further and keeps applying to the book, for a book
        that was exact when its source went silent: its session's next entries, if any come, still fit.
        """
        if self.live and self.book.has_partial:
            self.last_book = self.book
        if kind in UNSTORABLE_KINDS:
            self.last_book = None
        if not keep_levels:
            self.book = L2Book(self.symbol)
        self.live, self.stale_kind, self.reason = False, kind, stale_reason(kind, detail)
        self.next_resync_at = now if kind in URGENT_KINDS else now + self.resync_interval
        self.dirty = True

    def _next(self, stream_id: str, recv_us: int) -> None:
        """Take the entry that follows the last one consumed in the same session."""
        self.stream_id, self.received_us = stream_id, recv_us
        self.seq += 1
        self.pending_ids.append(stream_id)
        self.dirty = True

    def _take(self, entry: StreamEntry) -> None:
        self.stream_id, self.session, self.seq, self.received_us = (entry.stream_id, entry.session, entry.seq,
                                                                   entry.recv_us)
        self.pending_ids.append(entry.stream_id)
        self.dirty = True

    def _gap(self, entry: StreamEntry, now: float) -> Outcome:
        if not self.live:
            return Outcome.APPLIED
        self.mark_stale(StaleKind.GAP, entry.reason or "unspecified", now)
        return Outcome.STALE

    def _apply(self, text: str | bytes, now: float) -> Outcome:
        try:
            frame = parse_frame(text)
            if type(frame) is not TableFrame:
                raise ProtocolError("not a table frame", text)
            rows = self.book.apply(frame)  # a ValueError for a frame of another table or symbol
        except BookInconsistency as exc:
            self.mark_stale(StaleKind.INCONSISTENT, str(exc), now)
            return Outcome.STALE
        except ValueError as exc:  # ProtocolError, or a frame of another symbol
            self.mark_stale(StaleKind.MALFORMED, f"frame: {excerpt(str(exc), 300)}", now)
            return Outcome.STALE
        except Exception as exc:  # input the parser or the book did not foresee costs this book, not the service
            self.mark_stale(StaleKind.MALFORMED, f"frame not applicable: {excerpt(repr(exc), 300)}", now)
            return Outcome.STALE
        if self.book.has_partial:  # a delta dropped while waiting for a partial is not applied
            self.frames_applied += 1
            self.rows_applied += rows
        if frame.action == "partial" and not self.live:
            self.live, self.stale_kind, self.reason, self.last_book = True, None, None, None
            self.next_resync_at = None
            return Outcome.LIVE
        return Outcome.APPLIED

    # -- resync policy ---------------------------------------------------------------------------

    def resync_due(self, now: float) -> bool:
        return self.next_resync_at is not None and now >= self.next_resync_at

    def resync_requested(self, now: float) -> None:
        """Ask again after `resync_interval` if no partial has come by then."""
        self.next_resync_at = now + self.resync_interval

    # -- persistence -----------------------------------------------------------------------------

    def take_flush(self) -> FlushTicket | None:
        """Hand the unpersisted state to one flush, or None when there is nothing to write or ack."""
        if not self.dirty and not self.pending_ids:
            return None
        if self.dirty:
            book = self.shown_book
            changed = book.take_changes()
            written = self.written
            if written is not None and written.book is book and written.loads == book.loads:
                changed |= self.unsure_ids
            else:
                written = None
            ticket = FlushTicket(self.symbol, True, self.pending_ids, book, book.loads, changed, written)
        else:
            ticket = FlushTicket(self.symbol, False, self.pending_ids)
        self.dirty = False
        self.pending_ids = []
        return ticket

    def flush_written(self, ticket: FlushTicket, version: str, top: TopLevels, tombstones: int = 0,
                      stored_before: bool = False, fields: Mapping[str, Any] | None = None) -> None:
        """The write of `ticket` is durable as `version`, with `top` in `bids`/`asks`, `tombstones` removed
        levels in its map and `fields` as its other fields: the next delta builds on it.

        `stored_before`: the document held `version` already (a whole write refused with 11000), so its map
        holds what an earlier write of that version left: at most the base's removed levels, which are kept,
        or an unknown number without a base, so the next write is whole."""
        if ticket.book is None:
            return
        if stored_before:
            if ticket.base is None or self.written is not ticket.base:
                self.written, self.unsure_ids = None, set()
                return
            tombstones, fields = max(tombstones, ticket.base.tombstones), None
        self.written = Written(ticket.book, ticket.loads, [version], top, tombstones, fields)
        self.unsure_ids = set()

    def flush_failed(self, ticket: FlushTicket, version: str | None = None, lost: bool = False,
                     tombstones: int = 0) -> None:
        """Take the ticket back: its ids stay unacknowledged and the book is written again next time.

        The write (as `version`, leaving `tombstones` removed levels) may still have landed: while the ticket
        had a base (a delta, or a whole write for compaction or a size check), its changed ids are sent again
        with the next write, which may build on the base or on `version`; after a whole write without a base,
        or when `lost` (the stored document is not one a delta can build on), the next write is whole.
        """
        self.pending_ids = ticket.ids + self.pending_ids
        self.dirty = self.dirty or ticket.write
        if not ticket.write:
            return
        written = self.written
        if (lost or ticket.base is None or written is not ticket.base or version is None
                or len(written.versions) > MAX_UNSURE_WRITES):
            self.written, self.unsure_ids = None, set()
            return
        written.versions.append(version)
        written.top = written.fields = None
        written.tombstones = max(written.tombstones, tombstones)
        self.unsure_ids = ticket.changed
