"""The stream entry codec: what ingest writes is what the consumers read, and bad entries are named."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from services.core.entries import (
    ENTRY_FIELDS,
    EntryError,
    RawFields,
    StreamEntry,
    decode_entry,
    decode_next,
    encode_entry,
    encode_gap,
    parse_stream_id,
)


def as_redis(fields: dict[str, str]) -> dict[bytes, bytes]:
    """The shape redis-py returns for XRANGE/XREADGROUP fields."""
    return {key.encode(): value.encode() for key, value in fields.items()}


def as_wire(fields: dict[str, str]) -> list[bytes]:
    """The shape Redis sends them in (a raw reply): `[name, value, name, value, ...]`, in written order."""
    return [part.encode() for pair in fields.items() for part in pair]


def test_encoder_writes_the_layout_the_fast_decoder_expects() -> None:
    assert tuple(name.encode() for name in encode_entry("{}", "t", "insert", "s", 1, 2)) == ENTRY_FIELDS


@pytest.mark.parametrize("shape", [as_redis, as_wire, lambda fields: as_wire(dict(reversed(fields.items())))],
                         ids=["dict", "wire", "wire-reordered"])
def test_every_field_shape_decodes_alike(shape: Callable[[dict[str, str]], RawFields]) -> None:
    frame = encode_entry('{"a":1}', "orderBookL2", "update", "s1", 7, 123)
    gap = encode_gap("orderBookL2", "s1", 8, 124, "disconnect")
    assert decode_entry(b"1-1", shape(frame)) == StreamEntry("1-1", '{"a":1}', "orderBookL2", "update", "s1", 7, 123)
    assert decode_entry(b"1-2", shape(gap)) == StreamEntry("1-2", "", "orderBookL2", "gap", "s1", 8, 124, "disconnect")


@pytest.mark.parametrize(("field", "value", "message"), [("seq", "x", "non-integer seq"),
                                                          ("action", "merge", "unknown action 'merge'"),
                                                          ("frame", "\udcff", "not UTF-8")])
def test_malformed_wire_entries_are_named(field: str, value: str, message: str) -> None:
    fields = as_wire(encode_entry("{}", "orderBookL2", "insert", "s", 1, 2))
    fields[fields.index(field.encode()) + 1] = value.encode("utf-8", "surrogateescape")
    with pytest.raises(EntryError, match=message):
        decode_entry(b"3-0", fields)


def test_the_expected_next_frame_is_decoded_lean() -> None:
    fields = as_wire(encode_entry('{"a":1}', "orderBookL2", "update", "s1", 7, 123))
    assert decode_next(b"1-1", fields, "s1", 7) == ("1-1", b'{"a":1}', 123)
    assert decode_entry(b"1-1", fields) == StreamEntry("1-1", '{"a":1}', "orderBookL2", "update", "s1", 7, 123)


@pytest.mark.parametrize(("fields", "session", "seq"), [
    (as_wire(encode_entry("{}", "orderBookL2", "update", "s1", 7, 123)), "s1", 8),  # another seq
    (as_wire(encode_entry("{}", "orderBookL2", "update", "s1", 7, 123)), "s2", 7),  # another session
    (as_wire(encode_entry("{}", "orderBookL2", "update", "s1", 7, 123)), None, 7),  # no session yet
    (as_wire(encode_gap("orderBookL2", "s1", 7, 123, "disconnect")), "s1", 7),  # a gap marker
    (as_redis(encode_entry("{}", "orderBookL2", "update", "s1", 7, 123)), "s1", 7),  # a dict
    (as_wire(dict(reversed(encode_entry("{}", "orderBookL2", "update", "s1", 7, 123).items()))), "s1", 7),
    (as_wire({**encode_entry("{}", "orderBookL2", "update", "s1", 7, 123), "action": "merge"}), "s1", 7),
    (as_wire({**encode_entry("{}", "orderBookL2", "update", "s1", 7, 123), "seq": "x"}), "s1", 7),
    (as_wire({**encode_entry("{}", "orderBookL2", "update", "s1", 7, 123), "recv_us": "soon"}), "s1", 7),
], ids=["seq", "session", "no-session", "gap", "dict", "reordered", "action", "bad-seq", "bad-recv_us"])
def test_anything_but_the_expected_next_frame_is_left_to_the_full_decode(fields: RawFields, session: str | None,
                                                                         seq: int) -> None:
    assert decode_next(b"1-1", fields, session, seq) is None


def test_a_field_list_of_odd_length_is_an_entry_error() -> None:
    with pytest.raises(EntryError, match="no 'action' field"):
        decode_entry(b"4-0", [b"action", b"insert", b"frame"])


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


@pytest.mark.parametrize("session", ["a b", "x" * 65, "\x1b[31m", "", "key*"])
def test_a_session_that_cannot_name_a_liveness_key_is_refused(session: str) -> None:
    for fields in (encode_entry("{}", "orderBookL2", "insert", session, 1, 2),
                   encode_gap("orderBookL2", session, 1, 2, "disconnect")):
        with pytest.raises(EntryError, match="invalid session"):
            decode_entry(b"1-0", as_wire(fields))
