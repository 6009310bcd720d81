"""From ob10 stream entries to compare-and-set writes: the pure part of top10, with no I/O.

A batch read from the streams becomes a `BatchPlan`. Every `orderBook10` row is a whole top 10, so of
the valid snapshots a batch holds for one symbol only the newest by (exchange time, stream id) needs
writing: the script would refuse the older ones anyway, or let the newest replace them a moment later. Likewise
only the newest gap marker per symbol needs marking the key stale.
Every entry, good or bad, is acknowledged once the writes are done; a bad one is reported with an
excerpt, so the log shows what arrived, and never reaches the store.

An exchange time is trusted only up to the tolerance ahead of the entry's receive time: a frame stamped
further in the future (a venue's clock gone wrong, a forged frame) is ordered by its receive time instead,
so it cannot hold the key against the real snapshots that follow it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from services.core.bitmex import ORDERBOOK10_TABLE, ProtocolError, TableFrame, parse_frame
from services.core.entries import (
    GAP_ACTION,
    EntryError,
    RawFields,
    StreamEntry,
    decode_entry,
    field_map,
    parse_stream_id,
)
from services.core.keys import SYMBOL_PATTERN, Keys
from services.core.orderbook10 import Top10Snapshot, parse_orderbook10, timestamp_key
from services.core.text import excerpt

OrderKey = tuple[int, int, int]
"""(order time in epoch microseconds, stream id ms, stream id seq): the order the script keeps. The order
time is the exchange time, or the receive time when the exchange time leads it by more than the tolerance."""

RawEntry = tuple[bytes | str, RawFields | None]
"""One entry as the client returns it: its id and its fields (None or empty when the entry was trimmed away)."""

Acks = dict[bytes | str, list[bytes | str]]
"""Entry ids to acknowledge, per stream."""


@dataclass(frozen=True, slots=True)
class Top10Write:
    """The newest valid snapshot of a symbol in a batch, with what the store needs to order it."""

    symbol: str
    stream_id: str
    order: OrderKey
    recv_us: int
    session: str
    snapshot: Top10Snapshot
    future: bool = False
    """The exchange time led the receive time by more than the tolerance: ordered by receive time."""


@dataclass(frozen=True, slots=True)
class GapMark:
    """The newest gap marker of a symbol in a batch: its key turns stale unless it holds a newer snapshot."""

    symbol: str
    stream_id: str
    position: tuple[int, int]
    session: str
    reason: str
    """The key's stale reason, `gap: <the marker's reason>`."""


@dataclass(frozen=True, slots=True)
class Rejection:
    """An entry that is not a valid orderBook10 snapshot of its stream's symbol."""

    stream: str
    stream_id: str
    reason: str
    excerpt: str


@dataclass(slots=True)
class BatchPlan:
    """What to do with one batch: the writes, then the acknowledgements of every entry."""

    tolerance_us: int
    """How far an exchange time may lead the receive time before it is not trusted."""
    writes: dict[str, Top10Write] = field(default_factory=dict)
    acks: Acks = field(default_factory=dict)
    entries: int = 0
    superseded: int = 0
    gaps: int = 0
    empty: int = 0
    trimmed: list[tuple[str, str]] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    future: list[Top10Write] = field(default_factory=list)
    """Every valid snapshot stamped beyond the tolerance, superseded in the batch or not."""
    gap_marks: dict[str, GapMark] = field(default_factory=dict)

    def add(self, stream: bytes | str, symbol: str, entry_id: bytes | str, fields: RawFields | None) -> None:
        """Classify one entry of `stream` (the ob10 stream of `symbol`) and schedule its acknowledgement."""
        self.entries += 1
        self.acks.setdefault(stream, []).append(entry_id)
        stream_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        if not fields:
            # XREADGROUP returns an id with no fields for a pending entry that MAXLEN trimmed away
            # before anyone processed it: a loss to report, not a malformed entry.
            self.trimmed.append((_text(stream), stream_id))
            return
        try:
            entry = decode_entry(stream_id, fields)
            if entry.is_gap:
                # Frames may be missing from here on: the key cannot be trusted until the next snapshot.
                self.gaps += 1
                self._add_gap(symbol, entry)
                return
            write = read_snapshot(symbol, entry, self.tolerance_us)
        except (EntryError, ProtocolError) as exc:
            reason = exc.reason if isinstance(exc, ProtocolError) else str(exc)
            shown = field_map(fields).get(b"frame") or repr(fields)
            self.rejected.append(Rejection(_text(stream), stream_id, reason, excerpt(shown)))
            return
        if write is None:
            self.empty += 1
            return
        if write.future:
            self.future.append(write)
        current = self.writes.get(symbol)
        if current is not None:
            self.superseded += 1
        if current is None or write.order > current.order:
            self.writes[symbol] = write


    def _add_gap(self, symbol: str, entry: StreamEntry) -> None:
        position = parse_stream_id(entry.stream_id)
        current = self.gap_marks.get(symbol)
        if current is None or position > current.position:
            self.gap_marks[symbol] = GapMark(symbol, entry.stream_id, position, entry.session,
                                             f"{GAP_ACTION}: {entry.reason or 'unspecified'}")


def read_snapshot(symbol: str, entry: StreamEntry, tolerance_us: int) -> Top10Write | None:
    """The write an entry of `symbol`'s ob10 stream asks for; None for a frame with no rows.

    Raises EntryError or ProtocolError when the frame is malformed, is not an orderBook10 frame or is
    about another symbol (`decode_entry` has checked the session already).
    """
    if entry.table != ORDERBOOK10_TABLE:
        raise EntryError(f"entry {entry.stream_id} of table {entry.table!r} in an {ORDERBOOK10_TABLE} stream")
    frame = parse_frame(entry.frame)
    if not isinstance(frame, TableFrame):
        raise ProtocolError(f"expected an {ORDERBOOK10_TABLE} table frame, got {type(frame).__name__}")
    snapshots = parse_orderbook10(frame)
    for snapshot in snapshots:
        if snapshot.symbol != symbol:
            raise ProtocolError(f"row for {snapshot.symbol!r} in the stream of {symbol!r}")
    if not snapshots:
        return None
    ms, seq = parse_stream_id(entry.stream_id)
    # Several rows of one symbol in one frame would be unusual; the newest of them is the frame's snapshot.
    stamped = [(timestamp_key(snapshot.timestamp), index, snapshot) for index, snapshot in enumerate(snapshots)]
    ts_us, _, newest = max(stamped)
    future = ts_us > entry.recv_us + tolerance_us
    order_us = entry.recv_us if future else ts_us
    return Top10Write(symbol, entry.stream_id, (order_us, ms, seq), entry.recv_us, entry.session, newest, future)


def stream_symbol(keys: Keys, stream: bytes) -> str | None:
    """The symbol of an ob10 stream key as Redis returned it; None unless it is exactly the ob10 stream of a
    valid symbol name, so nothing else ever becomes a key or a log field."""
    text = stream.decode("utf-8", "replace")
    try:
        symbol = keys.symbol_of(text)
    except ValueError:
        return None
    return symbol if SYMBOL_PATTERN.fullmatch(symbol) and keys.ob10_stream(symbol) == text else None


def plan_batch(streams: Iterable[tuple[bytes | str, str, Sequence[RawEntry]]], tolerance_us: int) -> BatchPlan:
    """Plan a batch given as `(stream key, symbol, entries)` per stream, entries in stream order."""
    plan = BatchPlan(tolerance_us)
    for stream, symbol, entries in streams:
        for entry_id, fields in entries:
            plan.add(stream, symbol, entry_id, fields)
    return plan


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
