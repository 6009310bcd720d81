"""Layout-2 book documents without a server: the level map, the changes a delta writes (tombstones for removed
levels), and the reader."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.core.bitmex import TableFrame
from services.core.book import L2Book
from services.core.bookdoc import LAYOUT, LEVELS, book_levels, level_changes, level_map, tombstones

SYMBOL = "XBTUSD"


def frame(action: str, rows: list[dict[str, Any]]) -> TableFrame:
    return TableFrame("orderBookL2", action, SYMBOL, [{"symbol": SYMBOL, **row} for row in rows])


def partial(depth: int) -> TableFrame:
    return frame("partial", [{"id": 1000 + i, "side": "Buy", "size": 10 + i, "price": 100.0 - i} for i in range(depth)]
                 + [{"id": 2000 + i, "side": "Sell", "size": 20 + i, "price": 101.0 + i} for i in range(depth)])


def document(book: L2Book) -> dict[str, Any]:
    bids, asks = book.depth
    return {"layout": LAYOUT, LEVELS: level_map(book), "bid_depth": bids, "ask_depth": asks}


def apply_update(stored: dict[str, Any], sets: dict[str, Any]) -> None:
    """`$set` of dotted paths into the level map, as MongoDB applies it to a document."""
    for path, value in sets.items():
        stored[LEVELS][path.split(".", 1)[1]] = value


def random_frame(book: L2Book, rng: random.Random, next_id: list[int]) -> TableFrame:
    bids, asks = book.top(None)
    action = rng.choice(["insert", "update", "delete"])
    side, levels = rng.choice([("Buy", bids), ("Sell", asks)])
    if action != "insert" and levels:
        price, _, ident = rng.choice(levels)
        if action == "update":
            return frame("update", [{"id": ident, "side": side, "size": rng.randrange(1, 1000), "price": price}])
        return frame("delete", [{"id": ident, "side": side, "price": price}])
    held = {level[0] for level in bids + asks}
    best_ask = asks[0][0] if asks else 200.0
    best_bid = bids[0][0] if bids else 1.0
    price = float(rng.randrange(1, int(best_ask))) if side == "Buy" else float(rng.randrange(int(best_bid) + 1, 400))
    if price in held:
        return frame("update", [])
    next_id[0] += 1
    return frame("insert", [{"id": next_id[0], "side": side, "size": rng.randrange(1, 1000), "price": price}])


def test_the_book_tracks_changed_ids_until_taken_and_a_partial_starts_afresh() -> None:
    book = L2Book(SYMBOL)
    book.apply(partial(3))
    assert (book.changed, book.loads) == (set(), 1)
    book.apply(frame("update", [{"id": 1000, "side": "Buy", "size": 5, "price": 100.0}]))
    book.apply(frame("delete", [{"id": 2001, "side": "Sell", "price": 102.0}]))
    book.apply(frame("insert", [{"id": 7, "side": "Sell", "size": 1, "price": 101.5}]))
    assert book.take_changes() == {1000, 2001, 7} and book.changed == set()
    assert book.level(7) == ("Sell", (101.5, 1, 7)) and book.level(2001) is None
    book.apply(frame("update", [{"id": 1001, "side": "Buy", "size": 6, "price": 99.0}]))
    book.apply(partial(2))
    assert (book.changed, book.loads) == (set(), 2)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32), flushes=st.integers(1, 30))
def test_deltas_of_the_changed_ids_keep_the_level_map_equal_to_the_book(seed: int, flushes: int) -> None:
    rng = random.Random(seed)
    book = L2Book(SYMBOL)
    book.apply(partial(20))
    stored = document(book)
    next_id = [10_000]
    for _ in range(flushes):
        for _ in range(rng.randrange(0, 15)):
            book.apply(random_frame(book, rng, next_id))
        changed = book.take_changes()
        sets, removed = level_changes(book, changed)
        assert set(sets) == {f"{LEVELS}.{ident}" for ident in changed}
        assert removed == sum(value is None for value in sets.values())
        apply_update(stored, sets)
        assert {ident: value for ident, value in stored[LEVELS].items() if value is not None} == level_map(book)
        stored["bid_depth"], stored["ask_depth"] = book.depth
        assert book_levels(stored) == {"bids": [list(level) for level in book.top(None)[0]],
                                       "asks": [list(level) for level in book.top(None)[1]]}


def test_the_reader_gives_the_whole_book_best_first_of_either_layout() -> None:
    book = L2Book(SYMBOL)
    book.apply(partial(5))
    whole = {"bids": [list(level) for level in book.top(None)[0]], "asks": [list(level) for level in book.top(None)[1]]}
    assert book_levels(document(book)) == whole
    removed = document(book)
    removed[LEVELS]["77"] = None  # a tombstone: a level removed since the last whole write
    assert book_levels(removed) == whole and tombstones(removed) == 1 and tombstones(document(book)) == 0
    assert book_levels({**whole, "status": "live"}) == whole  # layout 1: the arrays are the book
    assert L2Book.from_document(SYMBOL, book_levels(document(book))).top(None) == book.top(None)


class Int64(int):
    """Stands for BSON's Int64, an int subclass."""


def test_the_reader_gives_plain_integers() -> None:
    stored = {"layout": 2, LEVELS: {"5": ["Buy", 1.0, Int64(3)]}, "bid_depth": 1, "ask_depth": 0}
    [[_, size, _]] = book_levels(stored)["bids"]
    assert type(size) is int
    [[_, size, ident]] = book_levels({"bids": [[1.0, Int64(3), Int64(5)]], "asks": []})["bids"]
    assert (type(size), type(ident)) == (int, int)


@pytest.mark.parametrize(("stored", "problem"), [
    ({"layout": 3, LEVELS: {}}, "unknown document layout 3"),
    ({"layout": "2", LEVELS: {}}, "unknown document layout"),
    ({"layout": 2, "bid_depth": 0, "ask_depth": 0}, "missing or not a map"),
    ({"layout": 2, LEVELS: [], "bid_depth": 0, "ask_depth": 0}, "missing or not a map"),
    ({"layout": 2, LEVELS: {"x1": ["Buy", 1.0, 1]}, "bid_depth": 1, "ask_depth": 0}, "not a decimal integer"),
    ({"layout": 2, LEVELS: {"01": ["Buy", 1.0, 1]}, "bid_depth": 1, "ask_depth": 0}, "not a decimal integer"),
    ({"layout": 2, LEVELS: {"1": ["Bid", 1.0, 1]}, "bid_depth": 1, "ask_depth": 0}, "not \\[side, price, size\\]"),
    ({"layout": 2, LEVELS: {"1": ["Buy", 1.0]}, "bid_depth": 1, "ask_depth": 0}, "not \\[side, price, size\\]"),
    ({"layout": 2, LEVELS: {"1": ["Buy", "1", 1], "2": ["Buy", 2.0, 1]}, "bid_depth": 2, "ask_depth": 0},
     "price is not a number"),
    ({"layout": 2, LEVELS: {"1": ["Buy", 1.0, 1]}, "bid_depth": 2, "ask_depth": 0}, "holds 1 bids and 0 asks"),
])
def test_the_reader_refuses_what_it_cannot_read_exactly(stored: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        book_levels(stored)
