"""Your own consumer group on the L2 streams: rebuild books from the raw frames, with gaps and sessions.

    python examples/l2_consumer.py [--redis-url URL] [--prefix bitmex] [--group my-books] [--consumer NAME]
                                   [--symbols XBTUSD,ETHUSD] [--from-start] [--idle-exit S] [--delete-group]

ingest appends every `orderBookL2` frame of a symbol to the stream `<prefix>:l2:{SYM}` with the fields
`frame` (the text as received), `table`, `action`, `session`, `seq` and `recv_us`; a `gap` entry
(action `gap`, with a `reason`) says frames may be missing. A group of your own gets every entry once,
whatever the project's own groups do; several consumers of one group share the entries. The rules of
a correct book, as l2builder applies them: a book starts at a `partial`; a `gap`, a new `session` or a
hole in `seq` means frames were lost, so the book is unusable until the next partial (ask ingest for
one with `XADD <prefix>:control * op resubscribe symbol SYM`); acknowledge an entry once it is applied.

Prints one line per event (partial, gap, new session, hole) and a summary per symbol at the end (after
`--idle-exit` seconds without entries, or Ctrl-C). Settings come from the flags, else from REDIS_URL
and KEY_PREFIX, else the defaults of `docker compose`.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any, cast

import redis

Level = tuple[float, int]
Reply = list[tuple[str, list[tuple[str, dict[str, str]]]]]
"""What XREADGROUP returns with decode_responses: per stream, its entries as (id, fields)."""


@dataclass
class Book:
    """One symbol's L2 book as rebuilt here, and where in the feed it stands."""

    rows: dict[tuple[str, int], Level] = field(default_factory=dict)
    usable: bool = False
    session: str | None = None
    seq: int = 0
    entries: int = 0
    why_not: str = "waiting for the first partial"

    def lose(self, why: str) -> None:
        self.usable, self.why_not = False, why

    def apply(self, action: str, data: list[dict[str, Any]]) -> None:
        if action == "partial":
            self.rows.clear()
            self.usable = True
        for row in data:
            key = (row["side"], row["id"])
            if action == "delete":
                self.rows.pop(key, None)
            elif action == "update" and key in self.rows:
                # Updates of the historical format carry no price: the level keeps its own.
                self.rows[key] = (row.get("price", self.rows[key][0]), row["size"])
            elif action in ("partial", "insert"):
                self.rows[key] = (row["price"], row["size"])

    def side(self, side: str) -> list[Level]:
        levels = [level for (row_side, _), level in self.rows.items() if row_side == side]
        return sorted(levels, reverse=side == "Buy")


def handle(symbol: str, book: Book, fields: dict[str, str]) -> str | None:
    """Apply one stream entry to `book`; return a line to print for anything but a plain delta."""
    book.entries += 1
    action, session = fields.get("action", ""), fields.get("session", "")
    if action == "gap":
        book.lose(f"gap: {fields.get('reason')}")
        return f"{symbol} gap reason={fields.get('reason')} session={session}: frames may be missing"
    event = None
    seq = int(fields.get("seq") or 0)
    if session != book.session:
        if book.session is not None:
            book.lose("new session")
            event = f"{symbol} new session {session} (was {book.session})"
        book.session = session
    elif seq != book.seq + 1 and book.usable:
        book.lose(f"hole: seq {book.seq} then {seq}")
        event = f"{symbol} hole in seq: {book.seq} then {seq}"
    book.seq = seq
    if action != "partial" and not book.usable:
        return event
    try:
        data = json.loads(fields["frame"])["data"]
        book.apply(action, data)
    except (KeyError, TypeError, ValueError) as exc:
        book.lose(f"malformed frame: {exc!r}")
        return f"{symbol} malformed entry: {exc!r}"
    if action == "partial":
        return f"{symbol} partial: {len(book.rows)} levels, book usable (session {session})"
    return event


def summary(symbol: str, book: Book) -> str:
    bids, asks = book.side("Buy"), book.side("Sell")
    state = "usable" if book.usable else f"not usable ({book.why_not})"
    best = f"best bid {bids[0][0]} x {bids[0][1]} ask {asks[0][0]} x {asks[0][1]}" if bids and asks else "empty"
    return f"summary {symbol}: {state}, {len(bids)} bids {len(asks)} asks, {best}, {book.entries} entries"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://localhost:6379/0"))
    parser.add_argument("--prefix", default=os.environ.get("KEY_PREFIX", "bitmex"))
    parser.add_argument("--group", default="my-books")
    parser.add_argument("--consumer", default=socket.gethostname())
    parser.add_argument("--symbols", help="comma-separated (default: every symbol ingest has published)")
    parser.add_argument("--from-start", action="store_true",
                        help="a new group starts at the oldest retained entry (default: only new entries)")
    parser.add_argument("--idle-exit", type=float, default=0, help="stop after S seconds without entries")
    parser.add_argument("--delete-group", action="store_true", help="remove the group when done")
    args = parser.parse_args()
    client = redis.Redis.from_url(args.redis_url, decode_responses=True)
    known = cast(set[str], client.smembers(f"{args.prefix}:symbols"))
    symbols: list[str] = args.symbols.split(",") if args.symbols else sorted(known)
    if not symbols:
        print(f"no symbols in {args.prefix}:symbols yet (is ingest running?); name them with --symbols")
        return 1
    streams = {f"{args.prefix}:l2:{{{symbol}}}": symbol for symbol in symbols}
    for stream in streams:
        try:
            client.xgroup_create(stream, args.group, id="0" if args.from_start else "$", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):  # the group exists: carry on where it stopped
                raise
    books = {symbol: Book() for symbol in symbols}
    # Entries delivered to this consumer before but never acknowledged (it stopped mid-way) come first.
    cursor: dict[Any, Any] = dict.fromkeys(streams, "0")
    quiet_since = time.monotonic()
    try:
        while not args.idle_exit or time.monotonic() - quiet_since < args.idle_exit:
            replies = cast(Reply, client.xreadgroup(args.group, args.consumer, cursor, count=500, block=500))
            delivered = False
            for stream, entries in replies or []:
                if not entries:
                    cursor[stream] = ">"  # nothing pending left: from now on, new entries only
                    continue
                delivered = True
                for entry_id, fields in entries:
                    line = handle(streams[stream], books[streams[stream]], fields or {})
                    if line:
                        print(line, flush=True)
                    if cursor[stream] != ">":
                        cursor[stream] = entry_id
                client.xack(stream, args.group, *(entry_id for entry_id, _ in entries))
            if delivered:
                quiet_since = time.monotonic()
            elif not replies:
                cursor = dict.fromkeys(streams, ">")
    except KeyboardInterrupt:
        pass
    for symbol in symbols:
        print(summary(symbol, books[symbol]))
    if args.delete_group:
        for stream in streams:
            client.xgroup_destroy(stream, args.group)
    return 0


if __name__ == "__main__":
    sys.exit(main())
