"""BitMEX protocol: every frame kind is classified, both wire formats validated, malformed input refused."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import orjson
import pytest

from services.core.bitmex import (
    ACTIONS,
    L2_TABLES,
    ORDERBOOK10_TABLE,
    ErrorReply,
    Pong,
    ProtocolError,
    SubscriptionAck,
    TableFrame,
    Welcome,
    parse_frame,
    split_by_symbol,
)

WELCOME = ('{"info":"Welcome to the BitMEX Realtime API.","version":"2021-04-03T01:28:04.000Z",'
           '"timestamp":"2021-04-05T18:41:13.652Z","docs":"https://www.bitmex.com/app/wsAPI",'
           '"limit":{"remaining":39}}')
PARTIAL = ('{"table":"orderBookL2","action":"partial","keys":["symbol","id","side"],'
           '"types":{"symbol":"symbol","id":"long","side":"symbol","size":"long","price":"float"},'
           '"filter":{"symbol":"XBTM21"},"data":['
           '{"symbol":"XBTM21","id":45399872853,"side":"Sell","size":6000,"price":63574},'
           '{"symbol":"XBTM21","id":45399872854,"side":"Buy","size":100,"price":63573.5}]}')


def frame(table: str, action: str, rows: list[dict[str, Any]], **extra: Any) -> str:
    return orjson.dumps({"table": table, "action": action, "data": rows, **extra}).decode()


def l2(action: str, *rows: dict[str, Any], table: str = "orderBookL2") -> str:
    return frame(table, action, list(rows))


def row(**fields: Any) -> dict[str, Any]:
    return {"symbol": "XBTUSD", "id": 8799938400, "side": "Sell", **fields}


def test_welcome() -> None:
    parsed = parse_frame(WELCOME)
    assert parsed == Welcome(info="Welcome to the BitMEX Realtime API.", version="2021-04-03T01:28:04.000Z",
                             timestamp="2021-04-05T18:41:13.652Z", docs="https://www.bitmex.com/app/wsAPI",
                             limit={"remaining": 39})


def test_welcome_with_only_info() -> None:
    assert parse_frame('{"info":"hello"}') == Welcome("hello", None, None, None, {})


@pytest.mark.parametrize(("text", "expected"), [
    ('{"success":true,"subscribe":"orderBookL2:XBTUSD","request":{"op":"subscribe","args":["orderBookL2:XBTUSD"]}}',
     SubscriptionAck("subscribe", "orderBookL2:XBTUSD", True,
                     {"op": "subscribe", "args": ["orderBookL2:XBTUSD"]})),
    ('{"success":true,"unsubscribe":"orderBook10:XBTUSD","request":{"op":"unsubscribe","args":["orderBook10:XBTUSD"]}}',
     SubscriptionAck("unsubscribe", "orderBook10:XBTUSD", True,
                     {"op": "unsubscribe", "args": ["orderBook10:XBTUSD"]})),
    ('{"success":false,"subscribe":"orderBookL2:NOPE"}',
     SubscriptionAck("subscribe", "orderBookL2:NOPE", False, None)),
])
def test_subscription_acks(text: str, expected: SubscriptionAck) -> None:
    assert parse_frame(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ('{"status":400,"error":"Unknown table: orderBookL3","meta":{},'
     '"request":{"op":"subscribe","args":["orderBookL3"]}}',
     ErrorReply(400, "Unknown table: orderBookL3", {}, {"op": "subscribe", "args": ["orderBookL3"]})),
    ('{"status":401,"error":"Not authenticated.","meta":{},"request":{"op":"subscribe","args":["order"]}}',
     ErrorReply(401, "Not authenticated.", {}, {"op": "subscribe", "args": ["order"]})),
    ('{"status":429,"error":"Rate limit exceeded, retry in 1 seconds.","meta":{"retryAfter":1},"request":null}',
     ErrorReply(429, "Rate limit exceeded, retry in 1 seconds.", {"retryAfter": 1}, None)),
    ('{"error":"Something went wrong"}', ErrorReply(0, "Something went wrong", {}, None)),
])
def test_error_replies(text: str, expected: ErrorReply) -> None:
    assert parse_frame(text) == expected


@pytest.mark.parametrize("text", ["pong", b"pong"])
def test_pong(text: str | bytes) -> None:
    assert isinstance(parse_frame(text), Pong)


def test_historical_partial() -> None:
    parsed = parse_frame(PARTIAL)
    assert isinstance(parsed, TableFrame)
    assert (parsed.table, parsed.action, parsed.symbol) == ("orderBookL2", "partial", "XBTM21")
    assert parsed.filter == {"symbol": "XBTM21"}
    assert parsed.data[0] == {"symbol": "XBTM21", "id": 45399872853, "side": "Sell", "size": 6000, "price": 63574}


def test_bytes_and_str_parse_alike() -> None:
    assert parse_frame(PARTIAL.encode()) == parse_frame(PARTIAL)


def test_empty_partial_names_its_symbol_in_the_filter() -> None:
    parsed = parse_frame('{"table":"orderBookL2","action":"partial","filter":{"symbol":"XBTH21"},"data":[]}')
    assert isinstance(parsed, TableFrame)
    assert parsed.symbol == "XBTH21" and parsed.data == []


def test_empty_delta_without_filter_has_no_symbol() -> None:
    parsed = parse_frame(l2("update"))
    assert isinstance(parsed, TableFrame) and parsed.symbol is None and parsed.filter == {}


@pytest.mark.parametrize(("action", "fields"), [
    # historical wire format (the 2021 captures)
    ("insert", {"size": 6000, "price": 63573.5}),
    ("update", {"size": 10699}),
    ("delete", {}),
    # current wire format: price and timestamp on every row
    ("insert", {"size": 100, "price": 61600, "timestamp": "2024-03-01T12:00:00.001Z"}),
    ("update", {"size": 200, "price": 61600.5, "timestamp": "2024-03-01T12:00:00.002Z"}),
    ("delete", {"price": 61600.5, "timestamp": "2024-03-01T12:00:00.003Z"}),
    ("delete", {"size": 0, "price": 61600.5, "timestamp": "2024-03-01T12:00:00.003Z"}),
])
@pytest.mark.parametrize("table", sorted(L2_TABLES))
def test_l2_deltas_in_both_formats(table: str, action: str, fields: dict[str, Any]) -> None:
    parsed = parse_frame(l2(action, row(**fields), table=table))
    assert isinstance(parsed, TableFrame)
    assert (parsed.table, parsed.action, parsed.symbol) == (table, action, "XBTUSD")
    assert parsed.data == [row(**fields)]


@pytest.mark.parametrize("table", ["quote", "trade", "instrument", "funding"])
def test_other_tables_pass_through_untouched(table: str) -> None:
    rows = [{"timestamp": "2021-04-05T18:41:14.309Z", "symbol": "DOGEUSDT", "bidSize": 1056, "bidPrice": 0.058,
             "anything": {"nested": [1, None, "x"]}}]
    parsed = parse_frame(frame(table, "insert", rows))
    assert isinstance(parsed, TableFrame)
    assert parsed.table == table and parsed.symbol == "DOGEUSDT" and parsed.data == rows


def test_other_tables_without_symbols() -> None:
    parsed = parse_frame(frame("announcement", "partial", [{"id": 1, "title": "maintenance"}]))
    assert isinstance(parsed, TableFrame) and parsed.symbol is None


def test_orderbook10_is_recognised_with_its_symbol() -> None:
    parsed = parse_frame(frame(ORDERBOOK10_TABLE, "update", [
        {"symbol": "XBTUSD", "bids": [[100.5, 10]], "asks": [[101, 5]], "timestamp": "2024-03-01T12:00:00.000Z"}]))
    assert isinstance(parsed, TableFrame)
    assert parsed.table == ORDERBOOK10_TABLE and parsed.symbol == "XBTUSD"


def test_mixed_symbols_are_split_in_order() -> None:
    rows = [row(id=1, size=1), {**row(id=2, size=2), "symbol": "ETHUSD"}, row(id=3, size=3),
            {**row(id=4, size=4), "symbol": "ETHUSD"}]
    parsed = parse_frame(l2("update", *rows))
    assert isinstance(parsed, TableFrame) and parsed.symbol is None
    parts = split_by_symbol(parsed)
    assert [(part.symbol, [r["id"] for r in part.data]) for part in parts] == [("XBTUSD", [1, 3]), ("ETHUSD", [2, 4])]
    assert all(part.table == "orderBookL2" and part.action == "update" for part in parts)


def test_split_of_a_single_symbol_frame_is_the_frame() -> None:
    parsed = parse_frame(PARTIAL)
    assert isinstance(parsed, TableFrame)
    assert split_by_symbol(parsed) == [parsed]


def test_actions_constant() -> None:
    assert sorted(ACTIONS) == ["delete", "insert", "partial", "update"]


MALFORMED = [
    ("not json", "{", "invalid JSON"),
    ("pong with spaces", " pong", "invalid JSON"),
    ("array", "[1, 2]", "expected a JSON object, got list"),
    ("number", "42", "expected a JSON object, got int"),
    ("unknown shape", '{"hello":"world"}', "unrecognised frame"),
    ("table not a string", '{"table":1,"action":"insert","data":[]}', "'table' is not a string"),
    ("missing action", '{"table":"quote","data":[]}', "field 'action' is missing"),
    ("unknown action", '{"table":"quote","action":"upsert","data":[]}', "unknown action 'upsert'"),
    ("unhashable action", '{"table":"quote","action":["insert"],"data":[]}', "unknown action"),
    ("missing data", '{"table":"quote","action":"insert"}', "field 'data' is missing"),
    ("data not a list", '{"table":"quote","action":"insert","data":{}}', "'data' is not a list"),
    ("filter not an object", '{"table":"quote","action":"insert","data":[],"filter":[]}', "'filter' is not an object"),
    ("filter symbol not a string", '{"table":"orderBookL2","action":"partial","data":[],"filter":{"symbol":1}}',
     "'filter.symbol' is not a string"),
    ("other table row not an object", '{"table":"quote","action":"insert","data":[1]}', "row 0 is not an object"),
    ("l2 row not an object", l2("update", 5), "update row 0: expected an object, got int"),  # type: ignore[arg-type]
    ("l2 row missing id", l2("update", {"symbol": "XBTUSD", "side": "Buy", "size": 1}), "missing field 'id'"),
    ("l2 row missing symbol", l2("delete", {"id": 1, "side": "Buy"}), "missing field 'symbol'"),
    ("update missing size", l2("update", row()), "update row 0: missing field 'size'"),
    ("insert missing price", l2("insert", row(size=1)), "insert row 0: missing field 'price'"),
    ("partial missing size", l2("partial", row(price=1.5)), "partial row 0: missing field 'size'"),
    ("id is a string", l2("delete", row(id="8799938400")), "'id' is not an integer"),
    ("id is a float", l2("delete", row(id=8799938400.0)), "'id' is not an integer"),
    ("id is a boolean", l2("delete", row(id=True)), "'id' is not an integer"),
    ("side lower case", l2("delete", row(side="sell")), "'side' is not Buy or Sell"),
    ("side unhashable", l2("delete", row(side=["Sell"])), "'side' is not Buy or Sell"),
    ("size zero on update", l2("update", row(size=0)), "'size' is not an integer >= 1"),
    ("size negative on insert", l2("insert", row(size=-5, price=1.0)), "'size' is not an integer >= 1"),
    ("size a float", l2("update", row(size=1.5)), "'size' is not an integer >= 1"),
    ("size a boolean", l2("update", row(size=True)), "'size' is not an integer >= 1"),
    ("size negative on delete", l2("delete", row(size=-1)), "'size' is not an integer >= 0"),
    ("price a string", l2("insert", row(size=1, price="61600.5")), "'price' is not a number"),
    ("price a boolean", l2("insert", row(size=1, price=True)), "'price' is not a number"),
    ("price null on update", l2("update", row(size=1, price=None)), "'price' is not a number"),
    ("price a string on delete", l2("delete", row(price="1")), "'price' is not a number"),
    ("timestamp a number", l2("update", row(size=1, timestamp=1700000000)), "'timestamp' is not a string"),
    ("symbol a number", l2("update", {**row(size=1), "symbol": 7}), "'symbol' is not a string"),
    ("later symbol a number", l2("update", row(size=1), {**row(size=1), "symbol": 7}), "'symbol' is not a string"),
    ("bad second row", l2("update", row(size=1), row(size="2")), "update row 1: 'size'"),
    ("filter disagrees with rows",
     frame("orderBookL2", "partial", [row(size=1, price=1.0)], filter={"symbol": "ETHUSD"}),
     "rows do not match filter symbol 'ETHUSD'"),
    ("subscribe ack without success", '{"subscribe":"trade:XBTUSD"}', "'success' is missing or not a boolean"),
    ("subscribe topic not a string", '{"success":true,"subscribe":["trade:XBTUSD"]}', "'subscribe' is not a string"),
    ("request not an object", '{"success":true,"subscribe":"trade:XBTUSD","request":"x"}',
     "'request' is not an object"),
    ("error not a string", '{"status":400,"error":{"message":"x"}}', "'error' is not a string"),
    ("status not an integer", '{"status":"400","error":"x"}', "'status' is not an integer"),
    ("meta not an object", '{"status":400,"error":"x","meta":[]}', "'meta' is not an object"),
    ("info not a string", '{"info":1}', "'info' is not a string"),
    ("welcome version not a string", '{"info":"hi","version":2}', "'version' is not a string"),
    ("welcome limit not an object", '{"info":"hi","limit":39}', "'limit' is not an object"),
]


@pytest.mark.parametrize(("text", "message"), [case[1:] for case in MALFORMED], ids=[case[0] for case in MALFORMED])
def test_malformed_frames_raise_protocol_error(text: str, message: str) -> None:
    with pytest.raises(ProtocolError) as raised:
        parse_frame(text)
    assert message in str(raised.value)
    assert isinstance(raised.value, ValueError)


def test_error_message_carries_a_truncated_excerpt() -> None:
    rows = [row(id=index, size=1, price=float(index)) for index in range(1000)] + [row(id="bad", size=1, price=1.0)]
    text = l2("insert", *rows)
    with pytest.raises(ProtocolError) as raised:
        parse_frame(text)
    message = str(raised.value)
    assert "insert row 1000: 'id' is not an integer: 'bad'" in message
    assert text[:60] in message and f"...(+{len(text) - 120} chars)" in message
    assert len(message) < 300


def test_short_input_is_quoted_whole() -> None:
    with pytest.raises(ProtocolError) as raised:
        parse_frame('{"hello":"world"}')
    assert str(raised.value).endswith(""": {"hello":"world"}""")


def test_infinite_numbers_are_refused() -> None:
    with pytest.raises(ProtocolError, match="invalid JSON"):
        parse_frame('{"table":"orderBookL2","action":"insert","data":[{"symbol":"X","id":1,"side":"Buy",'
                    '"size":1,"price":1e999}]}')


def test_frames_are_immutable_and_picklable() -> None:
    parsed = parse_frame(PARTIAL)
    assert type(parsed) is TableFrame
    assert parsed == TableFrame(parsed.table, parsed.action, parsed.symbol, parsed.data, parsed.filter)
    unfiltered = parse_frame('{"table":"orderBookL2","action":"update","data":[]}')
    assert unfiltered == TableFrame("orderBookL2", "update", None, [])
    assert type(unfiltered) is TableFrame and unfiltered.filter == {} and not unfiltered.filter
    for frame in (parsed, unfiltered):
        assert pickle.loads(pickle.dumps(frame)) == frame
        assert copy.deepcopy(frame) == frame
    assert pickle.loads(pickle.dumps(unfiltered)).filter is unfiltered.filter  # the one shared empty filter
    writable: Any = unfiltered.filter
    with pytest.raises(TypeError):
        writable["symbol"] = "XBTUSD"
    assert hash(Pong()) == hash(parse_frame("pong"))
    with pytest.raises(AttributeError):
        parsed.symbol = "ETHUSD"  # type: ignore[misc]
