"""The `orderBook10` model: validated top-10 snapshots and the exchange-time key that orders them.

Every `orderBook10` row carries the whole top 10 of a symbol, so a snapshot replaces the previous one
instead of being applied to it. The top10 service keeps the newest per symbol; `timestamp_key` turns
the exchange timestamp into an integer that its compare-and-set script can order exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from services.core.bitmex import ORDERBOOK10_TABLE, ProtocolError, TableFrame

DEPTH: Final = 10

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class Top10Snapshot:
    """The best levels of one symbol at one exchange time; each level is `[price, size]`, best first."""

    symbol: str
    bids: list[list[float | int]]
    asks: list[list[float | int]]
    timestamp: str


def timestamp_key(timestamp: str) -> int:
    """Epoch microseconds of an ISO-8601 exchange timestamp with a zone, e.g. "2021-04-05T18:41:13.652Z".

    Exact integer arithmetic (no float seconds), so two timestamps one microsecond apart never tie.
    Raise ProtocolError for anything that is not a timestamp with a zone.
    """
    try:
        moment = datetime.fromisoformat(timestamp)
    except (TypeError, ValueError):
        raise ProtocolError(f"not an ISO-8601 timestamp: {timestamp!r}") from None
    if moment.tzinfo is None:
        raise ProtocolError(f"timestamp has no time zone: {timestamp!r}")
    return (moment - _EPOCH) // _MICROSECOND


def parse_orderbook10(frame: TableFrame) -> list[Top10Snapshot]:
    """Validate the rows of an `orderBook10` frame and return one snapshot per row, in frame order.

    Each side has at most 10 levels of `[price, size]`: price a number, size a positive integer, bids
    strictly descending, asks strictly ascending, and the best bid below the best ask.
    """
    if frame.table != ORDERBOOK10_TABLE:
        raise ProtocolError(f"expected an {ORDERBOOK10_TABLE} frame, got table {frame.table!r}")
    return [_snapshot(index, row) for index, row in enumerate(frame.data)]


def _snapshot(index: int, row: Any) -> Top10Snapshot:
    if type(row) is not dict:
        raise ProtocolError(f"{ORDERBOOK10_TABLE} row {index} is not an object")
    symbol = row.get("symbol")
    timestamp = row.get("timestamp")
    if type(symbol) is not str:
        raise ProtocolError(f"{ORDERBOOK10_TABLE} row {index}: 'symbol' is missing or not a string")
    where = f"{ORDERBOOK10_TABLE} {symbol}"
    if type(timestamp) is not str:
        raise ProtocolError(f"{where}: 'timestamp' is missing or not a string")
    timestamp_key(timestamp)
    bids = _side(where, "bids", row.get("bids"), descending=True)
    asks = _side(where, "asks", row.get("asks"), descending=False)
    if bids and asks and bids[0][0] >= asks[0][0]:
        raise ProtocolError(f"{where}: book crossed, best bid {bids[0][0]} >= best ask {asks[0][0]}")
    return Top10Snapshot(symbol, bids, asks, timestamp)


def _side(where: str, name: str, levels: Any, descending: bool) -> list[list[float | int]]:
    if type(levels) is not list:
        raise ProtocolError(f"{where}: {name!r} is missing or not a list")
    if len(levels) > DEPTH:
        raise ProtocolError(f"{where}: {name!r} has {len(levels)} levels, more than {DEPTH}")
    previous: float | None = None
    for level in levels:
        if type(level) is not list or len(level) != 2:
            raise ProtocolError(f"{where}: {name!r} level is not [price, size]: {level!r}")
        price, size = level
        if type(price) is not float and type(price) is not int:
            raise ProtocolError(f"{where}: {name!r} price is not a number: {level!r}")
        if type(size) is not int or size <= 0:
            raise ProtocolError(f"{where}: {name!r} size is not a positive integer: {level!r}")
        if previous is not None and (price >= previous if descending else price <= previous):
            order = "descending" if descending else "ascending"
            raise ProtocolError(f"{where}: {name!r} prices are not strictly {order} at {level!r}")
        previous = price
    return levels
