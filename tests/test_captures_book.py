"""Real BitMEX data: every frame of the three 2021 captures parses, and every orderBookL2 frame replays
through the engine with zero inconsistencies, never a crossed book, and final books equal to an
independent reconstruction written here with plain dicts."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from services.core.bitmex import TableFrame, Welcome, parse_frame
from services.core.book import BookSet, L2Book
from services.core.capture import iter_capture

# (file, L2 frames per action, symbols) as documented in the captures' README
CAPTURES = [
    ("2021-04-05.capture", {"partial": 10, "insert": 2209, "update": 1952, "delete": 2222},
     {"DOGEUSDT", "XLMUSDT", "ADAM21", "ETHUSDM21", "TRXM21", "LINKUSDT", "EOSUSDT", "BCHM21", "XBTM21", "XBTU21"}),
    ("2021-04-17.capture", {"partial": 10, "insert": 713, "update": 421, "delete": 718}, None),
    ("2021-07-22.capture", {"partial": 10, "insert": 445, "update": 1090, "delete": 434}, None),
]


class PlainBooks:
    """The straightforward reconstruction from stdlib-parsed frames: per symbol a dict id -> [side, size,
    price], the price of an update or delete taken from the id, with asserts for what must hold."""

    def __init__(self) -> None:
        self.books: dict[str, dict[int, list[Any]]] = {}
        self.dropped: Counter[str] = Counter()

    def apply(self, message: dict[str, Any]) -> str:
        symbol: str = message["data"][0]["symbol"] if message["data"] else message["filter"]["symbol"]
        assert all(row["symbol"] == symbol for row in message["data"]), "captures have no mixed frames"
        action = message["action"]
        if action == "partial":
            self.books[symbol] = {row["id"]: [row["side"], row["size"], row["price"]] for row in message["data"]}
            return symbol
        book = self.books.get(symbol)
        if book is None:
            self.dropped[symbol] += 1
            return symbol
        for row in message["data"]:
            if action == "insert":
                assert row["id"] not in book
                book[row["id"]] = [row["side"], row["size"], row["price"]]
            elif action == "update":
                assert book[row["id"]][0] == row["side"]
                book[row["id"]][1] = row["size"]
            else:
                assert book.pop(row["id"])[0] == row["side"]
        return symbol

    def best(self, symbol: str) -> tuple[float | None, float | None]:
        levels = self.books[symbol].values()
        bids = [price for side, _, price in levels if side == "Buy"]
        asks = [price for side, _, price in levels if side == "Sell"]
        return max(bids, default=None), min(asks, default=None)

    def levels(self, symbol: str) -> tuple[list[tuple[float, int, int]], list[tuple[float, int, int]]]:
        book = self.books[symbol]
        bids = sorted(((price, size, ident) for ident, (side, size, price) in book.items() if side == "Buy"),
                      key=lambda level: -level[0])
        asks = sorted(((price, size, ident) for ident, (side, size, price) in book.items() if side == "Sell"),
                      key=lambda level: level[0])
        return bids, asks


@pytest.mark.parametrize(("name", "actions", "symbols"), CAPTURES, ids=[case[0] for case in CAPTURES])
def test_capture_replays_exactly(captures_dir: Path, name: str, actions: dict[str, int],
                                 symbols: set[str] | None) -> None:
    engine = BookSet()
    plain = PlainBooks()
    seen: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    for _, text in iter_capture(captures_dir / name):
        frame = parse_frame(text)
        kinds[type(frame).__name__] += 1
        if not isinstance(frame, TableFrame) or frame.table != "orderBookL2":
            continue
        seen[frame.action] += 1
        applied = engine.apply(frame)
        symbol = plain.apply(json.loads(text))
        book = engine.book(symbol)
        assert book is not None and book.has_partial == (symbol in plain.books)
        assert applied == (len(frame.data) if book.has_partial else 0)
        if book.has_partial:
            best_bid, best_ask = plain.best(symbol)
            engine_bid, engine_ask = book.best_bid(), book.best_ask()
            assert (engine_bid and engine_bid[0], engine_ask and engine_ask[0]) == (best_bid, best_ask)
            assert best_bid is None or best_ask is None or best_bid < best_ask, f"{symbol} crossed after {text[:80]}"

    assert seen == actions
    assert kinds["Welcome"] == 1 and kinds["SubscriptionAck"] == 30
    assert {book.symbol for book in engine} == set(plain.books)
    if symbols is not None:
        assert set(plain.books) == symbols
    assert len(plain.books) == 10
    assert engine.dropped_before_partial == {symbol: count for symbol, count in plain.dropped.items() if count}
    for symbol in plain.books:
        book = engine.book(symbol)
        assert book is not None
        assert book.top(None) == plain.levels(symbol), symbol
        assert book.timestamp is None  # the 2021 rows carry no timestamp
        assert L2Book.from_document(symbol, book.to_document()).top(None) == book.top(None)


def test_welcome_of_a_capture(captures_dir: Path) -> None:
    _, text = next(iter_capture(captures_dir / "2021-07-22.capture"))
    welcome = parse_frame(text)
    assert isinstance(welcome, Welcome)
    assert welcome.timestamp == "2021-07-22T22:36:07.865Z" and welcome.limit == {"remaining": 39}
