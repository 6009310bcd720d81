"""The stream entry codec: what ingest writes is what the consumers read, and bad entries are named."""

from __future__ import annotations

import pytest

from services.common.entries import (
    EntryError,
    decode_entry,
    encode_entry,
    encode_gap,
    parse_stream_id,
)


def as_redis(fields: dict[str, str]) -> dict[bytes, bytes]:
    """The shape redis-py returns for XRANGE/XREADGROUP fields."""
    return {key.encode(): value.encode() for key, value in fields.items()}


def test_frame_entry_round_trip() -> None:
    text = ('{"table":"orderBookL2","action":"insert",'
            '"data":[{"symbol":"XBTUSD","id":1,"side":"Buy","size":5,"price":1.5}]}')
    entry = decode_entry(b"1700000000000-3", as_redis(encode_entry(text, "orderBookL2", "insert", "s1", 7, 123)))
    assert (entry.stream_id, entry.frame) == ("1700000000000-3", text)
    assert (entry.table, entry.action) == ("orderBookL2", "insert")
    assert (entry.session, entry.seq, entry.recv_us, entry.reason, entry.is_gap) == ("s1", 7, 123, "", False)


def test_gap_entry_round_trip() -> None:
    entry = decode_entry("5-0", as_redis(encode_gap("orderBookL2", "s2", 9, 456, "disconnect")))
    assert entry.is_gap and entry.frame == "" and entry.reason == "disconnect"
    assert (entry.session, entry.seq, entry.recv_us) == ("s2", 9, 456)


def test_fields_are_plain_strings_for_redis_cli() -> None:
    fields = encode_entry("{}", "orderBook10", "update", "s", 1, 2)
    assert all(isinstance(value, str) for value in fields.values())
    assert set(fields) == {"frame", "table", "action", "session", "seq", "recv_us"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"frame": None}, "no 'frame' field"),
        ({"session": None}, "no 'session' field"),
        ({"seq": "x1"}, "non-integer seq"),
        ({"recv_us": ""}, "non-integer recv_us"),
        ({"action": "merge"}, "unknown action 'merge'"),
        ({"action": None}, "no 'action' field"),
    ],
)
def test_malformed_entries_are_named(change: dict[str, str | None], message: str) -> None:
    fields = encode_entry("{}", "orderBookL2", "insert", "s", 1, 2)
    for key, value in change.items():
        if value is None:
            del fields[key]
        else:
            fields[key] = value
    with pytest.raises(EntryError, match=message) as caught:
        decode_entry(b"9-9", as_redis(fields))
    assert "9-9" in str(caught.value)


def test_non_utf8_field_is_an_entry_error() -> None:
    fields = as_redis(encode_entry("{}", "orderBookL2", "insert", "s", 1, 2))
    fields[b"frame"] = b"\xff\xfe"
    with pytest.raises(EntryError, match="not UTF-8"):
        decode_entry(b"1-0", fields)


def test_stream_ids_compare_as_integer_pairs() -> None:
    assert parse_stream_id("1700000000000-3") == (1700000000000, 3)
    assert parse_stream_id("99-0") < parse_stream_id("100-0")  # but "99-0" > "100-0" as text
    with pytest.raises(EntryError):
        parse_stream_id("abc-1")
