"""The texts the exchange sends, in BitMEX's exact shapes: welcome, acks, errors, table frames, REST rows.

Shapes follow what the venue sent (the 2021 captures in `shared/data/bitmex-2021/` for the historical
format; published frames of 2023-2024 for the current one). Every function returns UTF-8 bytes ready for
the wire: a frame is serialized once and the same bytes go to every subscribed client.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Final

import orjson

from services.exchange.market import BUY, DELETE, INSERT, Change, Instrument, SymbolBook

DOCS_URL: Final = "https://www.bitmex.com/app/wsAPI"
WELCOME_INFO: Final = "Welcome to the BitMEX Realtime API."
CURRENT_VERSION: Final = "2.0.0"
HISTORICAL_VERSION: Final = "2021-07-14T01:26:29.000Z"
PONG: Final = b"pong"

L2_TABLE: Final = "orderBookL2"
L2_25_TABLE: Final = "orderBookL2_25"
OB10_TABLE: Final = "orderBook10"
BOOK_TABLES: Final = (L2_TABLE, L2_25_TABLE, OB10_TABLE)
L2_25_DEPTH: Final = 25
OB10_DEPTH: Final = 10

_L2_TYPES_HISTORICAL: Final = {"symbol": "symbol", "id": "long", "side": "symbol", "size": "long",
                               "price": "float"}
_L2_TYPES_CURRENT: Final = {**_L2_TYPES_HISTORICAL, "timestamp": "timestamp", "transactTime": "timestamp"}
_L2_SCHEMA: Final = {"keys": ["symbol", "id", "side"], "foreignKeys": {"symbol": "instrument", "side": "side"},
                     "attributes": {"symbol": "parted", "id": "sorted"}}
_OB10_SCHEMA: Final = {"keys": ["symbol"],
                       "types": {"symbol": "symbol", "bids": "", "asks": "", "timestamp": "timestamp"},
                       "foreignKeys": {"symbol": "instrument"}, "attributes": {"symbol": "sorted"}}


def iso_timestamp(seconds: float) -> str:
    """BitMEX's time format, milliseconds and `Z`: `2026-05-09T07:35:25.123Z`."""
    millis = int(seconds * 1000)
    whole, fraction = divmod(millis, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{fraction:03d}Z"


def welcome(timestamp: str, remaining: int, historical: bool = False) -> bytes:
    """The first frame of a connection; `remaining` is the connection rate-limit budget left."""
    if historical:
        return orjson.dumps({"info": WELCOME_INFO, "version": HISTORICAL_VERSION, "timestamp": timestamp,
                             "docs": DOCS_URL, "limit": {"remaining": remaining}})
    return orjson.dumps({"info": WELCOME_INFO, "version": CURRENT_VERSION, "timestamp": timestamp,
                         "docs": DOCS_URL, "heartbeatEnabled": False, "limit": {"remaining": remaining}})


def subscription_ack(op: str, topic: str, request: Mapping[str, Any]) -> bytes:
    """`{"success":true,"subscribe":"orderBookL2:XBTUSD","request":{...}}`, one per topic (also unsubscribe)."""
    return orjson.dumps({"success": True, op: topic, "request": request})


def error(status: int, message: str, request: Mapping[str, Any] | None = None) -> bytes:
    """`{"status":400,"error":"...","meta":{},"request":{...}}`; the connection stays open after it."""
    body: dict[str, Any] = {"status": status, "error": message, "meta": {}}
    if request is not None:
        body["request"] = request
    return orjson.dumps(body)


def unrecognized_request(request: Mapping[str, Any]) -> bytes:
    return error(400, f"Unrecognized request. See the docs or send 'help' for more details. "
                      f"Please see the documentation at {DOCS_URL}.", request)


def unknown_table(table: str, request: Mapping[str, Any]) -> bytes:
    return error(400, f"Unknown table: {table}. Please see the documentation at {DOCS_URL}.", request)


def unknown_symbol(request: Mapping[str, Any]) -> bytes:
    return error(400, "Unknown or expired symbol.", request)


def already_subscribed(topic: str, request: Mapping[str, Any]) -> bytes:
    return error(400, f"You are already subscribed to this topic:{topic}. "
                      f"Please see the documentation at {DOCS_URL}.", request)


def too_many_args(limit: int, request: Mapping[str, Any]) -> bytes:
    return error(400, f"Too many arguments: at most {limit} topics may be sent in one request. "
                      f"Please see the documentation at {DOCS_URL}.", request)


def rate_limited_body(retry_after: float | None) -> str:
    """Body of the HTTP 429 that answers a connection attempt over the rate limit (REST error shape)."""
    seconds = max(1, round(retry_after)) if retry_after else 1
    return orjson.dumps({"error": {"message": f"Rate limit exceeded, retry in {seconds} seconds.",
                                   "name": "RateLimitError"}}).decode()


def l2_row(instrument: Instrument, side: str, ticks: int, ident: int, size: int, action: str,
           timestamp: str, historical: bool) -> dict[str, Any]:
    """One orderBookL2 row. Historical: no price on update and delete, no size on delete, no time."""
    if historical:
        if action == DELETE:
            return {"symbol": instrument.symbol, "id": ident, "side": side}
        if action == "update":
            return {"symbol": instrument.symbol, "id": ident, "side": side, "size": size}
        return {"symbol": instrument.symbol, "id": ident, "side": side, "size": size,
                "price": instrument.price(ticks)}
    if action == DELETE:
        return {"symbol": instrument.symbol, "id": ident, "side": side, "price": instrument.price(ticks),
                "timestamp": timestamp, "transactTime": timestamp}
    return {"symbol": instrument.symbol, "id": ident, "side": side, "size": size,
            "price": instrument.price(ticks), "timestamp": timestamp, "transactTime": timestamp}


def l2_delta(table: str, instrument: Instrument, change: Change, timestamp: str, historical: bool) -> bytes:
    action = change.action
    rows = [l2_row(instrument, side, ticks, ident, size, action, timestamp, historical)
            for side, ticks, ident, size in change.rows]
    return orjson.dumps({"table": table, "action": action, "data": rows})


def l2_partial(table: str, book: SymbolBook, depth: int | None, historical: bool) -> bytes:
    """A partial of `book`'s top `depth` levels per side (all when None), sells then buys, price descending."""
    item = book.instrument
    if historical:
        rows = [{"symbol": item.symbol, "id": level.id, "side": side, "size": level.size,
                 "price": item.price(ticks)} for side, ticks, level in book.levels_by_price(depth)]
    else:
        rows = [{"symbol": item.symbol, "id": level.id, "side": side, "size": level.size,
                 "price": item.price(ticks), "timestamp": level.timestamp, "transactTime": level.timestamp}
                for side, ticks, level in book.levels_by_price(depth)]
    types = _L2_TYPES_HISTORICAL if historical else _L2_TYPES_CURRENT
    return orjson.dumps({"table": table, "action": "partial", "keys": _L2_SCHEMA["keys"], "types": types,
                         "foreignKeys": _L2_SCHEMA["foreignKeys"], "attributes": _L2_SCHEMA["attributes"],
                         "filter": {"symbol": item.symbol}, "data": rows})


Top = tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]]
"""Top of a book as `((bid ticks, size), ...), ((ask ticks, size), ...)`, best first: cheap to compare."""


