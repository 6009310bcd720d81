"""Which top-10 keys to mark stale because the ingest session behind them is gone: the pure part, no I/O.

ingest keeps one liveness key per websocket session and renews it while the session is healthy; it expires
when ingest dies, hangs or loses the venue. A session is lost once its key has been seen absent
continuously for `lost_after` seconds: the grace covers a new session whose first entries reach Redis
before its first liveness write. A key that is merely quiet keeps a present liveness key, so it stays live.

The service feeds a `SessionWatch` with what it reads each second (the `session` and `status` of every key
it serves, then whether each session's liveness key exists) and marks what `keys_to_mark` returns.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass, field
from typing import NamedTuple

from services.top10.scripts import STALE


class KeyLiveness(NamedTuple):
    """The liveness fields of one top-10 key."""

    session: str
    status: str


@dataclass(slots=True)
class _Session:
    referenced_at: float
    absent_since: float | None = None
    lost: bool = False


@dataclass(frozen=True, slots=True)
class SessionChanges:
    """Sessions whose state one observation changed."""

    lost: list[str] = field(default_factory=list)
    back: list[str] = field(default_factory=list)
    """Lost sessions whose liveness key is present again (a frozen ingest that resumed)."""


def session_lost(absent_since: float | None, now: float, lost_after: float) -> bool:
    """Whether a liveness key absent without a break since `absent_since` (None: present) means the session is gone."""
    return absent_since is not None and now - absent_since >= lost_after


def keys_to_mark(keys: Mapping[str, KeyLiveness], lost: Set[str]) -> list[tuple[str, str]]:
    """The (symbol, session) of every key not stale yet whose session is lost."""
    return [(symbol, key.session) for symbol, key in keys.items() if key.status != STALE and key.session in lost]


class SessionWatch:
    """The sessions behind the keys served lately, and how long each liveness key has been absent.

    A session stays watched for `retain` seconds after the last key that named it: a snapshot of a lost
    session may still arrive late (a backlog, an entry claimed from a dead consumer), and must be known
    as lost when it does.
    """

    def __init__(self, lost_after: float, retain: float) -> None:
        self._lost_after = lost_after
        self._retain = retain
        self._sessions: dict[str, _Session] = {}

    def reference(self, sessions: Iterable[str], now: float) -> None:
        """Record that keys name these sessions now; forget the sessions no key named for `retain` seconds."""
        for session in sessions:
            state = self._sessions.get(session)
            if state is None:
                self._sessions[session] = _Session(now)
            else:
                state.referenced_at = now
        for session in [name for name, state in self._sessions.items() if now - state.referenced_at > self._retain]:
            del self._sessions[session]

    def watched(self) -> list[str]:
        """The sessions whose liveness key to look up next."""
        return list(self._sessions)

    def observe(self, present: Mapping[str, bool], now: float) -> SessionChanges:
        """Take in whether each watched session's liveness key exists; return what changed."""
        changes = SessionChanges()
        for session, exists in present.items():
            state = self._sessions.get(session)
            if state is None:
                continue
            if exists:
                state.absent_since = None
                if state.lost:
                    state.lost = False
                    changes.back.append(session)
                continue
            if state.absent_since is None:
                state.absent_since = now
            if not state.lost and session_lost(state.absent_since, now, self._lost_after):
                state.lost = True
                changes.lost.append(session)
        return changes

    def is_lost(self, session: str) -> bool:
        state = self._sessions.get(session)
        return state is not None and state.lost

    @property
    def lost(self) -> set[str]:
        return {session for session, state in self._sessions.items() if state.lost}
