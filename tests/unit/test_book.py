"""L2 book engine: partials, both delta formats, inconsistencies, top-N, documents and the book set."""

from __future__ import annotations

import pickle
from typing import Any

import orjson
import pytest

from services.core.bitmex import TableFrame, parse_frame
from services.core.book import BookInconsistency, BookSet, L2Book

SYMBOL = "XBTUSD"
T1, T2, T3 = "2024-03-01T12:00:00.001Z", "2024-03-01T12:00:00.002Z", "2024-03-01T12:00:00.003Z"


def frame(action: str, *rows: dict[str, Any], symbol: str = SYMBOL, table: str = "orderBookL2",
          **extra: Any) -> TableFrame:
    full_rows = [{"symbol": symbol, **fields} for fields in rows]
    parsed = parse_frame(orjson.dumps({"table": table, "action": action, "data": full_rows, **extra}))
    assert isinstance(parsed, TableFrame)
    return parsed


def level(ident: int, side: str, size: int, price: float, **extra: Any) -> dict[str, Any]:
    return {"id": ident, "side": side, "size": size, "price": price, **extra}


def partial(*rows: dict[str, Any], symbol: str = SYMBOL) -> TableFrame:
    return frame("partial", *rows, symbol=symbol, filter={"symbol": symbol})


def standard_book() -> L2Book:
    """Bids 100, 99.5, 99 and asks 101, 101.5, 102, given in a shuffled order."""
    book = L2Book(SYMBOL)
    assert book.apply(partial(level(3, "Buy", 30, 99), level(11, "Sell", 110, 101), level(1, "Buy", 10, 100),
                              level(13, "Sell", 130, 102), level(2, "Buy", 20, 99.5),
                              level(12, "Sell", 120, 101.5))) == 6
    return book


def test_partial_builds_a_price_ordered_book() -> None:
    book = standard_book()
    assert book.has_partial and book.stale_reason is None
    assert book.top(None) == ([(100.0, 10, 1), (99.5, 20, 2), (99.0, 30, 3)],
                              [(101.0, 110, 11), (101.5, 120, 12), (102.0, 130, 13)])
    assert book.best_bid() == (100.0, 10, 1) and book.best_ask() == (101.0, 110, 11)
    assert len(book) == 6 and book.depth == (3, 3)
    assert book.timestamp is None


def test_integer_prices_become_floats() -> None:
    book = standard_book()
    price = book.best_bid()[0]  # type: ignore[index]
    assert type(price) is float


def test_empty_partial_gives_an_empty_valid_book() -> None:
    book = standard_book()
    assert book.apply(partial()) == 0
    assert book.has_partial and len(book) == 0 and book.top(10) == ([], [])
    assert book.best_bid() is None and book.best_ask() is None
    book.apply(frame("insert", level(5, "Buy", 1, 50)))
    assert book.top(10) == ([(50.0, 1, 5)], [])


def test_second_partial_replaces_the_book() -> None:
    book = standard_book()
    book.apply(frame("update", {"id": 1, "side": "Buy", "size": 11, "price": 100, "timestamp": T1}))
    book.apply(partial(level(7, "Buy", 70, 90), level(8, "Sell", 80, 91)))
    assert book.top(None) == ([(90.0, 70, 7)], [(91.0, 80, 8)])
    assert book.timestamp is None


def test_deltas_before_the_partial_are_dropped_and_counted() -> None:
    book = L2Book(SYMBOL)
    assert book.apply(frame("insert", level(1, "Buy", 10, 100))) == 0
    assert book.apply(frame("delete", {"id": 9, "side": "Sell"})) == 0
    assert not book.has_partial and len(book) == 0 and book.dropped_before_partial == 2


def test_historical_update_and_delete_take_the_price_from_the_id() -> None:
    book = standard_book()
    assert book.apply(frame("update", {"id": 2, "side": "Buy", "size": 25}, {"id": 12, "side": "Sell", "size": 5})) == 2
    assert book.apply(frame("delete", {"id": 1, "side": "Buy"})) == 1
    assert book.apply(frame("insert", level(14, "Sell", 1, 100.5))) == 1
    assert book.top(2) == ([(99.5, 25, 2), (99.0, 30, 3)], [(100.5, 1, 14), (101.0, 110, 11)])
    assert book.timestamp is None


