"""ingest's heartbeat in Redis: the session's liveness key, the symbol set, and proof Redis kept what it took.

Once per `INGEST_ALIVE_RENEW`, and at once when a session connects, on the control connection (the
publisher's batches never queue behind it):

- the liveness key of the current session is set again with its short TTL, as long as the key can say
  "data is landing": the venue was heard from (a frame or a `pong`) within `HEARD_WITHIN`, and the
  publisher is not holding entries that Redis has failed to acknowledge for `PUBLISH_STALL_AFTER`
  (`renewal_withheld`). Consumers treat its absence as "no ingest" (killed, cut off, its venue silent, its
  publishing stuck), so each of those ends in a stale book within HEALTH_STALE_AFTER;
- the symbols ingest published are added to `<prefix>:symbols` again (SADD is idempotent), so a Redis
  that lost the set (FLUSHALL, a failover, eviction) learns it back within a second;
- every stream ingest appended to is checked against what Redis says it was ever given
  (`entries-added`): a stream that vanished or holds fewer entries than ingest appended since the last
  look lost history, and that stream's topic (L2 or orderBook10) is resubscribed so its consumers get a
  fresh partial to resync from;
- about every `EVICTION_CHECK_INTERVAL` seconds, whether Redis runs with an evicting `maxmemory-policy`.

On a cluster each of these keys lives in its own slot and the client routes each command; the stream
check runs once per slot (a script's keys must share one), all in one pipeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, Final

from redis.exceptions import RedisError

from services.core.bitmex import ORDERBOOK10_TABLE
from services.core.keys import INGEST_ALIVE_RENEW, INGEST_ALIVE_TTL_MS, Keys
from services.core.liveness import IngestLiveness
from services.ingest import metrics
from services.ingest.feed import Feed
from services.ingest.publisher import Publisher
from services.ingest.session import TopicState
from services.runtime.dependency import DependencyHealth
from services.runtime.logs import EventLog
from services.runtime.redis_client import EvictionWatch, RedisClient, slot_groups
from services.runtime.scripts import LuaScript

STREAM_CHECK: Final = LuaScript.beside(__file__, "stream_check.lua")
OPERATION: Final = "heartbeat"
UNKNOWN: Final = -1
"""What the stream check answers for a stream whose `entries-added` Redis cannot tell."""
HEARD_WITHIN: Final = 3.0
"""The venue must have said something this recently for the key to be renewed. With a ping after
feed.PING_AFTER of silence, a healthy quiet venue is heard again long before; a silent one has its
key stop being renewed within this, expire INGEST_ALIVE_TTL_MS later, and be called lost by consumers
SESSION_LOST_AFTER (plus their check interval) after that: inside HEALTH_STALE_AFTER."""
PUBLISH_STALL_AFTER: Final = 3.0
"""How long the publisher may hold entries with no acknowledged batch before the key stops being renewed:
a session whose data is not landing must not look alive, whatever its websocket says."""


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

        `entries_added` is 0 for a stream that does not exist, UNKNOWN when Redis cannot tell (then the
        stream is not judged).
        """
        if entries_added == UNKNOWN:
            self._last.pop(stream, None)
            return None
        found = entries_added
        last = self._last.get(stream)
        self._last[stream] = (found, sent_after)
        expected = acked_before if last is None else last[0] + acked_before - last[1]
        return expected if found < expected else None


def renewal_withheld(quiet_s: float | None, stalled_s: float) -> str | None:
    """Why the liveness key must not be renewed now, or None when it must.

    `quiet_s`: how long the venue has said nothing on the connected session (None: not connected);
    `stalled_s`: how long the publisher has held entries without an acknowledged batch (0 when it holds none).
    """
    if quiet_s is None:
        return "not_connected"
    if quiet_s >= HEARD_WITHIN:
        return "venue_silent"
    if stalled_s >= PUBLISH_STALL_AFTER:
        return "publishing_stalled"
    return None


