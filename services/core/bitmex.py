"""BitMEX realtime protocol: parse and classify every frame the venue sends, without I/O.

`parse_frame` turns one received websocket message into a typed frame or raises `ProtocolError`; it
never returns a half-parsed frame. Rows of the order-book tables are validated here, once, so the book
engine and every service downstream can trust their types without checking again.

Both wire formats of `orderBookL2` are accepted. Historical (before mid-2023): partial and insert rows
carry `price`, update rows carry no price and delete rows carry neither price nor size. Current: every row
carries `price` and `timestamp`. Which one a row follows is decided per row, by the presence of `price`.

Speed matters because ingest parses every frame: orjson does the decoding, the row checks are a handful
of `type() is` tests per row, and a precise diagnosis is only worked out once a check has failed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, NamedTuple

import orjson

from services.core.text import excerpt

L2_TABLES: Final = frozenset({"orderBookL2", "orderBookL2_25"})
ORDERBOOK10_TABLE: Final = "orderBook10"
ACTIONS: Final = frozenset({"partial", "insert", "update", "delete"})
SIDES: Final = frozenset({"Buy", "Sell"})
PONG_TEXT: Final = "pong"


class ProtocolError(ValueError):
    """A frame is malformed: bad JSON, an unknown shape, a missing field, a wrong type or value.

    The message says what is wrong and ends with a short excerpt of the offending input, which is enough
    to find the frame in a log or a capture without flooding the log with a 700 KB partial.
    """

    def __init__(self, reason: str, text: str | bytes | None = None) -> None:
        self.reason = reason
        super().__init__(reason if text is None else f"{reason}: {excerpt(text)}")


@dataclass(frozen=True, slots=True)
class Welcome:
    """The first frame of every connection."""

    info: str
    version: str | None
    timestamp: str | None
    docs: str | None
    limit: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SubscriptionAck:
    """The reply to one topic of a subscribe or unsubscribe request (BitMEX sends one per topic)."""

    op: Literal["subscribe", "unsubscribe"]
    topic: str
    success: bool
    request: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """An error sent by the venue, e.g. 400 for a bad request, 401 unauthenticated, 429 rate-limited.

    `status` is 0 when the venue left it out, which keeps the error text rather than rejecting the frame.
    """

    status: int
    error: str
    meta: dict[str, Any]
    request: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class Pong:
    """The text `pong`, the venue's answer to our `ping` heartbeat."""


class _NoFilter(Mapping[str, Any]):
    """The filter of a frame that has none: empty, read-only, one shared instance that pickles as itself."""

    __slots__ = ()

    def __getitem__(self, key: str) -> Any:
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "{}"

    def __reduce__(self) -> str:
        return "NO_FILTER"


NO_FILTER: Final[Mapping[str, Any]] = _NoFilter()


class TableFrame(NamedTuple):
    """A data frame of one table.

    `symbol` is the one symbol the frame is about: taken from the rows, or from `filter["symbol"]` for
    a frame with no rows (such as the partial of a settled contract). It is None when the rows mix
    symbols (use `split_by_symbol`) or when nothing names a symbol. For `orderBookL2` and
    `orderBookL2_25` the rows have been validated: `symbol` a string, `id` an int, `side` "Buy" or
    "Sell", `size` a positive int on partial, insert and update rows (an int >= 0 when a delete row
    carries one), `price` a number on partial and insert rows and wherever else present, `timestamp`
    a string when present.

    A NamedTuple, unlike the other frames, because it is built for every message: `parse_frame` makes it
    with `tuple.__new__`, skipping a frozen dataclass's `__init__`, which sets each field through
    `object.__setattr__` (`python -m bench.book` times `parse_frame` on every frame).
    """

    table: str
    action: str
    symbol: str | None
    data: list[dict[str, Any]]
    filter: Mapping[str, Any] = NO_FILTER


Frame = Welcome | SubscriptionAck | ErrorReply | Pong | TableFrame

PONG: Final = Pong()


_loads = orjson.loads  # bound once: looked up on every frame


_new_frame = tuple.__new__
"""Builds a TableFrame from a complete tuple, skipping the Python-level `__new__` NamedTuple generates."""