def test_current_format_rows_carry_price_and_timestamp() -> None:
    book = standard_book()
    book.apply(frame("insert", level(900001, "Buy", 5, 100.5, timestamp=T1)))
    assert book.timestamp == T1
    book.apply(frame("update", {"id": 900001, "side": "Buy", "size": 6, "price": 100.5, "timestamp": T2}))
    book.apply(frame("delete", {"id": 11, "side": "Sell", "price": 101, "timestamp": T3}))
    assert book.top(1) == ([(100.5, 6, 900001)], [(101.5, 120, 12)])
    assert book.timestamp == T3


def test_timestamp_is_the_last_row_that_has_one() -> None:
    book = standard_book()
    book.apply(frame("update", {"id": 1, "side": "Buy", "size": 1, "timestamp": T1},
                     {"id": 2, "side": "Buy", "size": 2}))
    assert book.timestamp == T1
    book.apply(frame("update", {"id": 1, "side": "Buy", "size": 3}))
    assert book.timestamp == T1
    book.apply(partial(level(1, "Buy", 1, 1.0, timestamp=T2), level(2, "Buy", 1, 2.0, timestamp=T3)))
    assert book.timestamp == T3


def test_top_n() -> None:
    book = standard_book()
    assert book.top(0) == ([], [])
    assert book.top(1) == ([(100.0, 10, 1)], [(101.0, 110, 11)])
    assert book.top(50) == book.top(None)
    assert book.top() == book.top(10)
    with pytest.raises(ValueError, match="n must be >= 0"):
        book.top(-1)


INCONSISTENCIES = [
    ("update of an unknown id", frame("update", {"id": 99, "side": "Buy", "size": 1}), 99, "update", "unknown id"),
    ("delete of an unknown id", frame("delete", {"id": 99, "side": "Sell"}), 99, "delete", "unknown id"),
    ("insert of an existing id", frame("insert", level(1, "Buy", 1, 98)), 1, "insert", "already in the book"),
    ("insert of an id held by the other side", frame("insert", level(11, "Buy", 1, 98)), 11, "insert",
     "already in the book"),
    ("insert at an occupied price", frame("insert", level(50, "Buy", 1, 99.5)), 50, "insert",
     "price 99.5 is already held by id 2"),
    ("update on the wrong side", frame("update", {"id": 1, "side": "Sell", "size": 1}), 1, "update",
     "row side is Sell but the id is on the other side"),
    ("delete on the wrong side", frame("delete", {"id": 11, "side": "Buy"}), 11, "delete", "on the other side"),
    ("update with another price", frame("update", {"id": 1, "side": "Buy", "size": 1, "price": 100.5}), 1, "update",
     "row price 100.5 differs from book price 100.0"),
    ("delete with another price", frame("delete", {"id": 12, "side": "Sell", "price": 1}), 12, "delete",
     "differs from book price 101.5"),
    ("insert crossing the book", frame("insert", level(50, "Buy", 1, 101.5)), None, "insert",
     "book crossed: best bid 101.5 >= best ask 101.0"),
    ("insert locking the book", frame("insert", level(50, "Sell", 1, 100)), None, "insert", "book crossed"),
    ("second row inconsistent",
     frame("update", {"id": 1, "side": "Buy", "size": 7}, {"id": 98, "side": "Buy", "size": 1}),
     98, "update", "unknown id"),
]


@pytest.mark.parametrize(("delta", "ident", "action", "reason"), [case[1:] for case in INCONSISTENCIES],
                         ids=[case[0] for case in INCONSISTENCIES])
def test_inconsistencies_are_reported_and_invalidate_the_book(delta: TableFrame, ident: int | None, action: str,
                                                              reason: str) -> None:
    book = standard_book()
    with pytest.raises(BookInconsistency) as raised:
        book.apply(delta)
    error = raised.value
    assert (error.symbol, error.id, error.action) == (SYMBOL, ident, action)
    assert reason in error.reason and reason in str(error) and str(error).startswith(f"{SYMBOL}: {action}")
    assert not book.has_partial and book.stale_reason == str(error)
    assert len(book) == 0 and book.top(10) == ([], [])
    assert book.apply(frame("update", {"id": 2, "side": "Buy", "size": 1})) == 0
    assert book.dropped_before_partial == 1
    book.apply(partial(level(1, "Buy", 1, 10)))
    assert book.has_partial and book.stale_reason is None and book.top(None) == ([(10.0, 1, 1)], [])


