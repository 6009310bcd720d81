"""The activity signal: which symbols' streams just got entries, so that readers read only those.

Redis pays for every stream an XREADGROUP names, whether it has entries or not, and a blocked XREADGROUP
registers (and unregisters) its client on every one: with hundreds of quiet symbols that is most of Redis's
work per entry, and on a Redis Cluster one command cannot even name streams of two slots. So whoever appends
to the `l2` or `ob10` streams (ingest, after each batch) also appends one entry to `<prefix>:activity:<kind>`
naming the symbols it appended to (field `s`, space-separated). Readers block on that one stream with a
plain XREAD (no group: every reader sees every signal), then read with XREADGROUP the streams it named.

The signal is a hint, never the truth. A reader also reads every stream it serves every FULL_READ_INTERVAL,
at its start and after an error, and whenever it may have missed signals (a read of the activity stream
that came back full: more may have been trimmed away), so a lost signal (a failover, a publisher that writes
none) costs latency, never an entry. `ActivityReads` is that decision, free of I/O.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from services.core.entries import stream_pairs
from services.core.keys import SYMBOL_PATTERN

ACTIVITY_MAXLEN: Final = 1000
"""Approximate MAXLEN of an activity stream: signals are useful for a moment only."""
ACTIVITY_FIELD: Final = "s"
ACTIVITY_FIELD_BYTES: Final = ACTIVITY_FIELD.encode()
KNOWN_TEXTS: Final = 10_000
"""Signal texts a reader remembers the symbols of: bounded, so a stranger's signals cannot grow it."""
READ_SIGNALS: Final = 200
"""Signals read per XREAD; a reply this long may have skipped some, so everything is read next."""
FULL_READ_INTERVAL: Final = 1.0
"""Seconds between two reads of every served stream, whatever the signals said."""

Command = tuple[str | int, ...]


def signal_command(key: str, symbols: Iterable[str]) -> Command:
    """The XADD announcing that the streams of `symbols` got entries (append it after those entries)."""
    return ("XADD", key, "MAXLEN", "~", ACTIVITY_MAXLEN, "*", ACTIVITY_FIELD, " ".join(sorted(set(symbols))))


def signalled_symbols(entries: Sequence[Any],
                      known: dict[bytes, frozenset[str]] | None = None) -> tuple[str | None, set[str]]:
    """The last id and the symbols named by XREAD/XREVRANGE entries (`[id, [field, value, ...]]` raw, or
    with the fields in a dict as redis-py parses them).

    A name that is no symbol is dropped here: what a reader does with the rest is intersect it with the
    symbols it serves, so a stranger's signal can make it read, never read something it does not serve.
    `known` caches what each signal text names: a reader sees the same few texts again and again."""
    symbols: set[str] = set()
    cache = {} if known is None else known
    for _entry_id, fields in entries:
        if type(fields) is list and len(fields) == 2 and fields[0] == ACTIVITY_FIELD_BYTES:
            raw = fields[1]  # what ingest writes: one field, raw from the wire
            named = cache.get(raw)
            if named is None:
                named = _named(raw, cache)
            symbols |= named
            continue
        pairs = fields.items() if isinstance(fields, Mapping) else zip(fields[::2], fields[1::2], strict=True)
        for name, value in pairs:
            if name in (ACTIVITY_FIELD_BYTES, ACTIVITY_FIELD):
                text = value if isinstance(value, bytes) else str(value).encode()
                symbols |= cache.get(text) or _named(text, cache)
    if not entries:
        return None, symbols
    last = entries[-1][0]
    return (last.decode() if isinstance(last, bytes) else str(last)), symbols


def _named(raw: bytes, cache: dict[bytes, frozenset[str]]) -> frozenset[str]:
    """The symbols a signal text names (its other words dropped), remembered in `cache` while it has room."""
    named = frozenset(symbol for symbol in raw.decode(errors="replace").split(" ") if SYMBOL_PATTERN.fullmatch(symbol))
    if len(cache) < KNOWN_TEXTS:
        cache[raw] = named
    return named


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """What one read names: these symbols' streams; `full` when it is the read of every served stream."""

    symbols: list[str]
    full: bool


class ActivityReads:
    """One reader's view of an activity stream: where it is in it, and which streams to read next.

    Use: `plan` before each read (the symbols to read, then `signal_read` for the activity stream), then
    `read_done` with the symbols whose read came back full, and `signals` with the activity reply.
    """

    def __init__(self, key: str, full_read_interval: float = FULL_READ_INTERVAL) -> None:
        self.key = key
        self._interval = full_read_interval
        self._last_id: str | None = None
        """The id of the last signal seen; None until the stream's end is learnt (see `signal_read`)."""
        self._pending: set[str] = set()
        """Symbols signalled (or read full) and not read since."""
        self._full_due = float("-inf")
        self._texts: dict[bytes, frozenset[str]] = {}

    @property
    def learning(self) -> bool:
        """Whether `signal_read` learns where the stream ends (send it before the reads, not after)."""
        return self._last_id is None

    @property
    def pending(self) -> frozenset[str]:
        return frozenset(self._pending)

    def plan(self, served: Collection[str], now: float) -> ReadPlan:
        """The streams to read now, of the `served` symbols: all when a full read is due, else the signalled."""
        if now >= self._full_due:
            return ReadPlan(sorted(served), True)
        return ReadPlan(sorted(self._pending.intersection(served)), False)

    def wake(self, symbols: Iterable[str]) -> None:
        """Have `symbols` read next, signalled or not (a stream just joined or made ready)."""
        self._pending.update(symbols)

    def read_done(self, plan: ReadPlan, now: float, filled: Iterable[str] = ()) -> None:
        """After the read of `plan` succeeded; `filled` are the symbols whose read came back full (more wait)."""
        self._pending.difference_update(plan.symbols)
        self._pending.update(filled)
        if plan.full:
            self._full_due = now + self._interval

    def read_failed(self) -> None:
        """After a failed read: what it may have missed is read in full next time."""
        self._full_due = float("-inf")

    def signal_read(self, block_ms: int | None) -> Command:
        """The read of new signals (blocking `block_ms`, or not at all for None), or, until the stream's end
        is known, the XREVRANGE that learns it; send it before the reads it covers: a signal written after it
        is seen by the next one, and what came before is read by the full read that is due then."""
        if self._last_id is None:
            return ("XREVRANGE", self.key, "+", "-", "COUNT", 1)
        block: tuple[str | int, ...] = () if block_ms is None else ("BLOCK", block_ms)
        return ("XREAD", "COUNT", READ_SIGNALS, *block, "STREAMS", self.key, self._last_id)

    def signals(self, reply: Any) -> None:
        """Take in the reply of `signal_read`'s command (an XREAD or XREVRANGE reply, raw)."""
        if self._last_id is None:
            last, _ = signalled_symbols(reply or [])
            self._last_id = last or "0-0"
            return
        entries: list[Any] = []
        for _key, stream_entries in stream_pairs(reply):
            entries.extend(stream_entries)
        last, symbols = signalled_symbols(entries, self._texts)
        if last is not None:
            self._last_id = last
        self._pending |= symbols
        if len(entries) >= READ_SIGNALS:
            self._full_due = float("-inf")

    def forget_position(self) -> None:
        """The activity stream may be gone or new (Redis lost data, a failover): learn its end again."""
        self._last_id = None
        self._full_due = float("-inf")