def parse_frame(text: str | bytes) -> Frame:
    """Classify and validate one websocket message; raise `ProtocolError` if it is malformed.

    Table frames, nearly all of the traffic, are handled inline: this is the hottest function of ingest.
    """
    try:
        message = _loads(text)
    except orjson.JSONDecodeError as exc:
        if text == PONG_TEXT or text == b"pong":  # not JSON: checked here, off the hot path
            return PONG
        raise ProtocolError(f"invalid JSON ({exc})", text) from None
    if type(message) is not dict:
        raise ProtocolError(f"expected a JSON object, got {type(message).__name__}", text)
    table = message.get("table")
    if table is None:
        return _reply(message, text)
    try:  # any envelope problem lands in the except clause, which works out what it is
        action = message["action"]
        data = message["data"]
        book_table = table in L2_TABLES
        if action not in ACTIONS or type(data) is not list or not (book_table or type(table) is str):
            raise TypeError
    except (KeyError, TypeError):
        raise ProtocolError(_table_problem(message), text) from None
    frame_filter = message.get("filter")
    if frame_filter is None:
        frame_filter = NO_FILTER
        filter_symbol = None
    elif type(frame_filter) is not dict:
        raise ProtocolError("field 'filter' is not an object", text)
    else:
        filter_symbol = frame_filter.get("symbol")
        if filter_symbol is not None and type(filter_symbol) is not str:
            raise ProtocolError("field 'filter.symbol' is not a string", text)
    if not data:
        symbol = filter_symbol
    elif book_table:
        symbol = _check_l2_rows(action, data, text)
        if filter_symbol is not None and symbol != filter_symbol:
            raise ProtocolError(f"rows do not match filter symbol {filter_symbol!r}", text)
    else:
        symbol = _common_symbol(data, text)
    return _new_frame(TableFrame, (table, action, symbol, data, frame_filter))


def split_by_symbol(frame: TableFrame) -> list[TableFrame]:
    """Split a frame whose rows mix symbols into one frame per symbol, keeping row order within each.

    A frame that already has a single symbol, or no rows, comes back alone. For tables whose rows carry
    no symbol, those rows are grouped under a frame with `symbol` None.
    """
    if frame.symbol is not None or not frame.data:
        return [frame]
    groups: dict[str | None, list[dict[str, Any]]] = {}
    for row in frame.data:
        groups.setdefault(row.get("symbol"), []).append(row)
    return [TableFrame(frame.table, frame.action, symbol, rows, frame.filter) for symbol, rows in groups.items()]


def _table_problem(message: dict[str, Any]) -> str:
    """What is wrong with the envelope of a table frame (the slow path of `parse_frame`)."""
    table = message["table"]
    if type(table) is not str:
        return "field 'table' is not a string"
    missing = [name for name in ("action", "data") if name not in message]
    if missing:
        return f"field {missing[0]!r} is missing in a {table} frame"
    action = message["action"]
    if type(action) is not str or action not in ACTIONS:
        return f"unknown action {action!r} for table {table!r}"
    return f"field 'data' is not a list in a {table} {action}"


def _common_symbol(rows: list[Any], text: str | bytes) -> str | None:
    """The symbol every row names, or None when they differ or some row names none."""
    symbol = None
    for index, row in enumerate(rows):
        if type(row) is not dict:
            raise ProtocolError(f"row {index} is not an object", text)
        row_symbol = row.get("symbol")
        if type(row_symbol) is not str:
            return None
        if index == 0:
            symbol = row_symbol
        elif row_symbol != symbol:
            return None
    return symbol


def _check_l2_rows(action: str, rows: list[Any], text: str | bytes) -> str | None:
    """Validate non-empty order-book rows for `action`; return their common symbol (None when mixed).

    The loop is the fast path: a missing key or a non-dict row raises inside it and `_row_problem`
    then explains precisely what is wrong. orjson refuses NaN and infinities, so a number is finite.
    """
    mixed = False
    # A delete may leave out the size (then 0 is allowed: the level goes), an update the price; a
    # partial or insert carries both. A missing key raises KeyError here, like any malformed row.
    sized, min_size, priced = action != "delete", (0 if action == "delete" else 1), action in ("partial", "insert")
    try:
        symbol = rows[0]["symbol"]
        for row in rows:
            size = row["size"] if sized else row.get("size", 1)
            price = row["price"] if priced else row.get("price", 0)
            stamp = row.get("timestamp", "")
            if (type(row["id"]) is not int or row["side"] not in SIDES
                    or type(size) is not int or size < min_size
                    or (type(price) is not float and type(price) is not int)
                    or type(stamp) is not str):
                raise TypeError
            if row["symbol"] != symbol:
                mixed = True
    except (KeyError, TypeError, AttributeError):
        for index, row in enumerate(rows):
            problem = _row_problem(action, row)
            if problem:
                raise ProtocolError(f"{action} row {index}: {problem}", text) from None
        raise ProtocolError(f"invalid {action} row", text) from None
    if type(symbol) is not str:
        raise ProtocolError(f"{action} row 0: 'symbol' is not a string", text)
    if mixed:
        if not all(type(row["symbol"]) is str for row in rows):
            raise ProtocolError(f"{action} row: 'symbol' is not a string", text)
        return None
    return symbol


