"""orderBook10 model: validated snapshots and exact exchange-time keys."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from services.core.bitmex import ProtocolError, TableFrame, parse_frame
from services.core.orderbook10 import Top10Snapshot, parse_orderbook10, timestamp_key

STAMP = "2021-04-05T18:41:13.652Z"
BIDS: list[list[float | int]] = [[63573.5, 6000], [63573, 100], [63570, 25]]
ASKS: list[list[float | int]] = [[63574, 10], [63574.5, 3000]]


def ob10(*rows: dict[str, Any], table: str = "orderBook10") -> TableFrame:
    frame = parse_frame(orjson.dumps({"table": table, "action": "update", "data": list(rows)}))
    assert isinstance(frame, TableFrame)
    return frame


def row(**fields: Any) -> dict[str, Any]:
    return {"symbol": "XBTUSD", "bids": BIDS, "asks": ASKS, "timestamp": STAMP, **fields}


def test_snapshot_of_a_valid_frame() -> None:
    assert parse_orderbook10(ob10(row())) == [Top10Snapshot("XBTUSD", BIDS, ASKS, STAMP)]


def test_one_snapshot_per_row_in_order() -> None:
    snapshots = parse_orderbook10(ob10(row(), row(symbol="ETHUSD", bids=[], asks=[[2000.05, 1]])))
    assert [(snapshot.symbol, snapshot.bids, snapshot.asks) for snapshot in snapshots] == [
        ("XBTUSD", BIDS, ASKS), ("ETHUSD", [], [[2000.05, 1]])]


def test_full_ten_levels_and_empty_sides() -> None:
    bids = [[100 - index, index + 1] for index in range(10)]
    asks = [[101 + index * 0.5, 1] for index in range(10)]
    assert parse_orderbook10(ob10(row(bids=bids, asks=asks)))[0].bids == bids
    assert parse_orderbook10(ob10(row(bids=[], asks=[])))[0] == Top10Snapshot("XBTUSD", [], [], STAMP)
    assert parse_orderbook10(ob10()) == []


INVALID = [
    ("bids ascending", row(bids=[[1, 1], [2, 1]]), "'bids' prices are not strictly descending"),
    ("bids repeated price", row(bids=[[2, 1], [2, 1]]), "not strictly descending"),
    ("asks descending", row(asks=[[63575, 1], [63574, 1]]), "'asks' prices are not strictly ascending"),
    ("crossed", row(bids=[[63574, 1]]), "book crossed, best bid 63574 >= best ask 63574"),
    ("more than ten levels", row(asks=[[70000 + index, 1] for index in range(11)]), "has 11 levels, more than 10"),
    ("zero size", row(bids=[[1, 0]]), "size is not a positive integer"),
    ("negative size", row(bids=[[1, -3]]), "size is not a positive integer"),
    ("float size", row(bids=[[1, 1.5]]), "size is not a positive integer"),
    ("boolean size", row(bids=[[1, True]]), "size is not a positive integer"),
    ("string price", row(asks=[["63574", 1]]), "price is not a number"),
    ("null price", row(asks=[[None, 1]]), "price is not a number"),
    ("level of three", row(asks=[[63574, 1, 2]]), "level is not [price, size]"),
    ("level an object", row(asks=[{"price": 1, "size": 1}]), "level is not [price, size]"),
    ("bids missing", {k: v for k, v in row().items() if k != "bids"}, "'bids' is missing or not a list"),
    ("asks an object", row(asks={}), "'asks' is missing or not a list"),
    ("symbol missing", {k: v for k, v in row().items() if k != "symbol"}, "'symbol' is missing"),
    ("timestamp missing", {k: v for k, v in row().items() if k != "timestamp"}, "'timestamp' is missing"),
    ("timestamp not a date", row(timestamp="yesterday"), "not an ISO-8601 timestamp"),
    ("timestamp without zone", row(timestamp="2021-04-05T18:41:13.652"), "has no time zone"),
]


@pytest.mark.parametrize(("bad_row", "message"), [case[1:] for case in INVALID], ids=[case[0] for case in INVALID])
def test_invalid_snapshots_raise_protocol_error(bad_row: dict[str, Any], message: str) -> None:
    with pytest.raises(ProtocolError) as raised:
        parse_orderbook10(ob10(row(), bad_row))
    assert message in str(raised.value)


def test_row_not_an_object() -> None:
    frame = TableFrame("orderBook10", "update", None, ["XBTUSD"])  # type: ignore[list-item]
    with pytest.raises(ProtocolError, match="row 0 is not an object"):
        parse_orderbook10(frame)


def test_other_tables_are_refused() -> None:
    with pytest.raises(ProtocolError, match="expected an orderBook10 frame, got table 'quote'"):
        parse_orderbook10(ob10(row(), table="quote"))


@pytest.mark.parametrize(("stamp", "expected"), [
    ("1970-01-01T00:00:00.000Z", 0),
    ("2021-04-05T18:41:13.652Z", 1_617_648_073_652_000),
    ("2021-04-05T18:41:13Z", 1_617_648_073_000_000),
    ("2021-04-05T18:41:13.652123Z", 1_617_648_073_652_123),
    ("2021-04-05T18:41:13.652000+00:00", 1_617_648_073_652_000),
    ("2021-04-05T20:41:13.652+02:00", 1_617_648_073_652_000),
    ("1969-12-31T23:59:59.999999Z", -1),
    ("2100-02-28T23:59:59.999Z", 4_107_542_399_999_000),
])
def test_timestamp_key_is_exact(stamp: str, expected: int) -> None:
    assert timestamp_key(stamp) == expected


def test_timestamp_key_matches_datetime_for_many_instants() -> None:
    for micros in range(1_600_000_000_000_000, 1_800_000_000_000_000, 7_777_777_777_777):
        moment = datetime.fromtimestamp(micros // 1_000_000, UTC).replace(microsecond=micros % 1_000_000)
        assert timestamp_key(moment.isoformat().replace("+00:00", "Z")) == micros


def test_timestamp_key_orders_like_time() -> None:
    stamps = ["2021-04-05T18:41:13.652Z", "2021-04-05T18:41:13.652001Z", "2021-04-05T18:41:13.653Z",
              "2021-04-05T18:41:14Z", "2021-04-06T00:00:00Z"]
    keys = [timestamp_key(stamp) for stamp in stamps]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)


@pytest.mark.parametrize("stamp", ["", "now", "2021-13-05T18:41:13Z", "2021-04-05T25:00:00Z", "2021-04-05",
                                   "2021-04-05T18:41:13.652", 1617648073])
def test_timestamp_key_refuses_non_timestamps(stamp: Any) -> None:
    with pytest.raises(ProtocolError):
        timestamp_key(stamp)
