"""The stream entry codec: the fields ingest writes and the consumers read (DESIGN.md, Stream entry fields).

Fields stay plain strings so `XRANGE` in redis-cli is readable. A `gap` entry carries no frame: it tells the
consumers that frames may be missing from here on, so the book must wait for a fresh partial.
"""

from __future__ import annotations

from dataclasses import dataclass

GAP_ACTION = "gap"
ENTRY_ACTIONS = frozenset({"partial", "insert", "update", "delete", GAP_ACTION})


class EntryError(ValueError):
    """A stream entry lacks a field or has a malformed one."""


@dataclass(frozen=True, slots=True)
class StreamEntry:
    """One decoded stream entry; `frame` is empty for a gap marker, `reason` says why a gap was written."""

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


def encode_entry(frame: str, table: str, action: str, session: str, seq: int, recv_us: int) -> dict[str, str]:
    return {"frame": frame, "table": table, "action": action, "session": session,
            "seq": str(seq), "recv_us": str(recv_us)}


def encode_gap(table: str, session: str, seq: int, recv_us: int, reason: str) -> dict[str, str]:
    return {"table": table, "action": GAP_ACTION, "session": session, "seq": str(seq),
            "recv_us": str(recv_us), "reason": reason}


def _text(fields: dict[bytes, bytes], name: bytes, stream_id: str) -> str:
    value = fields.get(name)
    if value is None:
        raise EntryError(f"entry {stream_id} has no {name.decode()!r} field")
    return value.decode("utf-8", "replace")


def decode_entry(stream_id: bytes | str, fields: dict[bytes, bytes]) -> StreamEntry:
    """Decode the raw field map redis-py returns (bytes keys and values); raise EntryError if malformed."""
    sid = stream_id.decode() if isinstance(stream_id, bytes) else stream_id
    action = _text(fields, b"action", sid)
    if action not in ENTRY_ACTIONS:
        raise EntryError(f"entry {sid} has unknown action {action!r}")
    try:
        seq = int(_text(fields, b"seq", sid))
        recv_us = int(_text(fields, b"recv_us", sid))
    except ValueError:
        raise EntryError(f"entry {sid} has a non-integer seq or recv_us") from None
    frame = "" if action == GAP_ACTION else _text(fields, b"frame", sid)
    reason = fields[b"reason"].decode("utf-8", "replace") if b"reason" in fields else ""
    return StreamEntry(sid, frame, _text(fields, b"table", sid), action, _text(fields, b"session", sid),
                       seq, recv_us, reason)


def parse_stream_id(stream_id: str) -> tuple[int, int]:
    """`"1700000000000-3"` -> `(1700000000000, 3)`: stream ids compare as this pair, not as strings."""
    ms, _, seq = stream_id.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        raise EntryError(f"not a stream id: {stream_id!r}") from None
