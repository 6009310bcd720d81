"""The problem rules and stream rates, on hand-built snapshots (pure functions, no servers)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from services.core.keys import L2BUILDER_GROUP, TOP10_GROUP
from services.status.collect import epoch_seconds
from services.status.problems import Thresholds, analyze, find_problems, with_rates
from services.status.snapshot import Consumer, Instances, Owner, Snapshot, Subscriptions
from tests.status.factories import NOW_MS, book, group, snapshot, stream, symbol, top10

LIMITS = Thresholds(stale_after_s=30, lag_high=1000, lag_growing_min=100, dead_idle_s=30)


def kinds(current: Snapshot, previous: Snapshot | None = None) -> list[tuple[str, str | None, str]]:
    return [(p.kind, p.symbol, p.subject) for p in find_problems(current, previous, LIMITS)]


def test_a_healthy_system_has_no_problem() -> None:
    assert kinds(snapshot(symbol("XBTUSD"), symbol("ETHUSD"))) == []


def test_unreachable_servers_are_errors() -> None:
    found = find_problems(snapshot(redis_ok=False, mongo_ok=False), None, LIMITS)
    assert [(p.kind, p.severity, p.subject) for p in found][:2] == [
        ("redis_unreachable", "error", "redis"), ("mongo_unreachable", "error", "mongo")]


@pytest.mark.parametrize(("session", "alive", "age_s", "lost"), [
    ("s1", True, 3600.0, False),    # a quiet market (or a finished replay) of a live session: no fault
    ("s1", False, 31.0, True),      # the session's liveness key expired and nothing came since
    ("s1", False, 5.0, False),      # expired moments ago: a reconnect is under way
    (None, None, 31.0, True),       # entries of no known session, and old
])
def test_a_quiet_stream_is_only_a_problem_when_its_ingest_session_is_gone(
        session: str | None, alive: bool | None, age_s: float, lost: bool) -> None:
    quiet = symbol(l2=stream("p:l2:{XBTUSD}", L2BUILDER_GROUP, last_age_s=age_s, last_session=session,
                             last_session_alive=alive))
    found = find_problems(snapshot(quiet), None, LIMITS)
    assert [(p.kind, p.severity, p.symbol, p.subject) for p in found] == (
        [("ingest_lost", "error", "XBTUSD", "l2")] if lost else [])
    if lost:
        assert "is ingest running?" in found[0].detail


def test_an_evicting_redis_is_a_warning() -> None:
    evicting = replace(snapshot(), redis=replace(snapshot().redis, evicting_policy="allkeys-lru"))
    found = find_problems(evicting, None, LIMITS)
    assert [(p.kind, p.severity, p.subject) for p in found] == [("redis_evicting", "warning", "redis")]
    assert "allkeys-lru" in found[0].detail and "noeviction" in found[0].detail


def test_names_that_are_not_symbols_are_counted_not_shown() -> None:
    found = find_problems(replace(snapshot(), ignored_names=2), None, LIMITS)
    assert [(p.kind, p.severity) for p in found] == [("invalid_symbol", "warning")]
    assert found[0].detail.startswith("2 names")


def test_a_stream_without_its_consumer_group() -> None:
    alone = symbol(ob10=stream("p:ob10:{XBTUSD}", TOP10_GROUP, groups=()))
    assert kinds(snapshot(alone)) == [("no_group", "XBTUSD", "ob10:group")]


def test_high_lag_is_reported_from_one_sample() -> None:
    behind = symbol(l2=stream("p:l2:{XBTUSD}", L2BUILDER_GROUP, groups=(group(L2BUILDER_GROUP, lag=1000),)))
    assert kinds(snapshot(behind)) == [("lag_high", "XBTUSD", "l2:group")]


@pytest.mark.parametrize(("before", "after", "reported"), [
    (100, 150, True),      # grew past the minimum
    (150, 120, False),     # shrinking: being worked off
    (10, 99, False),       # grew, but still small
    (None, 500, False),    # Redis could not tell before: no trend
])
def test_growing_lag_needs_two_samples(before: int | None, after: int, reported: bool) -> None:
    def at(lag: int | None, taken_at_us: int) -> Snapshot:
        return snapshot(symbol(ob10=stream("p:ob10:{XBTUSD}", TOP10_GROUP, groups=(group(TOP10_GROUP, lag=lag),))),
                        taken_at_us=taken_at_us)

    previous, current = at(before, NOW_MS * 1000), at(after, NOW_MS * 1000 + 2_000_000)
    assert (("lag_growing", "XBTUSD", "ob10:group") in kinds(current, previous)) is reported
    assert kinds(current) == []


def test_trimmed_before_read_is_an_error() -> None:
    # 1000 entries added, 500 left: the group read 100, so 400 went unread.
    lost = stream("p:l2:{XBTUSD}", L2BUILDER_GROUP, length=500, entries_added=1000, first_id=f"{NOW_MS - 5000}-0",
                  groups=(group(L2BUILDER_GROUP, lag=None, entries_read=100, last_delivered_id=f"{NOW_MS - 9000}-0"),))
    found = find_problems(snapshot(symbol(l2=lost)), None, LIMITS)
    assert [(p.kind, p.severity) for p in found] == [("trimmed_unread", "error")]


def test_trimming_after_reading_is_fine() -> None:
    kept = stream("p:l2:{XBTUSD}", L2BUILDER_GROUP, length=500, entries_added=1000,
                  groups=(group(L2BUILDER_GROUP, entries_read=1000),))
    assert kinds(snapshot(symbol(l2=kept))) == []


def test_an_idle_consumer_holding_entries_is_dead() -> None:
    consumers = (Consumer("alive", 3, 0.5), Consumer("gone", 7, 45.0), Consumer("idle-but-empty", 0, 999.0))
    held = stream("p:ob10:{XBTUSD}", TOP10_GROUP, groups=(group(TOP10_GROUP, pending=10, consumers=consumers),))
    found = find_problems(snapshot(symbol(ob10=held)), None, LIMITS)
    assert [(p.kind, p.subject) for p in found] == [("dead_consumer", "ob10:group")]
    assert "'gone'" in found[0].detail and "7 pending" in found[0].detail


def test_a_symbol_without_owner() -> None:
    assert kinds(snapshot(symbol(owner=Owner(None, 4, None)))) == [("no_owner", "XBTUSD", "owner")]


def test_book_problems() -> None:
    assert kinds(snapshot(symbol(book=book(status="stale", reason="gap: disconnect")))) == [
        ("book_stale", "XBTUSD", "book")]
    assert kinds(snapshot(symbol(book=None))) == [("book_missing", "XBTUSD", "book")]
    assert kinds(snapshot(symbol(book=None), mongo_ok=False)) == [("mongo_unreachable", None, "mongo")]
    behind = book(age_s=40.0, stream_id=f"{NOW_MS - 40_000}-3")
    assert kinds(snapshot(symbol(book=behind))) == [("book_behind", "XBTUSD", "book")]
    # An old book that has applied the newest entry is merely a quiet market.
    assert kinds(snapshot(symbol(book=book(age_s=40.0)))) == []


def test_top10_problems() -> None:
    assert kinds(snapshot(symbol(top10=None))) == [("top10_missing", "XBTUSD", "top10")]
    behind = top10(age_s=35.0, stream_id=f"{NOW_MS - 35_000}-0")
    assert kinds(snapshot(symbol(top10=behind))) == [("top10_behind", "XBTUSD", "top10")]
    lost = top10(status="stale", reason="ingest_lost: session s1")
    found = find_problems(snapshot(symbol(top10=lost)), None, LIMITS)
    assert [(p.kind, p.severity) for p in found] == [("top10_stale", "error")]
    assert "ingest_lost" in found[0].detail


def test_rates_come_from_entries_added_between_samples() -> None:
    def at(added: int, taken_at_us: int) -> Snapshot:
        return snapshot(symbol(l2=stream("p:l2:{XBTUSD}", L2BUILDER_GROUP, entries_added=added)),
                        taken_at_us=taken_at_us)

    previous = at(1000, NOW_MS * 1000)
    current = with_rates(at(1250, NOW_MS * 1000 + 2_500_000), previous)
    l2 = current.symbols[0].l2
    assert l2 is not None and l2.rate_per_s == 100.0
    assert with_rates(at(1250, NOW_MS * 1000), None).symbols[0].l2 == at(1250, 0).symbols[0].l2


def test_analyze_fills_rates_and_problems() -> None:
    previous = snapshot(symbol(book=book(status="stale")))
    current = replace(previous, taken_at_us=previous.taken_at_us + 1_000_000)
    result = analyze(current, previous, LIMITS)
    assert [p.kind for p in result.problems] == ["book_stale"]
    assert result.symbols[0].ob10 is not None and result.symbols[0].ob10.rate_per_s == 0.0


@pytest.mark.parametrize("value", [1_700_000_000, 1_700_000_000_000, 1_700_000_000_000_000,
                                   "2023-11-14T22:13:20Z", "2023-11-14T22:13:20+00:00",
                                   "2023-11-14 22:13:20.000000"])  # how nx-27017 returns a BSON date
def test_epoch_seconds_reads_every_time_encoding(value: object) -> None:
    assert epoch_seconds(value) == 1_700_000_000


def test_epoch_seconds_rejects_what_is_not_a_time() -> None:
    assert epoch_seconds("yesterday") is None
    assert epoch_seconds(True) is None
    assert epoch_seconds(None) is None


def test_rejected_topics_of_a_live_ingest_session() -> None:
    def with_subscriptions(*said: Subscriptions) -> Snapshot:
        return replace(snapshot(symbol()), instances=Instances(("s1",), (), (), said))

    some = find_problems(with_subscriptions(Subscriptions("s1", "ingest-1", 2, ("orderBookL2:xbtusd",))), None, LIMITS)
    assert [(p.kind, p.severity) for p in some] == [("topics_rejected", "warning")]
    assert "orderBookL2:xbtusd" in some[0].detail
    none = find_problems(with_subscriptions(Subscriptions("s1", "ingest-1", 0, ("a", "b"))), None, LIMITS)
    assert [(p.kind, p.severity) for p in none] == [("topics_rejected", "error")]
    assert find_problems(with_subscriptions(Subscriptions("s1", "ingest-1", 2, ())), None, LIMITS) == ()
