"""The L2 order-book engine: exact books rebuilt from validated `orderBookL2` frames, without I/O.

A book is trustworthy only from a `partial` onwards (BitMEX has no sequence numbers and no checksums),
so the engine never guesses. An update or delete of an unknown id, an insert of an existing id or of an
occupied price (an L2 level is one id at one price), a row whose price or side contradicts what the
book knows, or a crossed book after a frame (best bid >= best ask: a locked book is crossed too) raises
`BookInconsistency`. The book is then emptied and marked invalid: it drops every delta until the next
partial, and the caller marks the symbol stale and asks for a fresh partial.

Data structures, chosen by measurement (`python -m bench.book --alternatives 30000`, and with
`--depth 30000` for deep books). Each side keeps a plain list of sort keys in ascending order with the
best level LAST (bids: price; asks: -price, and negation is exact), a dict from sort key to the level
tuple `(price, size, id)`, and a dict from id to price. Activity is near the top, so inserts and
deletes touch the end of the list, where `insort` and `del` move almost nothing; an update is two dict
operations; the top N is a slice of the list's end. On parsed frames this applies deltas faster than
`sortedcontainers.SortedDict`, with or without a top-10 read after every frame. Keeping the asks best
first instead (plain ascending prices) moves the whole side on every change near the top and falls
further behind the deeper the book; a dict sorted only when read is the fastest to update but the
slowest once the top is read after each frame (figures in bench/RESULTS.md). Keys are compared, never
rounded: the book is exact.

Every id a delta sets or removes is added to `changed`, which its owner takes (`take_changes`) to
persist only those levels; a partial (or an inconsistency) replaces every level at once, so it empties
`changed` and counts in `loads` instead: a change of `loads` means "write it all".
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final

from services.core.bitmex import L2_TABLES, TableFrame, split_by_symbol

Level = tuple[float, int, int]
"""One price level: (price, size, id)."""

BUY: Final = "Buy"
SELL: Final = "Sell"


class BookInconsistency(Exception):
    """A frame cannot be applied to the book without guessing; the book is invalid until a partial."""

    def __init__(self, symbol: str, id: int | None, action: str, reason: str) -> None:
        self.symbol = symbol
        self.id = id
        self.action = action
        self.reason = reason
        where = f" id {id}" if id is not None else ""
        super().__init__(f"{symbol}: {action}{where}: {reason}")

    def __reduce__(self) -> tuple[type[BookInconsistency], tuple[str, int | None, str, str]]:
        return type(self), (self.symbol, self.id, self.action, self.reason)


class L2Book:
    """The exact L2 book of one symbol.

    `apply` takes frames from `parse_frame` (their rows are already validated) and returns the number of
    rows applied. Deltas that arrive while the book has no partial (before the first one, or after an
    inconsistency) are dropped and counted in `dropped_before_partial`; `has_partial` tells whether the
    book can be trusted, and `stale_reason` says why it cannot after an inconsistency.

    Level cap: the engine always keeps every level. A cap on levels per side applies only to what is
    read or exported (`top(n)`, `to_document(max_levels)`), because levels below the cap come back into
    view when better levels are deleted, and historical update and delete rows need the price of any id.
    A document that was cut says so (`truncated`), and `from_document` refuses it: a book restored from
    it could not tell a level below the cut from a missing one.
    """

    __slots__ = ("_ask_keys", "_ask_levels", "_ask_prices", "_bid_keys", "_bid_levels", "_bid_prices",
                 "_sides", "changed", "dropped_before_partial", "has_partial", "loads", "stale_reason", "symbol",
                 "timestamp")

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        # Per side: sort keys ascending with the best last, sort key -> level, id -> price. The lists and
        # dicts are only ever mutated in place, so `_sides` can hand them out as one tuple per side.
        self._bid_keys: list[float] = []
        self._ask_keys: list[float] = []
        self._bid_levels: dict[float, Level] = {}
        self._ask_levels: dict[float, Level] = {}
        self._bid_prices: dict[int, float] = {}
        self._ask_prices: dict[int, float] = {}
        self._sides: dict[str, tuple[list[float], dict[float, Level], dict[int, float], float]] = {
            BUY: (self._bid_keys, self._bid_levels, self._bid_prices, 1.0),
            SELL: (self._ask_keys, self._ask_levels, self._ask_prices, -1.0),
        }
        self.has_partial = False
        self.stale_reason: str | None = None
        self.timestamp: str | None = None
        self.dropped_before_partial = 0
        self.changed: set[int] = set()
        """Ids set or removed by deltas since the last `take_changes` (or the last partial)."""
        self.loads = 0
        """Partials loaded and invalidations: each replaced every level."""

    def __len__(self) -> int:
        return len(self._bid_keys) + len(self._ask_keys)

    def __repr__(self) -> str:
        bids, asks = self.depth
        return f"<L2Book {self.symbol} bids={bids} asks={asks} has_partial={self.has_partial}>"

    @property
    def depth(self) -> tuple[int, int]:
        """Number of levels on each side: (bids, asks)."""
        return len(self._bid_keys), len(self._ask_keys)

    def best_bid(self) -> Level | None:
        return self._bid_levels[self._bid_keys[-1]] if self._bid_keys else None

    def best_ask(self) -> Level | None:
        return self._ask_levels[self._ask_keys[-1]] if self._ask_keys else None

    def top(self, n: int | None = 10) -> tuple[list[Level], list[Level]]:
        """The best `n` levels of each side (every level for None), best first, as (price, size, id)."""
        if n is None:
            bid_keys, ask_keys = self._bid_keys[::-1], self._ask_keys[::-1]
        elif n > 0:
            bid_keys, ask_keys = self._bid_keys[:-n - 1:-1], self._ask_keys[:-n - 1:-1]
        elif n == 0:
            return [], []
        else:
            raise ValueError(f"n must be >= 0, got {n}")
        return list(map(self._bid_levels.__getitem__, bid_keys)), list(map(self._ask_levels.__getitem__, ask_keys))

    def level(self, ident: int) -> tuple[str, Level] | None:
        """The side (`BUY` or `SELL`) and level of `ident`, None when the book does not hold it."""
        price = self._bid_prices.get(ident)
        if price is not None:
            return BUY, self._bid_levels[price]
        price = self._ask_prices.get(ident)
        if price is not None:
            return SELL, self._ask_levels[-price]
        return None

    def take_changes(self) -> set[int]:
        """The ids changed since the last call (or the last partial); `changed` starts afresh."""
        changed, self.changed = self.changed, set()
        return changed

    def to_document(self, max_levels: int | None = None) -> dict[str, Any]:
        """The book in the DESIGN.md document form, at most `max_levels` per side (None: every level).

        `{"bids": [[price, size, id], ...], "asks": [...], "timestamp": str | None, "truncated": bool}`,
        best first; `truncated` is true when a side had more levels than `max_levels`.
        """
        bids, asks = self.top(max_levels)
        return {
            "bids": [list(level) for level in bids],
            "asks": [list(level) for level in asks],
            "timestamp": self.timestamp,
            "truncated": max_levels is not None and max(self.depth) > max_levels,
        }

    @classmethod
    def from_document(cls, symbol: str, document: Mapping[str, Any]) -> L2Book:
        """Restore a book exported by `to_document`; raise ValueError for an invalid or cut document."""
        if document.get("truncated"):
            raise ValueError(f"{symbol}: cannot restore an exact book from a truncated document")
        timestamp = document.get("timestamp")
        if timestamp is not None and type(timestamp) is not str:
            raise ValueError(f"{symbol}: document timestamp is not a string: {timestamp!r}")
        sides = {name: _document_levels(symbol, document, name) for name in ("bids", "asks")}
        rows = [_document_row(symbol, BUY, level) for level in sides["bids"]]
        rows += [_document_row(symbol, SELL, level) for level in sides["asks"]]
        book = cls(symbol)
        try:
            book._load(rows)
        except BookInconsistency as exc:
            raise ValueError(f"invalid document: {exc}") from None
        for restored, name in zip(book.top(None), ("bids", "asks"), strict=True):
            if restored != [tuple(level) for level in sides[name]]:
                raise ValueError(f"{symbol}: document {name} are not in best-first order")
        book.timestamp = timestamp
        return book

    def apply(self, frame: TableFrame) -> int:
        """Apply one frame of this symbol; return the number of rows applied (0 when dropped).

        Raise `BookInconsistency` when the frame contradicts the book (the book is then invalid until
        the next partial) and ValueError when the frame is not an L2 frame of this symbol.
        """
        rows = frame.data
        action = frame.action
        if frame.symbol != self.symbol or frame.table not in L2_TABLES:
            self._check_frame(frame)
        if action == "partial":
            self._load(rows)
        elif not self.has_partial:
            self.dropped_before_partial += 1
            return 0
        else:
            try:
                if action == "update":
                    self._update(rows)
                elif action == "delete":
                    self._delete(rows)
                else:
                    self._insert(rows)
                    # only an insert can cross a book: updates keep prices and deletes only widen it
                    self._check_not_crossed(action)
            except BookInconsistency as exc:
                self._invalidate(str(exc))
                raise
        if rows:
            stamp = rows[-1].get("timestamp")
            if stamp is None and len(rows) > 1:  # only historical rows lack it: no frame is expected to mix
                for row in rows:
                    stamp = row.get("timestamp", stamp)
            if stamp is not None:
                self.timestamp = stamp
        return len(rows)

    def _check_frame(self, frame: TableFrame) -> None:
        """Reject a frame of another table or symbol; an empty delta names no symbol and is harmless."""
        if frame.table not in L2_TABLES:
            raise ValueError(f"{frame.table} is not an L2 order-book table")
        if frame.data or frame.action == "partial":
            raise ValueError(f"frame for symbol {frame.symbol!r} applied to the book of {self.symbol}"
                             " (split mixed frames with split_by_symbol)")

    def _load(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Replace the book with the rows of a partial (an empty partial gives an empty, valid book)."""
        for side in (self._bid_keys, self._ask_keys, self._bid_levels, self._ask_levels,
                     self._bid_prices, self._ask_prices):
            side.clear()
        self.timestamp = None
        self.has_partial = True
        self.stale_reason = None
        self.changed.clear()
        self.loads += 1
        try:
            self._insert(rows, "partial", sort=False)
            self._bid_keys[:] = sorted(self._bid_levels)
            self._ask_keys[:] = sorted(self._ask_levels)
            self._check_not_crossed("partial")
        except BookInconsistency as exc:
            self._invalidate(str(exc))
            raise

    def _insert(self, rows: Sequence[Mapping[str, Any]], action: str = "insert", sort: bool = True) -> None:
        sides, bid_prices, ask_prices, changed = self._sides, self._bid_prices, self._ask_prices, self.changed
        for row in rows:
            ident = row["id"]
            if ident in bid_prices or ident in ask_prices:
                raise self._error(ident, action, "id is already in the book")
            keys, levels, prices, sign = sides[row["side"]]
            price = row["price"]
            if type(price) is int:
                price = float(price)  # one type for prices, so documents and levels compare alike
            key = price * sign
            if key in levels:
                raise self._error(ident, action, f"price {price} is already held by id {levels[key][2]}")
            levels[key] = (price, row["size"], ident)
            prices[ident] = price
            if sort:
                insort(keys, key)
                changed.add(ident)

    def _update(self, rows: Sequence[Mapping[str, Any]]) -> None:
        sides, changed = self._sides, self.changed
        for row in rows:
            ident = row["id"]
            _, levels, prices, sign = sides[row["side"]]
            price = prices.get(ident)
            if price is None:
                raise self._unknown(ident, "update", row["side"])
            if "price" in row and row["price"] != price:
                raise self._error(ident, "update", f"row price {row['price']} differs from book price {price}")
            levels[price * sign] = (price, row["size"], ident)
            changed.add(ident)

    def _delete(self, rows: Sequence[Mapping[str, Any]]) -> None:
        sides, changed = self._sides, self.changed
        for row in rows:
            ident = row["id"]
            keys, levels, prices, sign = sides[row["side"]]
            price = prices.pop(ident, None)
            if price is None:
                raise self._unknown(ident, "delete", row["side"])
            if "price" in row and row["price"] != price:
                raise self._error(ident, "delete", f"row price {row['price']} differs from book price {price}")
            key = price * sign
            del levels[key]
            del keys[bisect_left(keys, key)]
            changed.add(ident)

    def _invalidate(self, reason: str) -> None:
        for side in (self._bid_keys, self._ask_keys, self._bid_levels, self._ask_levels,
                     self._bid_prices, self._ask_prices):
            side.clear()
        self.changed.clear()
        self.loads += 1
        self.has_partial = False
        self.stale_reason = reason

    def _error(self, ident: int | None, action: str, reason: str) -> BookInconsistency:
        return BookInconsistency(self.symbol, ident, action, reason)

    def _check_not_crossed(self, action: str) -> None:
        bid_keys, ask_keys = self._bid_keys, self._ask_keys
        if bid_keys and ask_keys and bid_keys[-1] >= -ask_keys[-1]:
            raise self._error(None, action, f"book crossed: best bid {bid_keys[-1]} >= best ask {-ask_keys[-1]}")

    def _unknown(self, ident: int, action: str, side: str) -> BookInconsistency:
        other = self._ask_prices if side == BUY else self._bid_prices
        if ident in other:
            return self._error(ident, action, f"row side is {side} but the id is on the other side")
        return self._error(ident, action, "unknown id")


