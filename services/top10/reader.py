"""The read path of top10: entries read from the group, the newest snapshot per symbol written, entries acked.

New entries go through one wire round trip per batch (`process_new`), reading the streams that the
activity stream names (services.core.activity); our own pending entries are read on the wire too, and
written, like claimed ones and the shutdown drain, through redis-py pipelines (`process`). What to write is
decided by the pure `plan_batch` (snapshots.py); the scripts decide what a key holds, so a batch redone is
harmless.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, Final

from redis.exceptions import NoScriptError

from services.core.activity import ActivityReads
from services.core.entries import PendingEntry, stream_pairs
from services.core.keys import TOP10_GROUP, Keys
from services.core.liveness import SessionTracker
from services.runtime.redis_client import RedisClient
from services.runtime.redis_wire import Command, Wire
from services.runtime.scripts import LuaScript, raise_first_error
from services.top10.report import Report
from services.top10.round_trip import round_trip
from services.top10.scripts import (
    MARK_GAP,
    STORE_TOP10,
    ScriptCall,
    mark_gap_call,
    run_pipelined,
    store_top10_call,
)
from services.top10.snapshots import Acks, BatchPlan, GapMark, Top10Write, plan_batch, stream_symbol

READ_BLOCK_MS: Final = 1000
"""BLOCK of the activity read of a round trip with nothing else to do."""
WRITING_BLOCK_MS: Final = 10
"""BLOCK of the activity read sent with writes: their acknowledgement waits for its reply, so it must not
wait long. (Redis ends a short block at its next event-loop pass: within milliseconds when busy, 100 ms when
idle.) One sent with reads does not block at all: what they bring is to be written at once."""
READ_COUNT: Final = 200
"""Entries per stream per read: large enough to drain a backlog quickly, small enough to keep batches short."""

Batch = Iterable[tuple[bytes, list[PendingEntry]]]


class Reader:
    def __init__(self, redis: RedisClient, wire: Wire, keys: Keys, consumer: str, tolerance_us: int,
                 sessions: SessionTracker, streams: Callable[[], dict[str, str]], report: Report) -> None:
        """`streams()` is the symbol -> ob10 stream mapping joined now; `wire` is the read loop's own
        connection, `redis` the one shared with the other loops."""
        self._redis, self._wire, self._keys, self._consumer = redis, wire, keys, consumer
        self._tolerance_us, self._sessions, self._streams, self._report = tolerance_us, sessions, streams, report
        self._stream_symbols: dict[bytes, str] = {}
        """ob10 stream key as Redis returns it -> its symbol, for the stream keys validated so far."""
        self._unacknowledged: Acks = {}
        """Entries whose writes are done, acknowledged in the next round trip."""
        self._planned: BatchPlan | None = None
        """The batch read last, written in the next round trip."""
        self._activity = ActivityReads(keys.activity("ob10"))
        self._served: dict[str, str] = {}
        """The mapping `streams()` gave last: a new one (never changed in place) may have new streams."""

    async def process_new(self) -> None:
        """One round trip: acknowledge the batch written last time, write the batch read last time, read on.

        The writes go out in the same call as the next reads, so a busy loop makes half the system calls
        (and Redis wake-ups) of a write round trip followed by a read round trip; the call goes through the
        lean wire (`python -m bench.wire`), a fraction of redis-py's CPU per pipeline. On a host whose cores
        are shared with ingest and the exchange, that CPU is what the latency tail is made of. The reads are
        XREADGROUPs of the streams the activity stream named (services.core.activity: Redis pays per stream
        named, and on a cluster one command takes one slot's), then the read of new signals, which blocks
        only when the call has nothing else to do: after reads, their entries are to be written at once;
        after writes alone, briefly, so their acknowledgement is soon. Redis runs the commands in order, so
        the keys are written before anything blocks; the script's reply carries the time of each write. An
        entry is acknowledged only in the call after the one whose reply showed its write done.
        """
        plan, self._planned = self._planned, None
        writes = list(plan.writes.values()) if plan is not None else []
        gaps = list(plan.gap_marks.values()) if plan is not None else []
        calls, gap_calls = self._store_calls(writes), self._gap_calls(gaps)
        served = self._streams()
        if served is not self._served:
            # Streams just joined may hold entries already, signalled before we came.
            self._activity.wake(served.keys() - self._served.keys())
            self._served = served
        read_plan = self._activity.plan(served, time.monotonic())
        reads = self._read_commands([served[symbol] for symbol in read_plan.symbols], ">")
        block = None if reads else WRITING_BLOCK_MS if calls or gap_calls else READ_BLOCK_MS
        learning = self._activity.learning
        trip = round_trip(self._unacknowledged, calls, gap_calls, reads, self._activity.signal_read(block),
                          signal_first=learning)
        replies = trip.split(await self._wire.call(trip.commands))
        raise_first_error(replies.acks)
        self._unacknowledged = {}
        if plan is not None:
            self._report.writes(writes, await self._retried(STORE_TOP10, calls, replies.stores))
            self._report.gap_marks(gaps, await self._retried(MARK_GAP, gap_calls, replies.gap_marks))
            self._report.batch(plan, "new")
            self._unacknowledged = plan.acks
        raise_first_error([*replies.reads, replies.signal])
        batch = [(stream, entries) for reply in replies.reads for stream, entries in stream_pairs(reply)]
        self._activity.read_done(read_plan, time.monotonic(), self._filled(batch))
        self._activity.signals(replies.signal)
        if batch:
            self._planned = self._plan(batch)

    def read_failed(self) -> None:
        """After a failed call: what was read and not acknowledged is pending under our name, to read again,
        and every stream is read in full next time (signals may have been missed)."""
        self._unacknowledged, self._planned = {}, None
        self._activity.read_failed()

    async def process_own_pending(self) -> bool:
        """Process a page of the entries delivered to us but not acknowledged; False once there are none."""
        replies = await self._wire.call(self._read_commands(list(self._streams().values()), "0"))
        raise_first_error(replies)
        batch = [(stream, entries) for reply in replies for stream, entries in stream_pairs(reply) if entries]
        if not batch:
            return False
        await self.process(batch, "pending")
        return True

    async def process(self, batch: Batch, source: str) -> None:
        """Write the newest snapshot per symbol, then acknowledge every entry of the batch."""
        plan = self._plan(batch)
        writes, gaps = list(plan.writes.values()), list(plan.gap_marks.values())
        if writes:
            self._report.writes(writes, await run_pipelined(self._redis, STORE_TOP10, self._store_calls(writes)))
        if gaps:
            self._report.gap_marks(gaps, await run_pipelined(self._redis, MARK_GAP, self._gap_calls(gaps)))
        self._report.batch(plan, source)
        await self._acknowledge(plan.acks)

    async def acknowledge_written(self) -> None:
        """At shutdown: XACK the entries written but not acknowledged yet (the next round trip would have)."""
        await self._acknowledge(self._unacknowledged)
        self._unacknowledged = {}

    async def _acknowledge(self, acks: Acks) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream, ids in acks.items():
                pipe.xack(stream, TOP10_GROUP, *ids)
            await pipe.execute()

    async def _retried(self, script: LuaScript, calls: list[ScriptCall], results: list[Any]) -> list[Any]:
        """The replies of `calls` sent by SHA with the read; sent again with the script loaded after NOSCRIPT."""
        if any(isinstance(result, NoScriptError) for result in results):
            results = await run_pipelined(self._redis, script, calls)
        raise_first_error(results)
        return results

    def _read_commands(self, streams: list[str], after: str) -> list[Command]:
        """XREADGROUPs of `streams` from `after` (`>`: new entries, `0`: our pending ones), one per slot group."""
        return [("XREADGROUP", "GROUP", TOP10_GROUP, self._consumer, "COUNT", READ_COUNT, "STREAMS",
                 *[streams[index] for index in group], *(after,) * len(group))
                for group in self._wire.slot_groups(streams)]

    def _filled(self, batch: list[tuple[bytes, list[PendingEntry]]]) -> list[str]:
        """The symbols whose read came back with READ_COUNT entries: more may be waiting."""
        return [self._keys.symbol_of(stream.decode()) for stream, entries in batch if len(entries) >= READ_COUNT]

    def _plan(self, batch: Batch) -> BatchPlan:
        streams = []
        for stream, entries in batch:
            symbol = self._stream_symbols.get(stream)
            if symbol is None:
                symbol = stream_symbol(self._keys, stream)
                if symbol is None:
                    # Only streams we asked for come back; a reply naming another is not to be trusted.
                    self._report.invalid_name("stream_key", stream)
                    continue
                self._stream_symbols[stream] = symbol
            streams.append((stream, symbol, entries))
        return plan_batch(streams, self._tolerance_us)

    def _store_calls(self, writes: list[Top10Write]) -> list[ScriptCall]:
        now = time.monotonic()
        return [store_top10_call(self._keys.top10(write.symbol), write, self._tolerance_us,
                                 self._sessions.lost_reason(write.session, now)
                                 if self._sessions.is_lost(write.session) else None) for write in writes]

    def _gap_calls(self, gaps: list[GapMark]) -> list[ScriptCall]:
        return [mark_gap_call(self._keys.top10(gap.symbol), gap) for gap in gaps]
