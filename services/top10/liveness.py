"""Which top-10 keys to mark stale because the ingest session behind them is gone: the pure part, no I/O.

The liveness pass (liveness_pass.py) reads each second the `session` and `status` of every key it serves
(`read_keys` takes the replies apart), tracks those sessions with the shared `SessionTracker`
(services.core.liveness) and marks what `keys_to_mark` returns; `marked_per_session` sorts the marking
script's replies for the report. A key that is merely quiet keeps a present liveness key, so it stays live.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from typing import Any, NamedTuple

from services.core.keys import SESSION_PATTERN
from services.core.text import as_text
from services.top10.scripts import STALE


class KeyLiveness(NamedTuple):
    """The liveness fields of one top-10 key."""

    session: str
    status: str


class KeysRead(NamedTuple):
    keys: dict[str, KeyLiveness]
    """symbol -> the liveness fields of its key, for every key that names a valid session."""
    invalid_sessions: list[bytes]
    """Session fields that are not a session name: never watched, reported."""


def read_keys(symbols: Sequence[str], replies: Sequence[Any]) -> KeysRead:
    """The keys of `symbols` from the replies of `HMGET <key> session status` (or their errors), in order.

    A key of another type answers WRONGTYPE: nothing to watch there, the next write replaces it. A key
    with no session is not there yet (or was written before keys named their session).
    """
    read = KeysRead({}, [])
    for symbol, reply in zip(symbols, replies, strict=True):
        if isinstance(reply, Exception) or reply[0] is None:
            continue
        session = as_text(reply[0])
        if not SESSION_PATTERN.fullmatch(session):
            read.invalid_sessions.append(reply[0])
            continue
        read.keys[symbol] = KeyLiveness(session, as_text(reply[1] or b""))
    return read


def keys_to_mark(keys: Mapping[str, KeyLiveness], lost: Set[str]) -> list[tuple[str, str]]:
    """The (symbol, session) of every key not stale yet whose session is lost."""
    return [(symbol, key.session) for symbol, key in keys.items() if key.status != STALE and key.session in lost]


def marked_per_session(marks: Sequence[tuple[str, str]], results: Sequence[Any]) -> dict[str, list[str]]:
    """session -> the symbols whose key `mark_stale.lua` marked (1); it refuses a key since rewritten."""
    marked: dict[str, list[str]] = {}
    for (symbol, session), result in zip(marks, results, strict=True):
        if result == 1:
            marked.setdefault(session, []).append(symbol)
    return marked
