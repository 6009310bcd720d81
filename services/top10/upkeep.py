"""What top10's housekeeping keeps true of its place in group `top10`: streams joined, abandoned entries
taken over, departed members removed, groups Redis lost created again.

`symbols` (symbol -> ob10 stream) is what the read loop reads from: it is replaced, never changed in place,
so a read being built never sees it change. The group commands themselves are in group.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from redis.exceptions import RedisError

from services.core.entries import PendingEntry
from services.core.keys import SYMBOL_PATTERN, Keys
from services.core.text import as_text
from services.runtime.health import safe_error
from services.runtime.logs import EventLog
from services.runtime.redis_client import RedisClient
from services.top10 import group, metrics
from services.top10.report import SHOWN_SYMBOLS, Report

log = EventLog("top10")


class GroupUpkeep:
    def __init__(self, redis: RedisClient, keys: Keys, consumer: str, report: Report) -> None:
        self._redis, self._keys, self._consumer, self._report = redis, keys, consumer, report
        self.symbols: dict[str, str] = {}
        """symbol -> ob10 stream key, for every stream this consumer has joined."""
        self.joined = asyncio.Event()
        """Set whenever streams were joined: the read loop waits on it while there is none."""
        self._skipped: set[str] = set()

    @property
    def streams(self) -> list[str]:
        return list(self.symbols.values())

    async def join_new_streams(self) -> None:
        """Join the ob10 stream of every symbol in the symbol set not joined (or skipped) yet."""
        members = {as_text(member) for member in await self._redis.smembers(self._keys.symbols)}
        candidates = []
        for symbol in sorted(members - self.symbols.keys() - self._skipped):
            if SYMBOL_PATTERN.fullmatch(symbol):
                candidates.append(symbol)
            else:
                # Remembered, so that a name sitting in the set is counted once, not once a second.
                self._skipped.add(symbol)
                self._report.invalid_name("symbol_set", symbol)
        if not candidates:
            return
        refused = (await group.join(self._redis, [self._keys.ob10_stream(symbol) for symbol in candidates])).refused
        joined = []
        for symbol in candidates:
            reason = refused.get(self._keys.ob10_stream(symbol))
            if reason is None:
                joined.append(symbol)
            else:
                self._skip(symbol, reason)
        if not joined:
            return
        self.symbols = {**self.symbols, **{symbol: self._keys.ob10_stream(symbol) for symbol in joined}}
        metrics.STREAMS.set(len(self.symbols))
        self.joined.set()
        log.info("streams_joined", symbols=",".join(joined), streams=len(self.symbols))

    async def recreate_groups(self, operation: str) -> None:
        """After Redis said a group or stream is gone: create the group again on every stream we consume.

        The symbol set may be gone too (FLUSHALL), so the streams we know are joined again, not the set's:
        from id 0 with MKSTREAM, so the entries ingest writes from now on, and any it wrote since the loss,
        are read. The keys come back with the next snapshots; entries read twice are harmless to the script.
        """
        streams = self.streams
        if not streams:
            return
        try:
            joined = await group.join(self._redis, streams)
        except RedisError as exc:
            # The failing operation is retried after its backoff, and fails again into this.
            log.warning("group_recreate_failed", operation=operation, error=safe_error(exc))
            return
        if joined.refused:
            refused = {symbol for symbol, stream in self.symbols.items() if stream in joined.refused}
            self.symbols = {symbol: stream for symbol, stream in self.symbols.items() if symbol not in refused}
            metrics.STREAMS.set(len(self.symbols))
            for symbol in sorted(refused):
                self._skip(symbol, joined.refused[self._keys.ob10_stream(symbol)])
        if joined.created:
            metrics.REDIS_LOST.labels("group").inc(len(joined.created))
            symbols = [self._keys.symbol_of(stream) for stream in joined.created]
            log.warning("redis_state_lost", what="group", action="recreated", operation=operation,
                        streams=len(joined.created), symbols=",".join(symbols[:SHOWN_SYMBOLS]))

    async def abandoned(self, claim_idle: float) -> AsyncIterator[list[tuple[bytes, list[PendingEntry]]]]:
        """Take over the entries pending longer than `claim_idle`, whoever holds them: page by page, each
        page to be processed before the next is claimed."""
        min_idle_ms = int(claim_idle * 1000)
        async for page in group.claim_abandoned(self._redis, self.streams, self._consumer, min_idle_ms):
            self._report.trimmed(page.trimmed)
            if page.entries:
                claimed = sum(len(entries) for _, entries in page.entries)
                metrics.CLAIMED.inc(claimed)
                log.info("entries_claimed", entries=claimed, streams=len(page.entries), min_idle_ms=min_idle_ms)
                yield page.entries

    async def remove_departed(self, consumer_expiry: float) -> None:
        expiry_ms = int(consumer_expiry * 1000)
        for departure in await group.remove_departed(self._redis, self.streams, self._consumer, expiry_ms):
            metrics.CONSUMERS_REMOVED.inc()
            log.info("consumer_removed", consumer=departure.consumer, streams=departure.streams,
                     idle_ms=departure.idle_ms)

    def _skip(self, symbol: str, reason: str) -> None:
        """Leave a (valid) symbol of the set alone until restart, saying why once."""
        self._skipped.add(symbol)
        log.warning("symbol_skipped", symbol=symbol, reason=reason, set=self._keys.symbols)
