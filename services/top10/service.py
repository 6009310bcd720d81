"""The top10 service: every `<prefix>:ob10:{SYM}` stream, read in group `top10`, into `<prefix>:top10:{SYM}`.

One consumer per process. The read loop blocks on the activity stream and reads the streams it names
(services.core.activity; on a cluster, one XREADGROUP per slot group), writes the newest snapshot of each
symbol through the compare-and-set script, and acknowledges the batch once the writes succeeded. The
housekeeping loop joins the streams of newly seen symbols, claims entries that dead consumers left pending,
and removes members long gone. Any instance may process any entry: the script, not the order of processing,
decides what a key holds, so instances can be added, killed or restarted at will. The liveness loop marks
`stale` the keys whose ingest session is gone (liveness_pass.py); every instance does it for every key, which
the marking script makes harmless. A gap marker read from a stream marks its key `stale` the same way, unless
the key holds a snapshot from after the gap (mark_gap.lua).

Redis being down is a state, not a crash: each loop logs, counts, backs off and retries, and /healthz fails
once no Redis call has succeeded for HEALTH_STALE_AFTER seconds. Redis losing state (FLUSHALL, a failover
to a replica behind, eviction) is repaired: a vanished group is created again on every stream it served,
and the next snapshots rewrite the keys.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final

from redis.exceptions import RedisError, ResponseError

from services.core.backoff import Backoff
from services.core.keys import SESSION_LOST_AFTER, TOP10_GROUP, Keys
from services.core.liveness import SessionTracker
from services.runtime.config import Settings
from services.runtime.dependency import DependencyHealth
from services.runtime.health import safe_error
from services.runtime.logs import EventLog
from services.runtime.redis_client import EvictionWatch, connect
from services.runtime.redis_wire import open_wire
from services.top10 import group, metrics
from services.top10.liveness_pass import LivenessPass
from services.top10.reader import READ_BLOCK_MS, Reader
from services.top10.report import Report
from services.top10.upkeep import GroupUpkeep

SOCKET_TIMEOUT: Final = READ_BLOCK_MS / 1000 + 4.0
"""Longer than the block: redis-py ends a read that outlasts the socket timeout with an error."""
HOUSEKEEPING_INTERVAL: Final = 1.0
LIVENESS_INTERVAL: Final = 1.0
"""How often the sessions behind the keys are checked: the contract says at least once a second."""
SHUTDOWN_DRAIN_SECONDS: Final = 5.0
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 5.0

log = EventLog("top10")


class Top10Service:
    """One member of group `top10`; `main` runs it until `stop` is set, `health` backs /healthz."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        keys = Keys(settings.key_prefix)
        self._consumer = settings.instance_name
        # No retries inside redis-py: a retried XREADGROUP would read past entries that the failed attempt
        # may already have moved to our pending list. The loops below retry, re-reading that list first.
        self._redis = connect(settings.redis_url, SOCKET_TIMEOUT, f"top10:{self._consumer}")
        # The read loop's own connection (see `Reader.process_new`); the other operations use `_redis`.
        self._wire = open_wire(settings.redis_url, SOCKET_TIMEOUT, f"top10:{self._consumer}")
        report = Report(settings.timestamp_tolerance)
        self._sessions = SessionTracker()
        self._upkeep = GroupUpkeep(self._redis, keys, self._consumer, report)
        self._reader = Reader(self._redis, self._wire, keys, self._consumer,
                              int(settings.timestamp_tolerance * 1_000_000), self._sessions,
                              lambda: self._upkeep.symbols, report)
        self._liveness = LivenessPass(self._redis, keys, self._sessions, lambda: list(self._upkeep.symbols),
                                      report)
        self._eviction = EvictionWatch(log)
        self._redis_health = DependencyHealth("redis", log, metrics.REDIS_ERRORS.labels, metrics.REDIS_UP.labels)
        self._read_ok_at = time.monotonic()

    async def main(self, stop: asyncio.Event) -> int:
        log.info("consumer_started", consumer=self._consumer, group=TOP10_GROUP,
                 claim_idle=self._settings.claim_idle, consumer_expiry=self._settings.consumer_expiry,
                 timestamp_tolerance=self._settings.timestamp_tolerance, session_lost_after=SESSION_LOST_AFTER)
        loops = [asyncio.create_task(self._consume(), name="consume"),
                 asyncio.create_task(self._housekeep(), name="housekeeping"),
                 asyncio.create_task(self._watch_liveness(), name="liveness")]
        stopping = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([*loops, stopping], return_when=asyncio.FIRST_COMPLETED)
        for task in (*loops, stopping):
            task.cancel()
        await asyncio.gather(*loops, stopping, return_exceptions=True)
        crashed = [task for task in loops if task in done]
        for task in crashed:
            try:
                task.result()
            except BaseException:
                log.error("loop_crashed", exc_info=True, loop=task.get_name())
        self._wire.close()
        await self._leave()
        await self._redis.aclose()
        return 1 if crashed else 0

    def health(self) -> tuple[bool, dict[str, Any]]:
        now = time.monotonic()
        since_ok = now - self._redis_health.last_ok_at
        # The reads have a connection of their own: housekeeping succeeding proves nothing about them.
        since_read = now - self._read_ok_at if self._upkeep.symbols else 0.0
        detail: dict[str, Any] = {
            "consumer": self._consumer, "group": TOP10_GROUP, "streams": len(self._upkeep.symbols),
            "redis_ok_seconds_ago": round(since_ok, 3), "read_ok_seconds_ago": round(since_read, 3),
            "sessions_lost": len(self._sessions.lost), "last_error": self._redis_health.last_error,
            "redis": self._redis_health.describe()}
        self._eviction.describe(detail)
        return max(since_ok, since_read) <= self._settings.health_stale_after, detail

    async def _consume(self) -> None:
        """Read, write, acknowledge; our own pending entries first after a start or a failed read."""
        # A previous process under the same name may have left entries pending.
        own_pending_first = True
        backoff = Backoff(BACKOFF_FIRST, BACKOFF_MAX)
        while True:
            if not self._upkeep.symbols:
                self._upkeep.joined.clear()
                await self._upkeep.joined.wait()
                self._read_ok_at = time.monotonic()
            try:
                if own_pending_first:
                    own_pending_first = await self._reader.process_own_pending()
                else:
                    await self._reader.process_new()
            except RedisError as exc:
                # The failed read may have been served: its entries are pending under our name, unseen,
                # like those of a batch not acknowledged yet. Re-reading our pending list covers both.
                own_pending_first = True
                self._reader.read_failed()
                await self._redis_failed("read", exc, backoff)
            else:
                self._read_ok_at = time.monotonic()
                self._redis_ok(("read",), backoff)

    async def _housekeep(self) -> None:
        """Join new streams, claim abandoned entries and remove departed consumers, every second."""
        backoff = Backoff(BACKOFF_FIRST, BACKOFF_MAX)
        loop = asyncio.get_running_loop()
        # Departed consumers are rare and harmless, so look for them a few times per expiry period only.
        janitor_interval = min(max(self._settings.consumer_expiry / 4, HOUSEKEEPING_INTERVAL), 15.0)
        next_janitor = 0.0
        while True:
            done: list[str] = []
            operation = "eviction_check"
            try:
                await self._eviction.check(self._redis, time.monotonic())
                done.append(operation)
                operation = "discover"
                await self._upkeep.join_new_streams()
                done.append(operation)
                operation = "claim"
                async for entries in self._upkeep.abandoned(self._settings.claim_idle):
                    await self._reader.process(entries, "claimed")
                done.append(operation)
                if loop.time() >= next_janitor:
                    operation = "remove_consumers"
                    await self._upkeep.remove_departed(self._settings.consumer_expiry)
                    done.append(operation)
                    next_janitor = loop.time() + janitor_interval
            except RedisError as exc:
                # The steps before it prove nothing: the eviction check, say, asks Redis only now and then.
                await self._redis_failed(operation, exc, backoff)
                continue
            self._redis_ok(tuple(done), backoff)
            await asyncio.sleep(HOUSEKEEPING_INTERVAL)

    async def _watch_liveness(self) -> None:
        """Every second: the sessions behind our keys, their liveness keys, the keys of lost sessions marked."""
        backoff = Backoff(BACKOFF_FIRST, BACKOFF_MAX)
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                asked_redis = await self._liveness.check()
            except RedisError as exc:
                await self._redis_failed("liveness", exc, backoff)
                continue
            if asked_redis:  # a check with no key to look at proves nothing about Redis (/healthz relies on it)
                self._redis_ok(("liveness",), backoff)
            await asyncio.sleep(max(0.0, LIVENESS_INTERVAL - (loop.time() - started)))

    async def _leave(self) -> None:
        """At shutdown: process what a cancelled read may have left pending for us, then leave the group.

        Whatever cannot be done here (Redis down, no time left) stays pending under our name, and another
        instance claims it after CLAIM_IDLE.
        """
        streams = self._upkeep.streams
        if not streams:
            return
        try:
            async with asyncio.timeout(SHUTDOWN_DRAIN_SECONDS):
                await self._reader.acknowledge_written()
                while await self._reader.process_own_pending():
                    pass
                left = await group.leave(self._redis, streams, self._consumer)
            log.info("group_left", consumer=self._consumer, streams=left)
        except (RedisError, TimeoutError) as exc:  # TimeoutError: the drain's own deadline
            log.warning("group_leave_failed", consumer=self._consumer, error=safe_error(exc))

    def _redis_ok(self, operations: tuple[str, ...], backoff: Backoff) -> None:
        for operation in operations:
            self._redis_health.succeeded(operation)
        backoff.reset()

    async def _redis_failed(self, operation: str, exc: BaseException, backoff: Backoff) -> None:
        """Note the failure (logged once per change, counted every time) and wait out the loop's backoff."""
        self._redis_health.failed(operation, exc)
        delay = backoff.next_delay()
        if isinstance(exc, ResponseError) and str(exc).startswith(("NOGROUP", "UNBLOCKED")):
            # A stream or its group was deleted (FLUSHALL, a failover to a replica behind, eviction).
            await self._upkeep.recreate_groups(operation)
        await asyncio.sleep(delay)
