"""ingest's heartbeat in Redis: the session's liveness key, the symbol set, and proof Redis kept what it took.

Once per `INGEST_ALIVE_RENEW`, and at once when a session connects, on the control connection (the
publisher's batches never queue behind it):

- the liveness key of the current session is set again with its short TTL, as long as the session is
  healthy; consumers treat its absence as "no ingest" (killed, cut off, or its venue silent);
- the symbols ingest published are added to `<prefix>:symbols` again (SADD is idempotent), so a Redis
  that lost the set (FLUSHALL, a failover, eviction) learns it back within a second;
- every stream ingest appended to is checked against what Redis says it was ever given
  (`entries-added`): a stream that vanished or holds fewer entries than ingest appended since the last
  look lost history, and its symbol is resubscribed so consumers get a fresh partial to resync from;
- about every `EVICTION_CHECK_INTERVAL` seconds, whether Redis runs with an evicting `maxmemory-policy`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any, Final

from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.common.keys import INGEST_ALIVE_RENEW, INGEST_ALIVE_TTL_MS, Keys
from services.common.logs import EventLog
from services.common.redis_client import EvictionWatch
from services.ingest import metrics
from services.ingest.connection import Feed
from services.ingest.publisher import Publisher, RedisStatus

SCRIPT: Final = (Path(__file__).parent / "stream_check.lua").read_text()
MISSING: Final = -1
UNKNOWN: Final = -2


class StreamWatch:
    """Tells, from what ingest appended and what Redis says a stream was given, whether entries were lost.

    Redis's `entries-added` only grows (others may append too, nobody takes away), so between two looks it
    must have grown by at least what ingest appended in between; less means Redis lost entries. The batch
    in flight during a look makes "in between" uncertain, and the check takes the side that never raises
    a false alarm: ingest's appends before a look count only once acknowledged (`acked_before`, taken
    before asking), and those a look may already have seen count in full, in flight included
    (`sent_after`, taken once the answer is in).
    """

    def __init__(self) -> None:
        self._last: dict[str, tuple[int, int]] = {}

    def check(self, stream: str, acked_before: int, entries_added: int, sent_after: int) -> int | None:
        """The least `entries-added` the stream should have shown when it lost entries, else None.

        `entries_added` is MISSING for a stream that does not exist, UNKNOWN when Redis cannot tell (then
        the stream is not judged).
        """
        if entries_added == UNKNOWN:
            self._last.pop(stream, None)
            return None
        found = max(entries_added, 0)
        last = self._last.get(stream)
        self._last[stream] = (found, sent_after)
        expected = acked_before if last is None else last[0] + acked_before - last[1]
        return expected if found < expected else None


class Heartbeat:
    """The once-a-second task described above; Redis failures are reported and retried, never raised."""

    def __init__(self, redis: Redis, keys: Keys, instance: str, feed: Feed, publisher: Publisher,
                 status: RedisStatus, log: EventLog) -> None:
        self._redis, self._keys, self._instance = redis, keys, instance
        self._feed, self._publisher, self._status, self._log = feed, publisher, status, log
        self._check_streams = redis.register_script(SCRIPT)
        self._streams = StreamWatch()
        self.eviction = EvictionWatch(log)
        self.renewed: tuple[str, float] | None = None
        """(session, monotonic time) of the last liveness write."""

    async def run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.tick(started)
            except (RedisError, OSError) as exc:
                self._status.failed(exc)
            else:
                self._status.succeeded()
            connected = self._feed.connected
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(connected.wait(), max(0.0, INGEST_ALIVE_RENEW - (time.monotonic() - started)))
            connected.clear()

    def describe(self) -> dict[str, Any]:
        if self.renewed is None:
            return {"key": None}
        session, at = self.renewed
        return {"key": self._keys.ingest_alive(session), "renewed_s_ago": round(time.monotonic() - at, 3)}

    async def tick(self, now: float) -> None:
        session = self._feed.healthy_session()
        if session is not None:
            await self._redis.set(self._keys.ingest_alive(session.id), self._instance, px=INGEST_ALIVE_TTL_MS)
            self.renewed = (session.id, now)
        symbols = self._publisher.announced
        if symbols:
            added = int(await self._redis.sadd(self._keys.symbols, *sorted(symbols)))
            if added:
                metrics.REDIS_LOST.labels("symbols").inc(added)
                self._log.warning("symbols_reannounced", added=added, symbols=len(symbols))
        await self._check_streams_kept(dict(self._publisher.appended))
        await self.eviction.check(self._redis, now)

    async def _check_streams_kept(self, acked: dict[str, int]) -> None:
        if not acked:
            return
        streams = sorted(acked)
        replies: Any = await self._check_streams(keys=streams)
        sent = dict(self._publisher.appended)
        for stream, count in self._publisher.unconfirmed_by_stream().items():
            sent[stream] = sent.get(stream, 0) + count
        for stream, entries_added in zip(streams, replies, strict=True):
            expected = self._streams.check(stream, acked[stream], int(entries_added), sent.get(stream, 0))
            if expected is None:
                continue
            metrics.REDIS_LOST.labels("stream").inc()
            symbol = self._keys.symbol_of(stream)
            is_l2 = stream == self._keys.l2_stream(symbol)
            outcome = await self._feed.resubscribe(symbol) if is_l2 else "not_l2"
            if is_l2:
                metrics.RESUBSCRIBES.labels(outcome).inc()
            self._log.warning("stream_lost", stream=stream, entries_added=max(int(entries_added), 0),
                              expected_at_least=expected, resubscribe=outcome)
