"""The pure parts of the heartbeat and the connection's health: lost streams, silence, topics."""

from __future__ import annotations

from services.ingest.connection import PING_AFTER, PONG_TIMEOUT, subscription_verdict, venue_silent
from services.ingest.liveness import MISSING, UNKNOWN, StreamWatch
from services.ingest.session import TopicState


def test_a_stream_that_keeps_what_ingest_appended_is_fine_whatever_others_add() -> None:
    watch = StreamWatch()
    assert watch.check("s", acked_before=10, entries_added=10, sent_after=10) is None
    assert watch.check("s", acked_before=15, entries_added=40, sent_after=15) is None  # others appended too
    assert watch.check("s", acked_before=15, entries_added=40, sent_after=15) is None


def test_a_stream_that_vanished_or_went_back_lost_entries() -> None:
    watch = StreamWatch()
    watch.check("s", 10, 10, 10)
    assert watch.check("s", 10, MISSING, 10) == 10, "FLUSHALL"
    assert watch.check("s", 10, MISSING, 10) is None, "said once: nothing more was appended since"
    assert watch.check("s", 13, 3, 13) is None, "recreated by ingest's next entries"
    assert watch.check("s", 20, 5, 20) == 10, "a failover to a replica that missed the last writes"
    assert StreamWatch().check("t", 5, MISSING, 5) == 5, "gone before the first look"


def test_a_batch_in_flight_during_a_look_is_never_a_false_alarm() -> None:
    watch = StreamWatch()
    # 10 acknowledged before asking; a batch of 5 was in flight and had landed when Redis answered.
    assert watch.check("s", acked_before=10, entries_added=15, sent_after=15) is None
    assert watch.check("s", acked_before=15, entries_added=15, sent_after=15) is None
    # The same batch had not landed yet: counted in full as seen, and found next time.
    watch = StreamWatch()
    assert watch.check("s", acked_before=10, entries_added=10, sent_after=15) is None
    assert watch.check("s", acked_before=15, entries_added=15, sent_after=15) is None
    assert watch.check("s", acked_before=20, entries_added=17, sent_after=20) == 20


def test_a_stream_redis_cannot_count_is_not_judged() -> None:
    watch = StreamWatch()
    watch.check("s", 10, 10, 10)
    assert watch.check("s", 20, UNKNOWN, 20) is None
    assert watch.check("s", 30, 30, 30) is None


def test_the_venue_is_silent_only_after_the_whole_ping_pong_window() -> None:
    assert not venue_silent(100.0, 100.0 + PING_AFTER + PONG_TIMEOUT - 0.01)
    assert venue_silent(100.0, 100.0 + PING_AFTER + PONG_TIMEOUT)


def test_no_topic_subscribed_is_a_problem_and_some_rejected_is_degraded() -> None:
    rejected, subscribed, pending = TopicState.REJECTED, TopicState.SUBSCRIBED, TopicState.PENDING
    assert subscription_verdict({"a": rejected, "b": rejected}) == (
        "no topic subscribed: the venue rejected all 2", ["a", "b"])
    assert subscription_verdict({"b": rejected, "a": subscribed}) == (None, ["b"])
    assert subscription_verdict({"a": pending, "b": rejected}) == (None, ["b"])
    assert subscription_verdict({}) == (None, [])