def top_of_book(book: SymbolBook, depth: int) -> Top:
    return (tuple((ticks, level.size) for ticks, level in book.top(BUY, depth)),
            tuple((ticks, level.size) for ticks, level in book.top("Sell", depth)))


def orderbook10(action: str, instrument: Instrument, top: Top, timestamp: str) -> bytes:
    """An orderBook10 frame: the full top 10 as `[price, size]` pairs, best first, every time."""
    return orderbook10_frame(action, instrument.symbol,
                             [[instrument.price(ticks), size] for ticks, size in top[0]],
                             [[instrument.price(ticks), size] for ticks, size in top[1]], timestamp)


def orderbook10_frame(action: str, symbol: str, bids: list[list[float | int]], asks: list[list[float | int]],
                      timestamp: str) -> bytes:
    """An orderBook10 frame of `[price, size]` levels already in price units, best first."""
    row = {"symbol": symbol, "bids": bids, "asks": asks, "timestamp": timestamp}
    if action == "partial":
        return orjson.dumps({"table": OB10_TABLE, "action": "partial", **_OB10_SCHEMA,
                             "filter": {"symbol": symbol}, "data": [row]})
    return orjson.dumps({"table": OB10_TABLE, "action": action, "data": [row]})


TopRows = dict[tuple[str, int], tuple[int, int]]
"""Top-N levels of a book keyed by `(side, id)`, valued `(ticks, size)`: what orderBookL2_25 publishes."""


def top_rows(book: SymbolBook, depth: int) -> TopRows:
    return {**{(BUY, level.id): (ticks, level.size) for ticks, level in book.top(BUY, depth)},
            **{("Sell", level.id): (ticks, level.size) for ticks, level in book.top("Sell", depth)}}


def top_rows_deltas(instrument: Instrument, before: TopRows, after: TopRows, timestamp: str,
                    historical: bool) -> list[bytes]:
    """orderBookL2_25 frames that turn the top-25 `before` into `after`: delete, insert, then update.

    Deletes go first so a client never holds more than 25 levels a side or a crossed top; levels that
    fell out of the top 25 are deletes there even though they still exist in the full book.
    """
    deleted = [(side, ident, ticks, 0) for (side, ident), (ticks, _) in before.items()
               if (side, ident) not in after]
    inserted: list[tuple[str, int, int, int]] = []
    updated: list[tuple[str, int, int, int]] = []
    for key, (ticks, size) in after.items():
        old = before.get(key)
        if old is None:
            inserted.append((key[0], key[1], ticks, size))
        elif old[1] != size:
            updated.append((key[0], key[1], ticks, size))
    frames = []
    for action, rows in ((DELETE, deleted), (INSERT, inserted), ("update", updated)):
        if rows:
            data = [l2_row(instrument, side, ticks, ident, size, action, timestamp, historical)
                    for side, ident, ticks, size in rows]
            frames.append(orjson.dumps({"table": L2_25_TABLE, "action": action, "data": data}))
    return frames


def rest_rows(book: SymbolBook, depth: int | None) -> bytes:
    """`GET /api/v1/orderBook/L2` body: `{"symbol","id","side","size","price","timestamp"}` rows, price
    descending (sells then buys), `depth` levels per side (all when None)."""
    item = book.instrument
    return orjson.dumps([{"symbol": item.symbol, "id": level.id, "side": side, "size": level.size,
                          "price": item.price(ticks), "timestamp": level.timestamp}
                         for side, ticks, level in book.levels_by_price(depth)])
