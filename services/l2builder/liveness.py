"""Which ingest sessions are lost, from repeated looks at their liveness keys, without I/O.

ingest renews `Keys.ingest_alive(session)` while its websocket session is healthy and lets it expire when
the session ends, however it ends (a `kill -9` writes no gap marker). A key seen absent once proves
nothing: a new session's first entries may reach a consumer before its first liveness write. So a session
is lost only once its key has been seen absent continuously for `lost_after` seconds, and a single look
that finds it present starts the count again. A session without entries for a while is not lost as long
as its key is renewed: a quiet symbol is not a fault.
"""

from __future__ import annotations

from collections.abc import Mapping


class SessionWatch:
    """The sessions of the live books and since when each has been seen without its liveness key."""

    def __init__(self, lost_after: float) -> None:
        self.lost_after = lost_after
        self._absent_since: dict[str, float] = {}

    def observe(self, present: Mapping[str, bool], now: float) -> set[str]:
        """Record one look at the keys of `present` (every session still watched); return the lost ones.

        Sessions left out are forgotten: no live book depends on them any more.
        """
        self._absent_since = {session: since for session, since in self._absent_since.items()
                              if session in present and not present[session]}
        lost = set()
        for session, alive in present.items():
            if alive:
                continue
            since = self._absent_since.setdefault(session, now)
            if now - since >= self.lost_after:
                lost.add(session)
        return lost

    def absent_for(self, session: str, now: float) -> float:
        """How long the session's key has been seen absent (0 when it was present at the last look)."""
        since = self._absent_since.get(session)
        return 0.0 if since is None else now - since
