"""What is wrong, decided from snapshots alone: pure functions, no I/O, so every rule is unit-tested.

Two samples say more than one: a lag that is merely high may be a burst being worked off, a lag that
grows between samples is a consumer falling behind. `analyze` takes the previous snapshot when there is one
(`--watch`, the `bookstream dev` view) and judges a single sample by thresholds alone otherwise.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

from services.core.entries import parse_stream_id
from services.core.keys import L2BUILDER_GROUP, TOP10_GROUP
from services.status.snapshot import Book, Group, Problem, Snapshot, Stream, SymbolStatus, Top10

ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Limits beyond which something is reported; the defaults suit the shipped settings."""

    stale_after_s: float = 30.0
    """Newest entry of a stream whose ingest session is gone, book or top10 key older than this (while newer
    data exists) is reported."""
    lag_high: int = 1000
    """Entries a group may have left to read before it is reported, growing or not."""
    lag_growing_min: int = 100
    """A lag that grew between two samples is reported once it is at least this."""
    dead_idle_s: float = 30.0
    """A consumer idle this long while entries are pending to it is presumed dead."""


def analyze(current: Snapshot, previous: Snapshot | None, limits: Thresholds) -> Snapshot:
    """`current` with stream rates (from `previous`) and its problems filled in."""
    current = with_rates(current, previous)
    return replace(current, problems=find_problems(current, previous, limits))


def with_rates(current: Snapshot, previous: Snapshot | None) -> Snapshot:
    """Entries per second added to each stream between the two samples (Redis 7 counts them in entries-added)."""
    if previous is None or current.taken_at_us <= previous.taken_at_us:
        return current
    elapsed = (current.taken_at_us - previous.taken_at_us) / 1e6
    before = {status.symbol: status for status in previous.symbols}

    def rate(stream: Stream | None, earlier: Stream | None) -> Stream | None:
        if stream is None or earlier is None or stream.entries_added < earlier.entries_added:
            return stream
        return replace(stream, rate_per_s=round((stream.entries_added - earlier.entries_added) / elapsed, 1))

    symbols = []
    for status in current.symbols:
        old = before.get(status.symbol)
        symbols.append(replace(status, l2=rate(status.l2, old.l2 if old else None),
                               ob10=rate(status.ob10, old.ob10 if old else None)))
    return replace(current, symbols=tuple(symbols))


def find_problems(current: Snapshot, previous: Snapshot | None, limits: Thresholds) -> tuple[Problem, ...]:
    found: list[Problem] = []
    if not current.redis.ok:
        found.append(Problem("redis_unreachable", ERROR, None, "redis", f"{current.redis.url}: {current.redis.error}"))
    for node in current.redis.nodes:
        if not node.ok:
            found.append(Problem("redis_node_unreachable", ERROR, None, "redis",
                                 f"cluster primary {node.address}: {node.error}"))
    if not current.mongo.ok:
        found.append(Problem("mongo_unreachable", ERROR, None, "mongo", f"{current.mongo.url}: {current.mongo.error}"))
    if current.redis.evicting_policy is not None:
        found.append(Problem("redis_evicting", WARNING, None, "redis",
                             f"maxmemory-policy is {current.redis.evicting_policy}: under memory pressure Redis "
                             "drops streams, leases and epochs (bookstream requires noeviction)"))
    if current.ignored_names:
        found.append(Problem("invalid_symbol", WARNING, None, "redis",
                             f"{current.ignored_names} names in Redis or MongoDB are not symbols "
                             "([A-Za-z0-9_.-]{1,32}) and were ignored"))
    for said in current.instances.subscriptions:
        if said.rejected:
            nothing = said.subscribed == 0
            found.append(Problem("topics_rejected", ERROR if nothing else WARNING, None, "ingest",
                                 f"ingest {said.instance} (session {said.session}): the venue rejected "
                                 f"{len(said.rejected)} topic(s), {', '.join(said.rejected[:5])}"
                                 + (", and it subscribed to nothing" if nothing else "")))
    before = {status.symbol: status for status in previous.symbols} if previous else {}
    for status in current.symbols:
        found.extend(_symbol_problems(status, before.get(status.symbol), current.mongo.ok, limits))
    return tuple(found)


def _newer(stream_id: str | None, than: str | None) -> bool:
    return stream_id is not None and than is not None and parse_stream_id(stream_id) > parse_stream_id(than)