@pytest.mark.parametrize(("rows", "reason"), [
    ((level(1, "Buy", 1, 10), level(1, "Sell", 1, 11)), "id is already in the book"),
    ((level(1, "Buy", 1, 10), level(2, "Buy", 1, 10)), "price 10.0 is already held by id 1"),
    ((level(1, "Buy", 1, 11), level(2, "Sell", 1, 10)), "book crossed"),
])
def test_inconsistent_partial(rows: tuple[dict[str, Any], ...], reason: str) -> None:
    book = L2Book(SYMBOL)
    with pytest.raises(BookInconsistency, match=reason) as raised:
        book.apply(partial(*rows))
    assert raised.value.action == "partial"
    assert not book.has_partial and len(book) == 0


def test_inconsistency_survives_pickling() -> None:
    error = BookInconsistency(SYMBOL, 5, "delete", "unknown id")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.symbol, copy.id, copy.action, copy.reason, str(copy)) == (SYMBOL, 5, "delete", "unknown id",
                                                                           "XBTUSD: delete id 5: unknown id")


@pytest.mark.parametrize(("bad", "message"), [
    (frame("insert", {"bidPrice": 1.0}, table="quote"), "quote is not an L2 order-book table"),
    (frame("update", {"id": 1, "side": "Buy", "size": 1}, symbol="ETHUSD"), "frame for symbol 'ETHUSD'"),
    (partial(symbol="ETHUSD"), "frame for symbol 'ETHUSD'"),
    (frame("update", {"id": 1, "side": "Buy", "size": 1}, {"id": 11, "side": "Sell", "size": 1, "symbol": "ETHUSD"}),
     "split mixed frames"),
])
def test_frames_of_another_table_or_symbol_are_refused(bad: TableFrame, message: str) -> None:
    book = standard_book()
    with pytest.raises(ValueError, match=message):
        book.apply(bad)
    assert book.has_partial and len(book) == 6


def test_empty_delta_is_a_no_op() -> None:
    book = standard_book()
    assert book.apply(frame("delete")) == 0
    assert len(book) == 6 and book.has_partial


def test_to_document_is_best_first() -> None:
    book = standard_book()
    book.apply(frame("update", {"id": 3, "side": "Buy", "size": 31, "price": 99, "timestamp": T1}))
    assert book.to_document() == {
        "bids": [[100.0, 10, 1], [99.5, 20, 2], [99.0, 31, 3]],
        "asks": [[101.0, 110, 11], [101.5, 120, 12], [102.0, 130, 13]],
        "timestamp": T1,
        "truncated": False,
    }


def test_level_cap_applies_to_the_export_only() -> None:
    book = standard_book()
    capped = book.to_document(max_levels=2)
    assert capped["bids"] == [[100.0, 10, 1], [99.5, 20, 2]] and capped["asks"] == [[101.0, 110, 11], [101.5, 120, 12]]
    assert capped["truncated"] is True
    assert book.to_document(max_levels=3)["truncated"] is False
    # levels below the cap are kept and come back into view when better ones go
    book.apply(frame("delete", {"id": 1, "side": "Buy"}, {"id": 2, "side": "Buy"}))
    assert book.to_document(max_levels=2)["bids"] == [[99.0, 30, 3]]
    assert book.to_document(max_levels=0) == {"bids": [], "asks": [], "timestamp": None, "truncated": True}


def test_document_round_trip_is_exact() -> None:
    book = standard_book()
    book.apply(frame("insert", level(77, "Sell", 5, 100.25, timestamp=T2)))
    document = orjson.loads(orjson.dumps(book.to_document()))
    restored = L2Book.from_document(SYMBOL, document)
    assert restored.to_document() == book.to_document()
    assert restored.has_partial and restored.timestamp == T2 and restored.symbol == SYMBOL
    # the restored book keeps working, in both formats
    restored.apply(frame("update", {"id": 77, "side": "Sell", "size": 6}))
    restored.apply(frame("delete", {"id": 1, "side": "Buy", "price": 100, "timestamp": T3}))
    assert restored.top(1) == ([(99.5, 20, 2)], [(100.25, 6, 77)])


def test_document_with_tuples_and_integer_prices() -> None:
    restored = L2Book.from_document(SYMBOL, {"bids": [(100, 1, 1)], "asks": [(101, 2, 2)]})
    assert restored.top(None) == ([(100.0, 1, 1)], [(101.0, 2, 2)]) and restored.timestamp is None


