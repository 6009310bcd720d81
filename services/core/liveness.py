"""Which ingest sessions are lost, from repeated looks at their liveness keys: the consumers' shared tracker.

ingest renews `Keys.ingest_alive(session)` while its websocket session is healthy and lets it expire when
the session ends, however it ends (a `kill -9` writes no gap marker). A key seen absent once proves
nothing: a new session's first entries may reach a consumer before its first liveness write. So a session
is lost only once its key has been seen absent continuously for `lost_after` seconds, and a single look
that finds it present starts the count again (a lost session whose key returns, a frozen ingest that
resumed, is back). A session without entries for a while is not lost as long as its key is renewed: a
quiet symbol is not a fault.

A session stays tracked for `retain` seconds after the last book or key that named it, lost or not: an
entry of a dead session may still arrive late (a backlog, an entry claimed from a dead consumer, a slow
catch-up), and it must then be known as lost, so that it never makes a book or key live.

`SessionTracker` is the pure part; `services.runtime.redis_client.sessions_alive` is the one lookup (EXISTS,
pipelined) both consumers use.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from services.core.keys import SESSION_LOST_AFTER

SESSION_RETAIN: Final = 60.0
INGEST_LOST: Final = "ingest_lost"


@dataclass(slots=True)
class _Session:
    named_at: float
    absent_since: float | None = None
    lost: bool = False


@dataclass(frozen=True, slots=True)
class SessionChanges:
    """What one look changed: sessions newly lost, and lost ones whose key is present again."""

    lost: list[str] = field(default_factory=list)
    back: list[str] = field(default_factory=list)


class SessionTracker:
    """The sessions named lately by the books or keys a consumer serves, and which of them are lost."""

    def __init__(self, lost_after: float = SESSION_LOST_AFTER, retain: float = SESSION_RETAIN) -> None:
        self.lost_after = lost_after
        self.retain = retain
        self._sessions: dict[str, _Session] = {}

    def watch(self, named: Iterable[str], now: float) -> list[str]:
        """Record that books or keys name these sessions now; return every tracked session, to look up.

        Sessions nothing named for `retain` seconds are forgotten.
        """
        for session in named:
            state = self._sessions.get(session)
            if state is None:
                self._sessions[session] = _Session(now)
            else:
                state.named_at = now
        self._sessions = {session: state for session, state in self._sessions.items()
                          if now - state.named_at <= self.retain}
        return list(self._sessions)

    def observe(self, alive: Mapping[str, bool], now: float) -> SessionChanges:
        """Take in one look at the liveness keys (session -> key present); untracked sessions are ignored."""
        changes = SessionChanges()
        for session, present in alive.items():
            state = self._sessions.get(session)
            if state is None:
                continue
            if present:
                state.absent_since = None
                if state.lost:
                    state.lost = False
                    changes.back.append(session)
                continue
            if state.absent_since is None:
                state.absent_since = now
            if not state.lost and now - state.absent_since >= self.lost_after:
                state.lost = True
                changes.lost.append(session)
        return changes

    def is_lost(self, session: str | None) -> bool:
        state = self._sessions.get(session) if session is not None else None
        return state is not None and state.lost

    @property
    def lost(self) -> set[str]:
        return {session for session, state in self._sessions.items() if state.lost}

    def absent_for(self, session: str, now: float) -> float:
        """How long the session's key has been seen absent without a break (0 when present at the last look)."""
        state = self._sessions.get(session)
        return 0.0 if state is None or state.absent_since is None else now - state.absent_since

    def lost_detail(self, session: str, now: float) -> str:
        return f"session {session} has had no liveness key for {self.absent_for(session, now):.1f} s"

    def lost_reason(self, session: str, now: float) -> str:
        """The stale reason of a book or key whose session is lost: `ingest_lost: <lost_detail>`."""
        return f"{INGEST_LOST}: {self.lost_detail(session, now)}"


@dataclass(frozen=True, slots=True)
class IngestLiveness:
    """What a liveness key says besides "alive": which instance holds the session and how its subscriptions
    went, so `bookstream status` can show a degraded ingest (some topics rejected) without asking ingest."""

    instance: str
    subscribed: int | None = None
    rejected: tuple[str, ...] = ()

    def encode(self) -> bytes:
        return orjson.dumps({"instance": self.instance, "subscribed": self.subscribed, "rejected": self.rejected})

    @classmethod
    def decode(cls, raw: bytes | str) -> IngestLiveness:
        """The key's value; a bare instance name (as ingest wrote before the value was JSON) is understood."""
        try:
            value: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            value = None
        if not isinstance(value, dict):
            return cls(raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw)
        subscribed, rejected = value.get("subscribed"), value.get("rejected")
        return cls(str(value.get("instance", "")), subscribed if type(subscribed) is int else None,
                   tuple(str(topic) for topic in rejected) if isinstance(rejected, list) else ())
