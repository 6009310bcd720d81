"""The stream entry codec: the fields ingest writes and the consumers read (DESIGN.md, Stream entry fields).

Fields stay plain strings so `XRANGE` in redis-cli is readable. A `gap` entry carries no frame: it tells the
consumers that frames may be missing from here on, so the book must wait for a fresh partial.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple, cast

from services.core.keys import SESSION_PATTERN
from services.core.text import excerpt

GAP_ACTION = "gap"
FRAME_ACTIONS = frozenset({"partial", "insert", "update", "delete"})
ENTRY_ACTIONS = FRAME_ACTIONS | {GAP_ACTION}
ENTRY_FIELDS = (b"frame", b"table", b"action", b"session", b"seq", b"recv_us")
"""The field names of a frame entry, in the order `encode_entry` (so ingest) writes them."""
_ENTRY_LAYOUT = list(ENTRY_FIELDS)
_FRAME_ACTION_BYTES = frozenset(action.encode() for action in FRAME_ACTIONS)

RawFields = Sequence[bytes] | Mapping[bytes, bytes]
"""Entry fields as Redis sends them (`[name, value, name, value, ...]`) or as redis-py parses them (a dict)."""
RawEntry = tuple[bytes, RawFields]
"""One entry as the clients return it: its id and its fields (XREADGROUP and XRANGE replies stay raw, see
services.runtime.redis_client)."""
PendingEntry = tuple[bytes, RawFields | None]
"""An entry re-read from a pending list (XREADGROUP from 0, XAUTOCLAIM): its fields are None, or empty, when
MAXLEN trimmed it away after it was delivered."""


class EntryError(ValueError):
    """A stream entry lacks a field or has a malformed one."""


class StreamEntry(NamedTuple):
    """One decoded stream entry; `frame` is empty for a gap marker, `reason` says why a gap was written.

    A NamedTuple rather than a frozen dataclass: one is built per entry decoded in full, and a frozen
    dataclass sets each field through `object.__setattr__`, which is slower.
    """

    stream_id: str
    frame: str
    table: str
    action: str
    session: str
    seq: int
    recv_us: int
    reason: str = ""

    @property
    def is_gap(self) -> bool:
        return self.action == GAP_ACTION


_new_entry = tuple.__new__
"""Builds a StreamEntry from a complete tuple, skipping the Python-level `__new__` NamedTuple generates,
which calling the class would run."""


def encode_entry(frame: str, table: str, action: str, session: str, seq: int, recv_us: int) -> dict[str, str]:
    return {"frame": frame, "table": table, "action": action, "session": session,
            "seq": str(seq), "recv_us": str(recv_us)}


def encode_gap(table: str, session: str, seq: int, recv_us: int, reason: str) -> dict[str, str]:
    return {"table": table, "action": GAP_ACTION, "session": session, "seq": str(seq),
            "recv_us": str(recv_us), "reason": reason}


def decode_entry(stream_id: bytes | str, fields: RawFields) -> StreamEntry:
    """Decode one entry's fields (bytes names and values); raise EntryError if malformed, a session that
    does not match SESSION_PATTERN included (it would become a key, a log field, a document).

    Every consumer calls this once per entry. The common case, a frame entry laid out as ingest writes it
    and passed as the flat list Redis sends, is read by position after one comparison of the names;
    anything else (a gap, another field order, a dict) goes through a name lookup, and the precise
    diagnosis of a bad entry is left to `_diagnose`.
    """
    sid = stream_id.decode() if isinstance(stream_id, bytes) else stream_id
    if type(fields) is list and fields[::2] == _ENTRY_LAYOUT:
        try:
            entry = _new_entry(StreamEntry, (sid, fields[1].decode(), fields[3].decode(), fields[5].decode(),
                                             fields[7].decode(), int(fields[9]), int(fields[11]), ""))
        except ValueError:
            pass  # diagnosed below
        else:
            if entry.action in FRAME_ACTIONS and SESSION_PATTERN.fullmatch(entry.session):
                return entry
    named = field_map(fields)
    try:
        action = named[b"action"].decode()
        gap = action == GAP_ACTION
        entry = StreamEntry(sid, "" if gap else named[b"frame"].decode(), named[b"table"].decode(), action,
                            named[b"session"].decode(), int(named[b"seq"]), int(named[b"recv_us"]),
                            named[b"reason"].decode("utf-8", "replace") if gap and b"reason" in named else "")
    except (KeyError, ValueError):
        raise _diagnose(sid, named) from None
    if action not in ENTRY_ACTIONS:
        raise EntryError(f"entry {sid} has unknown action {action!r}")
    if not SESSION_PATTERN.fullmatch(entry.session):
        raise EntryError(f"entry {sid} has an invalid session {excerpt(ascii(entry.session), 40)}")
    return entry


def decode_next(stream_id: bytes, fields: RawFields, session: str | None, seq: int) -> tuple[str, bytes, int] | None:
    """Decode only what a consumer needs of the entry it expects next: frame entry `seq` of `session`, laid
    out as ingest writes it and passed as the flat list Redis sends. Returns (stream id, frame as bytes,
    recv_us), or None for anything else, which `decode_entry` then decodes in full.

    Nearly every entry l2builder reads is this one, and this is cheaper than `decode_entry`: the session
    and seq are compared without building a StreamEntry, the frame stays bytes (orjson reads bytes and
    checks their UTF-8 itself), and the table is not looked at, since the frame names its own.
    """
    if (session is None or type(fields) is not list or fields[::2] != _ENTRY_LAYOUT
            or fields[5] not in _FRAME_ACTION_BYTES or fields[7] != session.encode()):
        return None
    try:
        if int(fields[9]) != seq:
            return None
        return stream_id.decode(), fields[1], int(fields[11])
    except ValueError:
        return None


def field_map(fields: RawFields) -> Mapping[bytes, bytes]:
    """The fields as a name -> value mapping, whichever shape they came in."""
    if isinstance(fields, Mapping):
        return fields
    if len(fields) % 2:
        return {}  # not name/value pairs: `_diagnose` names the first missing field
    pairs = iter(fields)
    return dict(zip(pairs, pairs, strict=True))


def _diagnose(sid: str, fields: Mapping[bytes, bytes]) -> EntryError:
    action = fields.get(b"action", b"").decode("utf-8", "replace")
    required = ["action", "table", "session", "seq", "recv_us"] + ([] if action == GAP_ACTION else ["frame"])
    for name in required:
        if name.encode() not in fields:
            return EntryError(f"entry {sid} has no {name!r} field")
    for name in ("seq", "recv_us"):
        if not fields[name.encode()].isdigit():
            return EntryError(f"entry {sid} has a non-integer {name}: {fields[name.encode()][:40]!r}")
    return EntryError(f"entry {sid} has a field that is not UTF-8 text")


def parse_stream_id(stream_id: str) -> tuple[int, int]:
    """`"1700000000000-3"` -> `(1700000000000, 3)`: stream ids compare as this pair, not as strings."""
    ms, _, seq = stream_id.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        raise EntryError(f"not a stream id: {stream_id!r}") from None


def stream_pairs(reply: Any) -> Iterable[tuple[bytes, list[Any]]]:
    """A raw XREADGROUP reply as (stream key, entries) pairs, whichever protocol version shaped it."""
    if not reply:
        return ()
    return cast(Iterable[tuple[bytes, list[Any]]], reply.items() if isinstance(reply, dict) else reply)
