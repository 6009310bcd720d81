"""Prometheus metrics of l2builder (`bookstream_l2builder_*`), registered in the default registry."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

FRAMES_APPLIED = Counter("bookstream_l2builder_frames_applied_total",
                         "L2 frames applied to books (partials included; duplicates and malformed frames not)")
ROWS_APPLIED = Counter("bookstream_l2builder_rows_applied_total", "order-book rows applied to books")
ENTRIES_SKIPPED = Counter("bookstream_l2builder_entries_skipped_total",
                          "stream entries seen again (same id or same session and seq) and not applied again")
HOLES_REFILLED = Counter("bookstream_l2builder_holes_refilled_total",
                         "seq holes in what the group delivered that were refilled from the stream with XRANGE")
STALE = Counter("bookstream_l2builder_stale_total", "books that became stale, by cause", ["kind"])
BOOKS = Gauge("bookstream_l2builder_books", "owned books by status", ["status"])
RESYNC_REQUESTS = Counter("bookstream_l2builder_resync_requests_total",
                          "resubscribe requests written to the control stream")
OWNED = Gauge("bookstream_l2builder_owned_symbols", "symbols whose lease this instance holds")
MEMBERS = Gauge("bookstream_l2builder_members", "live l2builder instances seen in the membership set")
LEASE_CHANGES = Counter("bookstream_l2builder_lease_changes_total",
                        "symbol leases acquired, released (handed off) or lost", ["change"])
LAG = Gauge("bookstream_l2builder_lag_entries",
            "entries of an owned stream not yet durable in MongoDB (undelivered + unacknowledged)", ["symbol"])
FLUSH_DOCUMENTS = Histogram("bookstream_l2builder_flush_documents", "documents per MongoDB bulk write",
                            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000))
FLUSH_SECONDS = Histogram("bookstream_l2builder_flush_seconds", "duration of one MongoDB bulk write",
                          buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
BOOK_WRITES = Counter("bookstream_l2builder_book_writes_total",
                      "book writes sent, by kind: delta, or whole for want of a base to build on (no_base), a delta"
                      " as large as the book or too many removed levels kept (compaction), or a size near the limit"
                      " (size_check)", ["kind"])
FLUSH_CYCLE_SECONDS = Histogram("bookstream_l2builder_flush_cycle_seconds",
                                "time from the start of one flush to the start of the next (FLUSH_INTERVAL "
                                "while the writes keep up)",
                                buckets=(0.1, 0.25, 0.3, 0.4, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20, 30))
FLUSH_ERRORS = Counter("bookstream_l2builder_flush_errors_total", "failed MongoDB bulk writes and failed ops")
WRITE_CONFLICTS = Counter("bookstream_l2builder_write_conflicts_total",
                          "writes refused because a newer version (a later owner) was already stored")
ACKED = Counter("bookstream_l2builder_acked_entries_total", "entries acknowledged after their book was durable")
REDIS_ERRORS = Counter("bookstream_l2builder_redis_errors_total", "failed Redis round trips, by operation",
                       ["operation"])
INVALID_SYMBOLS = Counter("bookstream_l2builder_invalid_symbols_total",
                          "members of the symbols set that are no valid symbol name, ignored (each counted once)")
REDIS_LOST = Counter("bookstream_l2builder_redis_lost_total",
                     "Redis state l2builder relied on found lost (its books then go stale), by what", ["what"])
READ_PAUSED = Gauge("bookstream_l2builder_read_paused_symbols",
                    "owned symbols not read because their own unacknowledged entries reached the bound")