@pytest.mark.parametrize(("document", "message"), [
    ({"bids": [[100.0, 1, 1]], "asks": [], "truncated": True}, "truncated document"),
    ({"asks": []}, "bids is missing or not a list"),
    ({"bids": [], "asks": {}}, "asks is missing or not a list"),
    ({"bids": [[100.0, 1]], "asks": []}, "not \\[price, size, id\\]"),
    ({"bids": [["100", 1, 1]], "asks": []}, "price is not a finite number"),
    ({"bids": [[float("nan"), 1, 1]], "asks": []}, "price is not a finite number"),
    ({"bids": [[100.0, 0, 1]], "asks": []}, "size or id"),
    ({"bids": [[100.0, 1, "1"]], "asks": []}, "size or id"),
    ({"bids": [[99.0, 1, 1], [100.0, 1, 2]], "asks": []}, "bids are not in best-first order"),
    ({"bids": [], "asks": [[101.0, 1, 1], [100.0, 1, 2]]}, "asks are not in best-first order"),
    ({"bids": [[100.0, 1, 1]], "asks": [[99.0, 1, 2]]}, "book crossed"),
    ({"bids": [[100.0, 1, 1]], "asks": [[101.0, 1, 1]]}, "already in the book"),
    ({"bids": [[100.0, 1, 1], [100.0, 1, 2]], "asks": []}, "already held"),
    ({"bids": [], "asks": [], "timestamp": 5}, "timestamp is not a string"),
])
def test_invalid_documents_are_refused(document: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        L2Book.from_document(SYMBOL, document)


def test_book_set_routes_frames_and_counts_drops() -> None:
    books = BookSet()
    assert books.apply(frame("update", {"id": 1, "side": "Buy", "size": 1})) == 0
    assert books.apply(frame("insert", level(5, "Sell", 1, 10), symbol="ETHUSD")) == 0
    assert books.apply(partial(level(1, "Buy", 10, 100), level(11, "Sell", 5, 101))) == 2
    assert books.apply(frame("update", {"id": 1, "side": "Buy", "size": 12})) == 1
    assert books.dropped_before_partial == {SYMBOL: 1, "ETHUSD": 1}
    xbt = books.book(SYMBOL)
    assert xbt is not None and xbt.top(1) == ([(100.0, 12, 1)], [(101.0, 5, 11)])
    eth = books.book("ETHUSD")
    assert eth is not None and not eth.has_partial
    assert books.book("SOLUSD") is None
    assert SYMBOL in books and len(books) == 2 and {book.symbol for book in books} == {SYMBOL, "ETHUSD"}


def test_book_set_second_partial_replaces() -> None:
    books = BookSet()
    books.apply(partial(level(1, "Buy", 10, 100)))
    books.apply(partial(level(2, "Sell", 10, 200)))
    assert books.book(SYMBOL).top(None) == ([], [(200.0, 10, 2)])  # type: ignore[union-attr]


def test_book_set_splits_mixed_frames() -> None:
    books = BookSet()
    books.apply(partial(level(1, "Buy", 10, 100)))
    books.apply(partial(level(2, "Buy", 20, 200), symbol="ETHUSD"))
    mixed = frame("update", {"id": 1, "side": "Buy", "size": 11},
                  {"id": 2, "side": "Buy", "size": 21, "symbol": "ETHUSD"}, {"id": 1, "side": "Buy", "size": 12})
    assert mixed.symbol is None
    assert books.apply(mixed) == 3
    assert books.book(SYMBOL).top(1)[0] == [(100.0, 12, 1)]  # type: ignore[union-attr]
    assert books.book("ETHUSD").top(1)[0] == [(200.0, 21, 2)]  # type: ignore[union-attr]


def test_book_set_mixed_frame_inconsistent_for_one_symbol_still_applies_the_others() -> None:
    books = BookSet()
    books.apply(partial(level(1, "Buy", 10, 100)))
    books.apply(partial(level(2, "Buy", 20, 200), symbol="ETHUSD"))
    mixed = frame("update", {"id": 99, "side": "Buy", "size": 11},
                  {"id": 2, "side": "Buy", "size": 21, "symbol": "ETHUSD"})
    with pytest.raises(BookInconsistency) as raised:
        books.apply(mixed)
    assert raised.value.symbol == SYMBOL and raised.value.id == 99
    assert not books.book(SYMBOL).has_partial  # type: ignore[union-attr]
    assert books.book("ETHUSD").top(1)[0] == [(200.0, 21, 2)]  # type: ignore[union-attr]


def test_book_set_refuses_other_tables() -> None:
    books = BookSet()
    with pytest.raises(ValueError, match="not an L2 order-book table"):
        books.apply(frame("insert", {"bidPrice": 1.0}, table="quote"))
    assert len(books) == 0


def test_book_set_ignores_empty_frames_without_symbol() -> None:
    books = BookSet()
    assert books.apply(frame("insert")) == 0
    assert len(books) == 0
