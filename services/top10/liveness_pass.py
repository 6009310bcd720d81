"""The liveness pass of top10: every key served, its ingest session checked, the keys of lost sessions marked.

What the pass is for is the keys nobody will write again: their session is gone, so no snapshot comes to
turn them `stale`. Those are exactly the keys this instance may not have written itself: in a scaled group
any member writes any key (the last write may be another member's, and that member may be gone with the
session), and after a restart this instance has written nothing yet. Remembering each key's session from
our own writes would leave such a key `live` for good, so the pass reads the `session` of every key it
serves, one pipelined HMGET per key per pass. Every instance does it for every key, which the marking
script (mark_stale.lua: only while the key still holds that session's snapshot) makes harmless.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from services.core.keys import Keys
from services.core.liveness import INGEST_LOST, SessionTracker
from services.runtime.logs import EventLog
from services.runtime.redis_client import RedisClient, sessions_alive
from services.top10 import metrics
from services.top10.liveness import keys_to_mark, marked_per_session, read_keys
from services.top10.report import Report
from services.top10.scripts import MARK_STALE, mark_stale_call, run_pipelined

log = EventLog("top10")


class LivenessPass:
    def __init__(self, redis: RedisClient, keys: Keys, sessions: SessionTracker, symbols: Callable[[], list[str]],
                 report: Report) -> None:
        """`symbols()` are the symbols served now; `sessions` is shared with the writes (a snapshot of a lost
        session is written stale)."""
        self._redis, self._keys, self._sessions, self._symbols, self._report = redis, keys, sessions, symbols, report

    async def check(self) -> bool:
        """One pass; False when there was nothing to ask Redis."""
        symbols = self._symbols()
        if not symbols:
            return False
        async with self._redis.pipeline(transaction=False) as pipe:
            for symbol in symbols:
                pipe.hmget(self._keys.top10(symbol), "session", "status")
            read = read_keys(symbols, await pipe.execute(raise_on_error=False))
        for name in read.invalid_sessions:
            self._report.invalid_name("key_session", name)
        keys = read.keys
        sessions = self._sessions.watch({key.session for key in keys.values()}, time.monotonic())
        if not sessions:
            return True
        alive = await sessions_alive(self._redis, self._keys, sessions)
        now = time.monotonic()
        changes = self._sessions.observe(alive, now)
        for session in changes.lost:
            metrics.SESSIONS_LOST.inc()
            log.warning("session_lost", session=session, keys=sum(key.session == session for key in keys.values()),
                        absent_for_s=round(self._sessions.absent_for(session, now), 1))
        for session in changes.back:
            log.info("session_back", session=session, hint="its keys turn live with their next snapshot")
        marks = keys_to_mark(keys, self._sessions.lost)
        if not marks:
            return True
        reasons = {session: self._sessions.lost_reason(session, now) for _, session in marks}
        calls = [mark_stale_call(self._keys.top10(symbol), symbol, session, reasons[session])
                 for symbol, session in marks]
        marked = marked_per_session(marks, await run_pipelined(self._redis, MARK_STALE, calls))
        self._report.sessions_marked(INGEST_LOST, marked, reasons)
        return True
