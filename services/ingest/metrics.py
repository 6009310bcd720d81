"""Prometheus metrics of ingest (`bookstream_ingest_*`), served on /metrics by the shared health server.

The two metrics touched for every frame, the frame tally and the latency histogram, are plain counters
in this process turned into Prometheus samples only when scraped: a prometheus_client counter or
histogram takes a lock and several calls per update, which at tens of thousands of frames per second
costs more than parsing the frame. Scrapes run on the event loop, like the updates, so nothing races.
Gauges that mirror live state (buffer depth, topic counts) are likewise read through callbacks.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import Final

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from services.runtime.redis_client import redis_lost_counter

LATENCY_BUCKETS: Final = (
    *(step / 20_000 for step in range(1, 21)), 0.00125, 0.0015, 0.00175, 0.002, 0.0025, 0.003, 0.004, 0.005,
    0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""50 us wide up to 1 ms, then still fine up to the 2 ms target, so quantiles read from it are close."""



class FrameTally(Collector):
    """Table frames and their bytes received, by table and action."""

    def __init__(self) -> None:
        self.frames: dict[tuple[str, str], int] = {}
        self.bytes: dict[tuple[str, str], int] = {}

    def add(self, table: str, action: str, size: int) -> None:
        key = (table, action)
        self.frames[key] = self.frames.get(key, 0) + 1
        self.bytes[key] = self.bytes.get(key, 0) + size

    def collect(self) -> Iterator[Metric]:
        for name, doc, values in (
                ("bookstream_ingest_frames", "Table frames received from the websocket, by table and action",
                 self.frames),
                ("bookstream_ingest_frame_bytes", "Bytes of table frames received, by table and action",
                 self.bytes)):
            family = CounterMetricFamily(name, doc, labels=("table", "action"))
            for (table, action), value in values.items():
                family.add_metric((table, action), value)
            yield family


class LatencyHistogram(Collector):
    """A histogram of nanosecond durations, one bisect per observation, exposed in seconds."""

    def __init__(self, name: str, documentation: str, bounds: tuple[float, ...]) -> None:
        self.name, self.documentation, self.bounds = name, documentation, bounds
        self._bounds_ns = [round(bound * 1e9) for bound in bounds]
        self._counts = [0] * (len(bounds) + 1)
        self._sum_ns = 0

    def observe_ns(self, duration_ns: int) -> None:
        self._counts[bisect_left(self._bounds_ns, duration_ns)] += 1
        self._sum_ns += duration_ns

    def collect(self) -> Iterator[Metric]:
        cumulative, buckets = 0, []
        for bound, count in zip((*self.bounds, float("inf")), self._counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=self._sum_ns / 1e9)


FRAMES: Final = FrameTally()
REGISTRY.register(FRAMES)
MESSAGES: Final = Counter("bookstream_ingest_messages_total",
                          "Non-table messages received (welcome, subscribe, unsubscribe, error, pong)", ["kind"])
MALFORMED: Final = Counter("bookstream_ingest_malformed_frames_total",
                           "Frames that could not be parsed or routed (each possibly L2 one left as a gap marker)")
UNSUBSCRIBED: Final = Counter("bookstream_ingest_unsubscribed_frames_total",
                              "Frame parts naming a symbol ingest did not subscribe, not published")
SPLIT: Final = Counter("bookstream_ingest_split_frames_total",
                       "Frames mixing symbols, split into one re-serialized entry per symbol")
PUBLISHED: Final = Counter("bookstream_ingest_entries_published_total",
                           "Stream entries whose XADD Redis acknowledged, by kind (frame or gap)", ["kind"])
BATCH_ENTRIES: Final = Histogram("bookstream_ingest_xadd_batch_entries", "Entries per XADD batch",
                                 buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000))
BATCH_SECONDS: Final = Histogram("bookstream_ingest_xadd_batch_seconds",
                                 "Round trip of one XADD batch to Redis", buckets=LATENCY_BUCKETS)
LATENCY: Final = LatencyHistogram("bookstream_ingest_publish_latency_seconds",
                                  "From a frame's receipt to Redis acknowledging its XADD", LATENCY_BUCKETS)
REGISTRY.register(LATENCY)
CONNECTED: Final = Gauge("bookstream_ingest_connected", "1 while the websocket is connected, else 0")
CONNECTIONS: Final = Counter("bookstream_ingest_connections_total", "Websocket connections established")
RECONNECTS: Final = Counter("bookstream_ingest_reconnects_total",
                            "Reconnections scheduled, by the reason the previous attempt ended", ["reason"])
PINGS: Final = Counter("bookstream_ingest_pings_total", "Heartbeat pings sent after silence on the websocket")
GAPS: Final = Counter("bookstream_ingest_gap_markers_total", "Gap markers appended to streams, by reason",
                      ["reason"])
REJECTED: Final = Counter("bookstream_ingest_rejected_topics_total", "Topic subscriptions the venue rejected")
TOPICS: Final = Gauge("bookstream_ingest_topics", "Topics of the current session by state", ["state"])
RESUBSCRIBES: Final = Counter("bookstream_ingest_resubscribes_total",
                              "Control-stream resubscribe requests, by outcome", ["outcome"])
BUFFER: Final = Gauge("bookstream_ingest_buffer_entries", "Entries received and not yet acknowledged by Redis")
BUFFER_CAPACITY: Final = Gauge("bookstream_ingest_buffer_capacity_entries",
                               "Buffer bound (INGEST_BUFFER_FRAMES): the websocket is not read beyond it")
PAUSED_SECONDS: Final = Counter("bookstream_ingest_read_paused_seconds_total",
                                "Time the websocket was not read because the buffer was full")
DROPPED: Final = Counter("bookstream_ingest_dropped_entries_total",
                         "Entries given up without reaching Redis, by reason (each one logged)", ["reason"])
REDIS_UP: Final = Gauge("bookstream_ingest_redis_up",
                        "1 when Redis answered the last operation (publish, control, heartbeat), else 0", ["operation"])
REDIS_ERRORS: Final = Counter("bookstream_ingest_redis_errors_total", "Failed Redis operations, by operation",
                              ["operation"])
REDIS_LOST: Final = redis_lost_counter("ingest", "State Redis lost and ingest restored: symbols re-added, "
                                                  "streams found short")
RECORDED: Final = Counter("bookstream_ingest_recorded_frames_total", "Frames written to the --record capture")
