"""What top10 counts and logs about what it did: batches, writes, gap and stale marks, names it refused.

Every loop reports through one `Report`, so a kind of event is counted in one metric and logged with one
set of fields wherever it happens, and the rate limits of the noisy ones (future timestamps, invalid
names) hold across loops.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

from services.core.ratelimit import LogLimit
from services.core.text import excerpt
from services.runtime.logs import EventLog
from services.top10 import metrics
from services.top10.snapshots import BatchPlan, GapMark, Top10Write

SHOWN_SYMBOLS: Final = 20
"""Symbols named in one log line; the count says how many there were."""

WRITES_APPLIED: Final = metrics.WRITES.labels("applied")
WRITE_REJECTIONS: Final = {0: metrics.WRITES.labels("older"), -1: metrics.WRITES.labels("duplicate")}

log = EventLog("top10")


class Report:
    def __init__(self, timestamp_tolerance: float) -> None:
        self._tolerance_s = timestamp_tolerance
        self._future_log, self._invalid_log = LogLimit(burst=1), LogLimit(burst=1)

    def batch(self, plan: BatchPlan, source: str) -> None:
        """Count and log a batch once its writes are done (a batch redone after a failure counts again)."""
        metrics.ENTRIES.labels(source).inc(plan.entries)
        metrics.BATCH_ENTRIES.observe(plan.entries)
        if plan.superseded:
            metrics.SUPERSEDED.inc(plan.superseded)
        if plan.gaps:
            metrics.SKIPPED.labels("gap").inc(plan.gaps)
        if plan.empty:
            metrics.SKIPPED.labels("empty").inc(plan.empty)
        for rejection in plan.rejected:
            metrics.MALFORMED.inc()
            log.warning("malformed_entry", stream=rejection.stream, id=rejection.stream_id,
                        reason=rejection.reason, excerpt=rejection.excerpt)
        self.trimmed(plan.trimmed)
        if plan.future:
            metrics.FUTURE_TIMESTAMPS.inc(len(plan.future))
            held = self._future_log.admit(time.monotonic())
            if held is not None:
                first = plan.future[0]
                log.warning("future_timestamp", symbol=first.symbol, id=first.stream_id,
                            timestamp=excerpt(first.snapshot.timestamp, 40), recv_us=first.recv_us,
                            tolerance_s=self._tolerance_s, in_batch=len(plan.future),
                            suppressed=held, ordered_by="recv_us")

    @staticmethod
    def writes(writes: Sequence[Top10Write], results: Sequence[Any]) -> None:
        """Count each write's outcome and time the applied ones, from ingest's receipt to Redis's write."""
        for write, result in zip(writes, results, strict=True):
            if result > 0:  # the time of the write, epoch microseconds by Redis's clock
                WRITES_APPLIED.inc()
                metrics.LATENCY.observe((result - write.recv_us) / 1e6)
            else:
                WRITE_REJECTIONS[result].inc()

    @staticmethod
    def gap_marks(gaps: Sequence[GapMark], results: Sequence[Any]) -> None:
        """Count and log the keys a gap marker turned stale (the script refuses where a newer snapshot is)."""
        marked = [gap for gap, result in zip(gaps, results, strict=True) if result == 1]
        if not marked:
            return
        metrics.STALE_MARKS.labels("gap").inc(len(marked))
        symbols = [gap.symbol for gap in marked]
        log.warning("keys_marked_stale", kind="gap", reason=marked[0].reason, keys=len(marked),
                    symbols=",".join(symbols[:SHOWN_SYMBOLS]))

    @staticmethod
    def sessions_marked(kind: str, marked: Mapping[str, list[str]], reasons: Mapping[str, str]) -> None:
        """Count and log the keys marked stale, per session whose loss marked them."""
        for session, symbols in marked.items():
            metrics.STALE_MARKS.labels(kind).inc(len(symbols))
            log.warning("keys_marked_stale", kind=kind, reason=reasons[session], session=session,
                        keys=len(symbols), symbols=",".join(symbols[:SHOWN_SYMBOLS]))

    @staticmethod
    def trimmed(trimmed: Sequence[tuple[str, str]]) -> None:
        """Entries pending for the group that MAXLEN trimmed before anyone processed them: a loss."""
        if not trimmed:
            return
        metrics.SKIPPED.labels("trimmed").inc(len(trimmed))
        streams = sorted({stream for stream, _ in trimmed})
        log.warning("pending_entries_trimmed", entries=len(trimmed), streams=",".join(streams),
                    first_id=trimmed[0][1], hint="raise STREAM_MAXLEN or add top10 instances")

    def invalid_name(self, source: str, name: bytes | str) -> None:
        """Count a name read from Redis that failed validation; log it rate-limited, escaped and cut short."""
        metrics.INVALID_NAMES.labels(source).inc()
        held = self._invalid_log.admit(time.monotonic())
        if held is not None:
            log.warning("invalid_name", source=source, name=excerpt(ascii(name), 60), suppressed=held)