class Heartbeat:
    """The once-a-second task described above; Redis failures are reported and retried, never raised."""

    def __init__(self, redis: RedisClient, keys: Keys, instance: str, feed: Feed, publisher: Publisher,
                 redis_health: DependencyHealth, log: EventLog) -> None:
        self._redis, self._keys, self._instance = redis, keys, instance
        self._feed, self._publisher, self._health, self._log = feed, publisher, redis_health, log
        self._streams = StreamWatch()
        self.eviction = EvictionWatch(log)
        self.renewed: tuple[str, float] | None = None
        """(session, monotonic time) of the last liveness write."""
        self.withheld: str | None = None
        """Why the current session's key is not being renewed (see `renewal_withheld`), None while it is."""
        self._withheld_from: str | None = None
        """The session whose withheld renewal was logged, until its renewal resumes."""

    async def run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.tick(started)
            except RedisError as exc:
                self._health.failed(OPERATION, exc)
            else:
                self._health.succeeded(OPERATION)
            connected = self._feed.connected
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(connected.wait(), max(0.0, INGEST_ALIVE_RENEW - (time.monotonic() - started)))
            connected.clear()

    def describe(self) -> dict[str, Any]:
        if self.renewed is None:
            return {"key": None, "withheld": self.withheld}
        session, at = self.renewed
        return {"key": self._keys.ingest_alive(session), "renewed_s_ago": round(time.monotonic() - at, 3),
                "withheld": self.withheld}

    async def tick(self, now: float) -> None:
        await self._renew(now)
        symbols = self._publisher.announced
        if symbols:
            added = int(await self._redis.sadd(self._keys.symbols, *sorted(symbols)))
            if added:
                metrics.REDIS_LOST.labels("symbols").inc(added)
                self._log.warning("symbols_reannounced", added=added, symbols=len(symbols))
        await self._check_streams_kept(dict(self._publisher.appended))
        await self.eviction.check(self._redis, now)

    async def _renew(self, now: float) -> None:
        current = self._feed.quiet()
        withheld = renewal_withheld(None if current is None else current[1], self._publisher.stalled_for(now))
        if current is None:
            self._withheld_from, self.withheld = None, withheld
            return
        session, quiet_s = current
        # Said once per change within a session: a disconnect is logged (and gap-marked) on its own.
        if withheld is not None and withheld != self.withheld:
            self._log.warning("liveness_withheld", session=session.id, why=withheld, quiet_s=round(quiet_s, 3),
                              buffered=len(self._publisher))
            self._withheld_from = session.id
        elif withheld is None and self._withheld_from == session.id:
            self._log.info("liveness_renewed", session=session.id, was=self.withheld)
            self._withheld_from = None
        self.withheld = withheld
        if withheld is None:
            subscribed = len(session.topics_in(TopicState.SUBSCRIBED))
            value = IngestLiveness(self._instance, subscribed, tuple(self._feed.subscription_problem()[1]))
            await self._redis.set(self._keys.ingest_alive(session.id), value.encode(), px=INGEST_ALIVE_TTL_MS)
            self.renewed = (session.id, now)

    async def _check_streams_kept(self, acked: dict[str, int]) -> None:
        if not acked:
            return
        groups = slot_groups(self._redis, sorted(acked))
        streams = [stream for group in groups for stream in group]
        replies: list[Any] = []
        for group_replies in await STREAM_CHECK.run_each(self._redis, [(group, ()) for group in groups]):
            if isinstance(group_replies, Exception):
                raise group_replies
            replies += group_replies
        sent = dict(self._publisher.appended)
        for stream, count in self._publisher.unconfirmed_by_stream().items():
            sent[stream] = sent.get(stream, 0) + count
        for stream, entries_added in zip(streams, replies, strict=True):
            expected = self._streams.check(stream, acked[stream], int(entries_added), sent.get(stream, 0))
            if expected is None:
                continue
            metrics.REDIS_LOST.labels("stream").inc()
            symbol = self._keys.symbol_of(stream)
            # Only the book streams' consumers are bookstream's own, and resync from a fresh partial.
            if stream == self._keys.l2_stream(symbol):
                outcome = await self._feed.resubscribe(symbol)
            elif stream == self._keys.ob10_stream(symbol):
                outcome = await self._feed.resubscribe(symbol, ORDERBOOK10_TABLE)
            else:
                outcome = "not_a_book"
            if outcome != "not_a_book":
                metrics.RESUBSCRIBES.labels(outcome).inc()
            self._log.warning("stream_lost", stream=stream, entries_added=int(entries_added),
                              expected_at_least=expected, resubscribe=outcome)
