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


def decode_entry(stream_id: bytes | str, fields: dict[bytes, bytes]) -> StreamEntry:
    """Decode the raw field map redis-py returns (bytes keys and values); raise EntryError if malformed.

    Every consumer calls this once per entry, so the common case indexes the fields directly and the
    precise diagnosis of a bad entry is left to `_diagnose`.
    """
    sid = stream_id.decode() if isinstance(stream_id, bytes) else stream_id
    try:
        action = fields[b"action"].decode()
        gap = action == GAP_ACTION
        entry = StreamEntry(sid, "" if gap else fields[b"frame"].decode(), fields[b"table"].decode(), action,
                            fields[b"session"].decode(), int(fields[b"seq"]), int(fields[b"recv_us"]),
                            fields[b"reason"].decode("utf-8", "replace") if gap and b"reason" in fields else "")
    except (KeyError, ValueError):
        raise _diagnose(sid, fields) from None
    if action not in ENTRY_ACTIONS:
        raise EntryError(f"entry {sid} has unknown action {action!r}")
    return entry


def _diagnose(sid: str, fields: dict[bytes, bytes]) -> EntryError:
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