def _symbol_problems(status: SymbolStatus, previous: SymbolStatus | None, mongo_ok: bool,
                     limits: Thresholds) -> Iterator[Problem]:
    sym = status.symbol
    for subject, stream, earlier, expected_group in (
            ("l2", status.l2, previous.l2 if previous else None, L2BUILDER_GROUP),
            ("ob10", status.ob10, previous.ob10 if previous else None, TOP10_GROUP)):
        if stream is None:
            continue
        # A quiet market is no fault: only a stream whose last session is gone and that went quiet is.
        if (not stream.last_session_alive and stream.last_age_s is not None
                and stream.last_age_s > limits.stale_after_s):
            whose = (f"its session {stream.last_session} is no longer alive" if stream.last_session
                     else "it names no ingest session")
            yield Problem("ingest_lost", ERROR, sym, subject,
                          f"{stream.key}: newest entry is {stream.last_age_s:.0f}s old and {whose} "
                          "(is ingest running?)")
        if stream.length and stream.group(expected_group) is None:
            yield Problem("no_group", WARNING, sym, f"{subject}:group",
                          f"{stream.key} has no group {expected_group!r} (has {expected_group} ever run?)")
        for group in stream.groups:
            before = earlier.group(group.name) if earlier else None
            yield from _group_problems(sym, f"{subject}:group", stream, group, before, limits)

    if status.l2 is not None and status.l2.length and status.owner.instance is None:
        yield Problem("no_owner", ERROR, sym, "owner", "no l2builder instance holds the lease (are any running?)")

    yield from _stored_problems(sym, "book", "book", "book last written", status.book, status.l2, mongo_ok,
                                "the l2 stream has entries but MongoDB has no book", limits)
    yield from _stored_problems(sym, "top10", "top10 key", "top10 key written", status.top10, status.ob10, True,
                                "the ob10 stream has entries but there is no top10 key", limits)


def _stored_problems(sym: str, subject: str, noun: str, written: str, stored: Book | Top10 | None,
                     stream: Stream | None, can_tell_missing: bool, missing: str,
                     limits: Thresholds) -> Iterator[Problem]:
    """What is wrong with what a consumer stored from `stream` (a book, a top10 key): missing, stale, behind.
    `can_tell_missing` is False when its store could not be read (MongoDB down): absent is then unknown."""
    if can_tell_missing and stored is None and stream is not None and stream.length:
        yield Problem(f"{subject}_missing", WARNING, sym, subject, missing)
    if stored is None:
        return
    if stored.status == "stale":
        yield Problem(f"{subject}_stale", ERROR, sym, subject, f"{noun} is stale: {stored.reason or 'no reason given'}")
    if (stream is not None and (stored.age_s or 0.0) > limits.stale_after_s
            and _newer(stream.last_id, stored.stream_id)):
        yield Problem(f"{subject}_behind", WARNING, sym, subject,
                      f"{written} {stored.age_s:.0f}s ago at {stored.stream_id}, stream is at {stream.last_id}")


def _group_problems(sym: str, subject: str, stream: Stream, group: Group, earlier: Group | None,
                    limits: Thresholds) -> Iterator[Problem]:
    where = f"group {group.name!r} on {stream.key}"
    if group.lag is not None:
        earlier_lag = earlier.lag if earlier else None
        growing = earlier_lag is not None and group.lag > earlier_lag
        if group.lag >= limits.lag_high:
            yield Problem("lag_high", WARNING, sym, subject,
                          f"{where} has {group.lag} entries to read{' and growing' if growing else ''}")
        elif growing and group.lag >= limits.lag_growing_min:
            yield Problem("lag_growing", WARNING, sym, subject,
                          f"{where}: lag grew from {earlier_lag} to {group.lag}")
    trimmed = stream.entries_added - stream.length
    if (group.entries_read is not None and group.entries_read < trimmed and stream.first_id is not None
            and parse_stream_id(group.last_delivered_id) < parse_stream_id(stream.first_id)):
        yield Problem("trimmed_unread", ERROR, sym, subject,
                      f"{where}: entries were trimmed before the group read them (raise STREAM_MAXLEN?)")
    for consumer in group.consumers:
        if consumer.pending and consumer.idle_s >= limits.dead_idle_s:
            yield Problem("dead_consumer", WARNING, sym, subject,
                          f"{where}: consumer {consumer.name!r} idle {consumer.idle_s:.0f}s "
                          f"holds {consumer.pending} pending entries")