def _document_levels(symbol: str, document: Mapping[str, Any], name: str) -> list[Any]:
    levels = document.get(name)
    if not isinstance(levels, list):
        raise ValueError(f"{symbol}: document {name} is missing or not a list")
    return levels


def _document_row(symbol: str, side: str, level: Any) -> dict[str, Any]:
    if not isinstance(level, (list, tuple)) or len(level) != 3:
        raise ValueError(f"{symbol}: document level is not [price, size, id]: {level!r}")
    price, size, ident = level
    if type(price) not in (int, float) or price != price or price in (float("inf"), float("-inf")):
        raise ValueError(f"{symbol}: document price is not a finite number: {level!r}")
    if type(size) is not int or size <= 0 or type(ident) is not int:
        raise ValueError(f"{symbol}: document size or id is not a positive integer: {level!r}")
    return {"symbol": symbol, "id": ident, "side": side, "size": size, "price": price}


class BookSet:
    """The L2 books of many symbols, fed the frames of one L2 table in stream order.

    `apply` routes each frame to its symbol's book (creating it on first sight), splits the rare frame
    that mixes symbols, and lets each book drop and count the deltas that precede its partial. A second
    partial for a symbol replaces its book. When a mixed frame is inconsistent for several symbols every
    one of those books is invalidated and the error of the first is raised.
    """

    def __init__(self) -> None:
        self._books: dict[str, L2Book] = {}

    def __len__(self) -> int:
        return len(self._books)

    def __iter__(self) -> Iterator[L2Book]:
        return iter(self._books.values())

    def __contains__(self, symbol: object) -> bool:
        return symbol in self._books

    def book(self, symbol: str) -> L2Book | None:
        return self._books.get(symbol)

    @property
    def dropped_before_partial(self) -> dict[str, int]:
        """Deltas dropped per symbol because no partial covered them."""
        return {symbol: book.dropped_before_partial for symbol, book in self._books.items()
                if book.dropped_before_partial}

    def apply(self, frame: TableFrame) -> int:
        """Apply one L2 frame; return rows applied. Raises like `L2Book.apply`."""
        book = self._books.get(frame.symbol)  # type: ignore[arg-type]
        if book is not None:
            return book.apply(frame)
        if frame.table not in L2_TABLES:
            raise ValueError(f"{frame.table} is not an L2 order-book table")
        if frame.symbol is not None:
            book = self._books[frame.symbol] = L2Book(frame.symbol)
            return book.apply(frame)
        applied = 0
        first_error: BookInconsistency | None = None
        for part in split_by_symbol(frame) if frame.data else []:
            try:
                applied += self.apply(part)
            except BookInconsistency as exc:
                first_error = first_error or exc
        if first_error is not None:
            raise first_error
        return applied
