"""ingest assembled: the feed, the publisher and the control reader, run until stopped, plus /healthz.

On stop the feed closes its session (gap markers included), then the publisher gets `DRAIN_TIMEOUT`
seconds to append everything still buffered; what Redis could not take by then is lost, which is an error
and exit code `EXIT_ENTRIES_LOST`. If the publisher, the control reader or the heartbeat ever dies of a
bug, the process stops with exit code 1 rather than carrying on half-alive: an orchestrator restarts a
dead process, not a silently stuck one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from services.core.keys import Keys
from services.ingest import control, liveness, metrics, publisher
from services.ingest.control import ControlReader
from services.ingest.feed import Feed
from services.ingest.liveness import Heartbeat
from services.ingest.publisher import CALL_TIMEOUT, Publisher
from services.ingest.recorder import Recorder
from services.runtime.config import Settings
from services.runtime.dependency import DependencyHealth
from services.runtime.logs import EventLog
from services.runtime.redis_client import connect
from services.runtime.redis_wire import open_wire

DRAIN_TIMEOUT: Final = 5.0
STEP_TIMEOUT: Final = 2.0
"""How long a shutdown step after the drain (tasks ending, connections closing) may take: each is
instant unless something hangs, and a hung one must not make a SIGTERM cost a SIGKILL."""
REDIS_SOCKET_TIMEOUT: Final = 5.0
REDIS_CONNECT_TIMEOUT: Final = 2.0
REDIS_OPERATIONS: Final = (publisher.OPERATION, control.OPERATION, liveness.OPERATION)
EXIT_ENTRIES_LOST: Final = 3
"""Exit code of a stop that had to give up entries Redis never took (documented in `bookstream ingest --help`)."""


@dataclass(frozen=True, slots=True)
class IngestOptions:
    """Command-line options of `bookstream ingest` beyond the shared settings."""

    record: Path | None = None
    record_rotate_bytes: int = 0
    record_rotate_seconds: float = 0.0
    extra_tables: tuple[str, ...] = ()


class IngestService:
    def __init__(self, settings: Settings, options: IngestOptions) -> None:
        self._settings = settings
        self._log = log = EventLog("ingest")
        keys = Keys(settings.key_prefix)
        # The control and heartbeat loops share the services' redis-py client (no retries: they retry on
        # their own terms). The publisher has its own lean connection (RedisWire, or ClusterWire on a
        # cluster; no retries either:
        # re-sending a batch Redis may already have applied would duplicate entries; it retries itself,
        # after checking what landed).
        self._redis = connect(settings.redis_url, REDIS_SOCKET_TIMEOUT, f"ingest:{settings.instance_name}:control")
        self._redis_health = DependencyHealth("redis", log, metrics.REDIS_ERRORS.labels, metrics.REDIS_UP.labels)
        publish_wire = open_wire(settings.redis_url, CALL_TIMEOUT, f"ingest:{settings.instance_name}",
                                 REDIS_CONNECT_TIMEOUT)
        self.publisher = Publisher(publish_wire, keys, settings.ingest_buffer_frames,
                                   settings.stream_maxlen, self._redis_health, log)
        self.recorder = None if options.record is None else Recorder(
            options.record, options.record_rotate_bytes, options.record_rotate_seconds)
        self.feed = Feed(settings, self.publisher, self.recorder, options.extra_tables, log)
        self.control = ControlReader(self._redis, keys, settings.symbols, self.feed, settings.resubscribe_interval,
                                     self._redis_health, log)
        self.heartbeat = Heartbeat(self._redis, keys, settings.instance_name, self.feed, self.publisher,
                                   self._redis_health, log)

    async def main(self, stop: asyncio.Event) -> int:
        self._log.info("ingest_starting", symbols=len(self._settings.symbols), l2_table=self._settings.l2_table,
                       buffer_entries=self.publisher.capacity, stream_maxlen=self._settings.stream_maxlen,
                       record=self.recorder.path if self.recorder else None)
        publishing = asyncio.create_task(self.publisher.run(), name="publisher")
        controlling = asyncio.create_task(self.control.run(), name="control")
        beating = asyncio.create_task(self.heartbeat.run(), name="heartbeat")
        feeding = asyncio.create_task(self.feed.run(stop), name="feed")
        code = 0
        try:
            await asyncio.wait((publishing, controlling, beating, feeding), return_when=asyncio.FIRST_COMPLETED)
            for task in (publishing, controlling, beating):
                if task.done():
                    self._log.error("task_died", task=task.get_name(), error=repr(task.exception()))
                    code = 1
            stop.set()
            await feeding
        finally:
            # The liveness key stops being renewed here and expires by itself; the stop's gap markers are
            # what tells consumers, at once, that the session ended.
            controlling.cancel()
            beating.cancel()
            self.publisher.close()
            await asyncio.wait((publishing,), timeout=DRAIN_TIMEOUT)
            publishing.cancel()
            dropped = self.publisher.drop_all("stop")  # whatever Redis could not take in time, logged and counted
            if dropped and not code:
                code = EXIT_ENTRIES_LOST
                self._log.error("stopped_with_loss", entries=dropped, exit_code=code,
                                why="Redis did not take them within the drain timeout",
                                drain_timeout_s=DRAIN_TIMEOUT)
            await self._bounded("tasks_ended", asyncio.gather(publishing, controlling, beating, return_exceptions=True))
            self.publisher.close_connection()
            await self._bounded("redis_closed", self._redis.aclose())
            if self.recorder is not None:
                self.recorder.close()
        return code

    async def _bounded(self, step: str, awaitable: Awaitable[object]) -> None:
        """A step of the shutdown that must not hold the exit for ever: given up after STEP_TIMEOUT, said so."""
        try:
            async with asyncio.timeout(STEP_TIMEOUT):
                await awaitable
        except TimeoutError:
            self._log.warning("shutdown_step_timed_out", step=step, timeout_s=STEP_TIMEOUT)

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Unhealthy when disconnected longer than HEALTH_STALE_AFTER, when the venue rejected every topic,
        or when Redis is not answering; `degraded` lists the rejected topics of a session that has others."""
        problems: list[str] = []
        since = self.feed.disconnected_since
        if since is not None and time.monotonic() - since > self._settings.health_stale_after:
            problems.append(f"websocket disconnected for {time.monotonic() - since:.0f} s "
                            f"(HEALTH_STALE_AFTER={self._settings.health_stale_after:g})")
        subscription_problem, rejected = self.feed.subscription_problem()
        if subscription_problem is not None:
            problems.append(subscription_problem)
        redis = self._redis_health.describe(REDIS_OPERATIONS)
        problems += self._redis_health.problems(REDIS_OPERATIONS)
        detail: dict[str, Any] = {
            "problems": problems, "connection": self.feed.describe(), "redis": redis,
            "buffer": {"entries": len(self.publisher), "capacity": self.publisher.capacity,
                       "full": self.publisher.full},
            "liveness": self.heartbeat.describe(), "exactly_once_fence": self.publisher.fence}
        if rejected and subscription_problem is None:
            detail["degraded"] = rejected
        self.heartbeat.eviction.describe(detail)
        return not problems, detail
