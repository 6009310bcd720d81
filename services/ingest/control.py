"""The control stream: resubscribe requests from l2builder and operators, applied at a bounded rate.

`XADD <prefix>:control * op resubscribe symbol XBTUSD [reason ...] [requested_by ...]` asks ingest for a
fresh partial of one symbol's L2 book. Requests are read with a plain XREAD (nothing is consumed, so an
operator can read the same history), starting at the stream's end at start-up: a new connection gives
every symbol a fresh partial anyway, so older requests are moot. A symbol is resubscribed at most once
per RESUBSCRIBE_INTERVAL: a request arriving sooner is deferred to the end of the interval, and a request
for a symbol already waiting joins it, so no request is lost and none repeats work.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final

from redis.exceptions import RedisError

from services.core.keys import CONTROL_MAXLEN, Keys
from services.ingest import metrics
from services.ingest.feed import Feed
from services.runtime.dependency import DependencyHealth
from services.runtime.logs import EventLog
from services.runtime.redis_client import RedisClient

READ_COUNT: Final = 100
MAX_BLOCK: Final = 1.0
RETRY_DELAY: Final = 0.5
OPERATION: Final = "control"


class ResubscribeSchedule:
    """When each requested symbol may be resubscribed next; no I/O, times in monotonic seconds."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._due: dict[str, float] = {}

    def request(self, symbol: str, now: float) -> str:
        """Schedule `symbol`; returns "scheduled", "deferred" (rate-limited) or "merged" (already waiting)."""
        if symbol in self._due:
            return "merged"
        earliest = self._last.get(symbol, -self.interval) + self.interval
        self._due[symbol] = max(now, earliest)
        return "scheduled" if earliest <= now else "deferred"

    def take_due(self, now: float) -> list[str]:
        """The symbols whose time has come, now counted as resubscribed."""
        due = [symbol for symbol, at in self._due.items() if at <= now]
        for symbol in due:
            del self._due[symbol]
            self._last[symbol] = now
        return due

    def next_due(self) -> float | None:
        return min(self._due.values(), default=None)


class ControlReader:
    """Follows `<prefix>:control` and asks the feed for the resubscriptions it requests."""

    def __init__(self, redis: RedisClient, keys: Keys, symbols: tuple[str, ...], feed: Feed, interval: float,
                 redis_health: DependencyHealth, log: EventLog) -> None:
        self._redis, self._stream, self._symbols, self._feed = redis, keys.control, frozenset(symbols), feed
        self._schedule = ResubscribeSchedule(interval)
        self._health, self._log = redis_health, log

    async def run(self) -> None:
        """Read and apply requests until cancelled; Redis failures are retried, never raised."""
        last_id: str | None = None
        while True:
            try:
                if last_id is None:
                    last_id = await self._end_of_stream()
                    self._log.info("control_following", stream=self._stream, after=last_id)
                entries = await self._read(last_id)
                self._health.succeeded(OPERATION)
                if entries:
                    last_id = entries[-1][0].decode()
                    await self._redis.xtrim(self._stream, maxlen=CONTROL_MAXLEN, approximate=True)
            except RedisError as exc:
                self._health.failed(OPERATION, exc)
                await asyncio.sleep(RETRY_DELAY)
                continue
            now = time.monotonic()
            for stream_id, fields in entries:
                self._request(stream_id.decode(), fields, now)
            due = self._schedule.take_due(now)
            # In as few requests as the venue allows: a new owner asks for many partials at once.
            for symbol, outcome in (await self._feed.resubscribe_many(due) if due else {}).items():
                metrics.RESUBSCRIBES.labels(outcome).inc()
                if outcome != "sent":
                    self._log.info("resubscribe_skipped", symbol=symbol, outcome=outcome)

    async def _end_of_stream(self) -> str:
        last: Any = await self._redis.xrevrange(self._stream, count=1)
        return last[0][0].decode() if last else "0-0"

    async def _read(self, last_id: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
        next_due = self._schedule.next_due()
        block = MAX_BLOCK if next_due is None else min(MAX_BLOCK, max(0.001, next_due - time.monotonic()))
        reply: Any = await self._redis.xread({self._stream: last_id}, count=READ_COUNT, block=int(block * 1000))
        return list(reply[0][1]) if reply else []

    def _request(self, stream_id: str, fields: dict[bytes, bytes], now: float) -> None:
        text = {key.decode(errors="replace"): value.decode(errors="replace") for key, value in fields.items()}
        op, symbol = text.get("op"), text.get("symbol", "")
        if op != "resubscribe" or symbol not in self._symbols:
            metrics.RESUBSCRIBES.labels("ignored").inc()
            self._log.warning("control_request_ignored", id=stream_id, op=op, symbol=symbol,
                              why="unknown op" if op != "resubscribe" else "symbol not subscribed")
            return
        decision = self._schedule.request(symbol, now)
        if decision != "scheduled":
            metrics.RESUBSCRIBES.labels(decision).inc()
        self._log.info("resubscribe_requested", id=stream_id, symbol=symbol, decision=decision,
                       reason=text.get("reason", ""), requested_by=text.get("requested_by", ""))
