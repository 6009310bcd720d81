"""The orderBook10 a replay serves for a recording that has none: computed from the replayed L2 rows."""

from __future__ import annotations

from typing import Any

from sortedcontainers import SortedDict

from services.exchange import messages
from services.exchange.messages import OB10_DEPTH

Level = list[float | int]


class DerivedTop10:
    """The orderBook10 of one symbol computed from its replayed L2 rows, for a recording that has none.

    Sizes are summed per price, so two ids at one price (never seen on BitMEX, harmless here) still give
    one level. Rows of another shape than the venue's are skipped and counted: a replay tool must not
    stop on a damaged recording, but it must not invent a level either.
    """

    def __init__(self, symbol: str, rows: list[Any]) -> None:
        self.symbol = symbol
        self.levels: dict[tuple[str, int], tuple[float, int]] = {}
        self.sides: dict[str, SortedDict] = {"Buy": SortedDict(), "Sell": SortedDict()}
        self.sent: tuple[list[Level], list[Level]] | None = None
        self.skipped = 0
        self.apply("partial", rows)

    def apply(self, action: str, rows: list[Any]) -> None:
        for row in rows:
            if (type(row) is not dict or row.get("side") not in self.sides or type(row.get("id")) is not int
                    or not self._apply_row(action, row)):
                self.skipped += 1

    def _apply_row(self, action: str, row: dict[str, Any]) -> bool:
        key = (row["side"], row["id"])
        old = self.levels.get(key)
        if action == "delete":
            if old is not None:
                self._move(key, old, None)
            return True
        size = row.get("size")
        price = row.get("price", old[0] if old is not None else None)
        if type(size) is not int or size < 0 or not isinstance(price, int | float) or isinstance(price, bool):
            return False
        if action == "update" and old is None:
            return False
        self._move(key, old, (float(price), size))
        return True

    def _move(self, key: tuple[str, int], old: tuple[float, int] | None, new: tuple[float, int] | None) -> None:
        side = self.sides[key[0]]
        if old is not None:
            left = side[old[0]] - old[1]
            if left > 0:
                side[old[0]] = left
            else:
                del side[old[0]]
            del self.levels[key]
        if new is not None and new[1] > 0:
            side[new[0]] = side.get(new[0], 0) + new[1]
            self.levels[key] = new

    def top(self) -> tuple[list[Level], list[Level]]:
        bids, asks = self.sides["Buy"], self.sides["Sell"]
        return ([[_number(price), bids[price]] for price in bids.islice(-OB10_DEPTH, reverse=True)],
                [[_number(price), asks[price]] for price in asks.islice(0, OB10_DEPTH)])

    def frame(self, timestamp: str) -> bytes | None:
        """The next orderBook10 frame: a partial first, then an update when the top 10 changed."""
        top = self.top()
        if top == self.sent:
            return None
        action = "partial" if self.sent is None else "update"
        self.sent = top
        return messages.orderbook10_frame(action, self.symbol, top[0], top[1], timestamp)


def _number(price: float) -> float | int:
    """BitMEX writes whole prices without a fraction (`35000`, not `35000.0`), as the L2 rows did."""
    return int(price) if price.is_integer() else price
