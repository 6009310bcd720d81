"""Prometheus metrics of top10 (default registry, served on /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from services.runtime.redis_client import redis_lost_counter

ENTRIES = Counter(
    "bookstream_top10_entries",
    "ob10 stream entries processed (written, refused or set aside), by how they were read: new (>), pending "
    "(own pending entries re-read after a start or a failed read), claimed (XAUTOCLAIM)",
    ["source"])
WRITES = Counter(
    "bookstream_top10_writes",
    "compare-and-set results: applied (key written and published), older (refused, the key holds a newer "
    "snapshot), duplicate (the key already holds this very entry)",
    ["result"])
SUPERSEDED = Counter(
    "bookstream_top10_superseded_entries",
    "valid snapshots not sent to Redis because a newer one of the same symbol was in the same batch")
MALFORMED = Counter(
    "bookstream_top10_malformed_entries",
    "entries that are not a valid orderBook10 snapshot of their stream's symbol (logged, acknowledged, "
    "never written)")
SKIPPED = Counter(
    "bookstream_top10_skipped_entries",
    "entries with nothing to write: gap (marker from ingest), empty (frame with no rows), trimmed (pending "
    "entry deleted by MAXLEN before it was processed: a loss)",
    ["reason"])
CLAIMED = Counter(
    "bookstream_top10_claimed_entries",
    "entries taken over with XAUTOCLAIM after staying pending longer than CLAIM_IDLE")
CONSUMERS_REMOVED = Counter(
    "bookstream_top10_consumers_removed",
    "members of the top10 group this instance removed: idle CONSUMER_EXPIRY on every stream and owning no "
    "pending entry (in a market quieter than that, live ones too: Redis recreates them on their next read)")
REDIS_ERRORS = Counter(
    "bookstream_top10_redis_errors",
    "failed Redis operations (each retried after a backoff)",
    ["operation"])
REDIS_UP = Gauge(
    "bookstream_top10_redis_up",
    "1 when Redis answered the last attempt of an operation, else 0",
    ["operation"])
LATENCY = Histogram(
    "bookstream_top10_latency_seconds",
    "ingest receive time (recv_us) to the key written (by Redis's clock, in the script), per applied write",
    buckets=(0.0001, 0.00015, 0.0002, 0.0003, 0.0004, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004,
             0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0))
BATCH_ENTRIES = Histogram(
    "bookstream_top10_batch_entries",
    "entries per processed batch",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000))
STREAMS = Gauge(
    "bookstream_top10_streams",
    "ob10 streams this instance consumes")
FUTURE_TIMESTAMPS = Counter(
    "bookstream_top10_future_timestamps",
    "valid snapshots whose exchange time led their receive time by more than TIMESTAMP_TOLERANCE (ordered "
    "by receive time instead, so they cannot hold a key against the snapshots after them)")
INVALID_NAMES = Counter(
    "bookstream_top10_invalid_names",
    "names read from Redis that fail validation and are ignored: symbol_set (a member of the symbol set, "
    "counted once per name), stream_key (a stream in a reply), key_session (the session field of a top10 key)",
    ["source"])
SESSIONS_LOST = Counter(
    "bookstream_top10_sessions_lost",
    "ingest sessions whose liveness key stayed absent for SESSION_LOST_AFTER while top10 keys named them")
STALE_MARKS = Counter(
    "bookstream_top10_stale_marks",
    "top10 keys this instance marked stale, by kind: ingest_lost (each key once per lost session), gap (a "
    "gap marker newer than the key's snapshot); whichever instance gets there first",
    ["reason"])
REDIS_LOST = redis_lost_counter(
    "top10",
    "Redis state top10 relied on and found gone, then rebuilt: group (the top10 group of a stream it "
    "consumed, recreated from id 0)")