def _row_problem(action: str, row: Any) -> str | None:
    """Describe what is wrong with one order-book row, or None if it is valid (the slow path)."""
    if type(row) is not dict:
        return f"expected an object, got {type(row).__name__}"
    required = ["symbol", "id", "side"]
    if action != "delete":
        required.append("size")
    if action in ("partial", "insert"):
        required.append("price")
    missing = [name for name in required if name not in row]
    if missing:
        return f"missing field {', '.join(repr(name) for name in missing)}"
    if type(row["symbol"]) is not str:
        return "'symbol' is not a string"
    if type(row["id"]) is not int:
        return f"'id' is not an integer: {row['id']!r}"
    if type(row["side"]) is not str or row["side"] not in SIDES:
        return f"'side' is not Buy or Sell: {row['side']!r}"
    if "size" in row:
        size = row["size"]
        minimum = 0 if action == "delete" else 1
        if type(size) is not int or size < minimum:
            return f"'size' is not an integer >= {minimum}: {size!r}"
    if "price" in row and type(row["price"]) not in (int, float):
        return f"'price' is not a number: {row['price']!r}"
    if "timestamp" in row and type(row["timestamp"]) is not str:
        return f"'timestamp' is not a string: {row['timestamp']!r}"
    return None


def _reply(message: dict[str, Any], text: str | bytes) -> Frame:
    """Classify a frame that is not table data: an error, an acknowledgement or the welcome."""
    if "error" in message:
        return _error_reply(message, text)
    if "subscribe" in message:
        return _subscription_ack(message, "subscribe", text)
    if "unsubscribe" in message:
        return _subscription_ack(message, "unsubscribe", text)
    if "info" in message:
        return _welcome(message, text)
    raise ProtocolError("unrecognised frame (no table, error, subscribe, unsubscribe or info)", text)


def _error_reply(message: dict[str, Any], text: str | bytes) -> ErrorReply:
    error = message["error"]
    status = message.get("status", 0)
    meta = message.get("meta", {})
    if type(error) is not str:
        raise ProtocolError("field 'error' is not a string", text)
    if type(status) is not int:
        raise ProtocolError("field 'status' is not an integer", text)
    if type(meta) is not dict:
        raise ProtocolError("field 'meta' is not an object", text)
    return ErrorReply(status, error, meta, _request(message, text))


def _subscription_ack(message: dict[str, Any], op: Literal["subscribe", "unsubscribe"],
                      text: str | bytes) -> SubscriptionAck:
    topic = message[op]
    success = message.get("success")
    if type(topic) is not str:
        raise ProtocolError(f"field {op!r} is not a string", text)
    if type(success) is not bool:
        raise ProtocolError("field 'success' is missing or not a boolean", text)
    return SubscriptionAck(op, topic, success, _request(message, text))


def _request(message: dict[str, Any], text: str | bytes) -> dict[str, Any] | None:
    request = message.get("request")
    if request is not None and type(request) is not dict:
        raise ProtocolError("field 'request' is not an object", text)
    return request


def _welcome(message: dict[str, Any], text: str | bytes) -> Welcome:
    info = message["info"]
    limit = message.get("limit", {})
    if type(info) is not str:
        raise ProtocolError("field 'info' is not a string", text)
    if type(limit) is not dict:
        raise ProtocolError("field 'limit' is not an object", text)
    optional = []
    for name in ("version", "timestamp", "docs"):
        value = message.get(name)
        if value is not None and type(value) is not str:
            raise ProtocolError(f"field {name!r} is not a string", text)
        optional.append(value)
    version, timestamp, docs = optional
    return Welcome(info, version, timestamp, docs, limit)
