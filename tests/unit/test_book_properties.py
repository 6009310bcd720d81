"""Property tests: the engine equals a naive model on random valid streams, and corruption is always caught.

Streams are drawn step by step against the naive model (a dict id -> (side, price, size)), serialised to
JSON in the historical or the current wire format, parsed by `parse_frame` and applied to an `L2Book`.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.core.bitmex import ProtocolError, TableFrame, parse_frame
from services.core.book import BookInconsistency, L2Book

SYMBOL = "XBTUSD"
TICK = 0.25
Level = tuple[float, int, int]

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class NaiveBook:
    """The reference: every level in a dict, sorted only when looked at."""

    def __init__(self) -> None:
        self.levels: dict[int, tuple[str, float, int]] = {}

    def view(self) -> tuple[list[Level], list[Level]]:
        bids = sorted(((price, size, ident) for ident, (side, price, size) in self.levels.items() if side == "Buy"),
                      reverse=True)
        asks = sorted((price, size, ident) for ident, (side, price, size) in self.levels.items() if side == "Sell")
        return bids, asks

    def prices(self, side: str) -> set[float]:
        return {price for level_side, price, _ in self.levels.values() if level_side == side}

    def best(self, side: str) -> float | None:
        prices = self.prices(side)
        if not prices:
            return None
        return max(prices) if side == "Buy" else min(prices)


class Market:
    """Draws valid frames against the naive book and serialises them in one wire format."""

    def __init__(self, data: st.DataObject, current: bool) -> None:
        self.data = data
        self.current = current
        self.model = NaiveBook()
        self.clock = 0

    def draw(self, strategy: st.SearchStrategy[Any]) -> Any:
        return self.data.draw(strategy)

    def stamp(self) -> str:
        self.clock += 1
        return f"2024-03-01T12:{self.clock // 60000 % 60:02d}:{self.clock // 1000 % 60:02d}.{self.clock % 1000:03d}Z"

    def new_id(self) -> int:
        ident: int = self.draw(st.integers(0, 2**53).filter(lambda drawn: drawn not in self.model.levels))
        return ident

    def free_price(self, side: str) -> float | None:
        """A price free on `side` that does not cross the other side, or None if there is none."""
        other = self.model.best("Sell" if side == "Buy" else "Buy")
        taken = self.model.prices(side)
        if side == "Buy":
            ticks = range(1, int(other / TICK) if other is not None else 200)
        else:
            ticks = range(int(other / TICK) + 1 if other is not None else 1, 200)
        free = [tick * TICK for tick in ticks if tick * TICK not in taken]
        return self.draw(st.sampled_from(free)) if free else None

    def row(self, action: str, ident: int, side: str, price: float, size: int) -> dict[str, Any]:
        row: dict[str, Any] = {"symbol": SYMBOL, "id": ident, "side": side}
        if action != "delete":
            row["size"] = size
        if self.current or action in ("partial", "insert"):
            # whole prices go on the wire as integers, as BitMEX sends them
            row["price"] = int(price) if price.is_integer() and self.draw(st.booleans()) else price
        if self.current:
            row["timestamp"] = self.stamp()
        return row

    def partial(self) -> str:
        self.model = NaiveBook()
        rows = []
        for _ in range(self.draw(st.integers(0, 12))):
            side = self.draw(st.sampled_from(["Buy", "Sell"]))
            price = self.free_price(side)
            if price is not None:
                ident, size = self.new_id(), self.draw(st.integers(1, 10**6))
                self.model.levels[ident] = (side, price, size)
                rows.append(self.row("partial", ident, side, price, size))
        return text("partial", rows, filter={"symbol": SYMBOL})

    def delta(self, action: str | None = None) -> str:
        """A valid frame of 1 to 4 rows of one action, applied to the model as drawn."""
        if action is None:
            action = self.draw(st.sampled_from(["insert", "update", "delete"] if self.model.levels else ["insert"]))
        rows = []
        for _ in range(self.draw(st.integers(1, 4))):
            if action == "insert":
                side = self.draw(st.sampled_from(["Buy", "Sell"]))
                price = self.free_price(side)
                if price is None:
                    continue
                ident, size = self.new_id(), self.draw(st.integers(1, 10**6))
                self.model.levels[ident] = (side, price, size)
            elif self.model.levels:
                ident = self.draw(st.sampled_from(sorted(self.model.levels)))
                side, price, size = self.model.levels[ident]
                if action == "update":
                    size = self.draw(st.integers(1, 10**6))
                    self.model.levels[ident] = (side, price, size)
                else:
                    del self.model.levels[ident]
            else:
                continue
            rows.append(self.row(action, ident, side, price, size))
        return text(action, rows)


def text(action: str, rows: list[dict[str, Any]], **extra: Any) -> str:
    return orjson.dumps({"table": "orderBookL2", "action": action, "data": rows, **extra}).decode()


def parsed(frame_text: str) -> TableFrame:
    frame = parse_frame(frame_text)
    assert isinstance(frame, TableFrame)
    return frame


@FAST
@given(st.data(), st.booleans())
def test_random_valid_streams_match_the_naive_book(data: st.DataObject, current: bool) -> None:
    market = Market(data, current)
    book = L2Book(SYMBOL)
    early = data.draw(st.integers(0, 3))
    for _ in range(early):
        book.apply(parsed(market.delta()))
    assert book.dropped_before_partial == early and len(book) == 0
    first = parsed(market.partial())
    book.apply(first)
    # Current-format rows carry timestamps: the book's is its last applied row's (an empty delta keeps it).
    last_stamp = first.data[-1]["timestamp"] if first.data and current else None
    for _ in range(data.draw(st.integers(0, 40))):
        frame_text = market.partial() if data.draw(st.integers(0, 30)) == 0 else market.delta()
        frame = parsed(frame_text)
        assert book.apply(frame) == len(frame.data)
        assert book.top(None) == market.model.view()
        bids, asks = market.model.view()
        assert book.best_bid() == (bids[0] if bids else None) and book.best_ask() == (asks[0] if asks else None)
        assert book.depth == (len(bids), len(asks))
        size = data.draw(st.integers(0, 5))
        assert book.top(size) == (bids[:size], asks[:size])
        if frame.data and current:
            last_stamp = frame.data[-1]["timestamp"]
        elif frame.action == "partial":
            last_stamp = None
        assert book.timestamp == last_stamp
    restored = L2Book.from_document(SYMBOL, orjson.loads(orjson.dumps(book.to_document())))
    assert restored.top(None) == book.top(None) and restored.timestamp == book.timestamp


CORRUPTIONS = ["unknown update", "unknown delete", "duplicate id", "occupied price", "wrong side", "wrong price",
               "crossing insert", "replayed insert", "replayed delete"]


@FAST
@given(st.data(), st.booleans(), st.sampled_from(CORRUPTIONS))
def test_random_corruption_is_always_detected(data: st.DataObject, current: bool, corruption: str) -> None:
    market = Market(data, current)
    book = L2Book(SYMBOL)
    book.apply(parsed(market.partial()))
    for _ in range(data.draw(st.integers(0, 15))):
        book.apply(parsed(market.delta()))
    if corruption.startswith("replayed"):
        action = corruption.split()[1]
        frame_text = market.delta(action if market.model.levels else "insert")
        book.apply(parsed(frame_text))
        replayed = parsed(frame_text)
        if replayed.data:  # the same frame delivered twice: its first row already took effect
            with pytest.raises(BookInconsistency) as raised:
                book.apply(replayed)
            assert (raised.value.id, raised.value.action) == (replayed.data[0]["id"], replayed.action)
            assert not book.has_partial
            return
    model = market.model
    levels = sorted(model.levels)
    action, ident, side, price, size = "update", market.new_id(), "Buy", 1.0, 1
    expected_id: int | None = ident
    if corruption in ("unknown update", "unknown delete"):
        action = corruption.split()[1]
        side = data.draw(st.sampled_from(["Buy", "Sell"]))
    elif corruption == "duplicate id" and levels:
        action, expected_id = "insert", data.draw(st.sampled_from(levels))
        ident, side = expected_id, data.draw(st.sampled_from(["Buy", "Sell"]))
        price = market.free_price(side) or 1.0
    elif corruption == "occupied price" and levels:
        side, price, _ = model.levels[data.draw(st.sampled_from(levels))]
        action = "insert"
    elif corruption == "wrong side" and levels:
        action = data.draw(st.sampled_from(["update", "delete"]))
        ident = expected_id = data.draw(st.sampled_from(levels))
        true_side, price, size = model.levels[ident]
        side = "Sell" if true_side == "Buy" else "Buy"
    elif corruption == "wrong price" and levels:
        action = data.draw(st.sampled_from(["update", "delete"]))
        ident = expected_id = data.draw(st.sampled_from(levels))
        side, true_price, size = model.levels[ident]
        price = true_price + data.draw(st.sampled_from([-TICK, TICK, 1000.0]))
    elif corruption == "crossing insert" and model.best("Buy") is not None and model.best("Sell") is not None:
        action, expected_id = "insert", None
        side = data.draw(st.sampled_from(["Buy", "Sell"]))
        best_other = model.best("Sell" if side == "Buy" else "Buy")
        assert best_other is not None
        price = best_other + (1 if side == "Buy" else -1) * TICK * data.draw(st.integers(0, 3))
    else:
        action = "delete"  # the corruption needs levels the book does not have: an unknown delete instead
    row: dict[str, Any] = {"symbol": SYMBOL, "id": ident, "side": side}
    if action != "delete":
        row["size"] = size
    if action == "insert" or current or corruption == "wrong price":
        row["price"] = price
    valid_before = [market.row("update", i, *model.levels[i][:2], 7) for i in levels[:data.draw(st.integers(0, 2))]]
    frame = parsed(text(action, [*valid_before, row]) if action == "update" else text(action, [row]))

    with pytest.raises(BookInconsistency) as raised:
        book.apply(frame)
    assert (raised.value.symbol, raised.value.id, raised.value.action) == (SYMBOL, expected_id, action)
    assert not book.has_partial and len(book) == 0
    # never silently absorbed: every later delta is refused until a fresh partial
    assert book.apply(parsed(market.delta())) == 0
    book.apply(parsed(market.partial()))
    assert book.has_partial and book.top(None) == market.model.view()


def l2_row(action: str) -> st.SearchStrategy[dict[str, Any]]:
    row = {"symbol": st.just(SYMBOL), "id": st.integers(0, 2**62), "side": st.sampled_from(["Buy", "Sell"])}
    if action != "delete":
        row["size"] = st.integers(1, 10**9)
    if action in ("partial", "insert"):
        row["price"] = st.floats(0.5, 1e7) | st.integers(1, 10**7)
    return st.fixed_dictionaries(row, optional={"timestamp": st.just("2024-03-01T12:00:00.000Z")})


WRONG_VALUES: dict[str, list[Any]] = {
    "symbol": [None, 1, ["XBTUSD"]],
    "id": [None, "1", 1.5, True, [1]],
    "side": [None, "buy", "BUY", 1, ""],
    "size": [None, 0, -1, 1.5, "1", True],
    "price": [None, "1.5", True, [1.5], {}],
    "timestamp": [None, 1, ["t"]],
}


@FAST
@given(st.data(), st.sampled_from(["partial", "insert", "update", "delete"]))
def test_random_field_corruption_is_a_protocol_error(data: st.DataObject, action: str) -> None:
    rows = data.draw(st.lists(l2_row(action), min_size=1, max_size=4))
    target = data.draw(st.sampled_from(rows))
    field = data.draw(st.sampled_from(sorted(WRONG_VALUES)))
    required = {"symbol", "id", "side"} | ({"size"} if action != "delete" else set()) | (
        {"price"} if action in ("partial", "insert") else set())
    if field in required and data.draw(st.booleans()):
        del target[field]
    else:
        # a delete may carry size 0; every other value listed is wrong for every action
        wrong = [value for value in WRONG_VALUES[field] if not (action == "delete" and value == 0)]
        target[field] = data.draw(st.sampled_from(wrong))
    frame_text = text(action, rows)
    with pytest.raises(ProtocolError):
        parse_frame(frame_text)
