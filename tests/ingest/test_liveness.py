"""The pure parts of the heartbeat and the connection's health: lost streams, silence, topics."""

from __future__ import annotations

from services.core.keys import INGEST_ALIVE_RENEW, INGEST_ALIVE_TTL_MS, SESSION_LOST_AFTER
from services.ingest.connection import PING_AFTER, PONG_TIMEOUT, WatchStep, subscription_verdict, watch_step
from services.ingest.liveness import (
    HEARD_WITHIN,
    PUBLISH_STALL_AFTER,
    UNKNOWN,
    StreamWatch,
    renewal_withheld,
)
from services.ingest.session import TopicState
from services.runtime.config import load_settings


def test_a_stream_that_keeps_what_ingest_appended_is_fine_whatever_others_add() -> None:
    watch = StreamWatch()
    assert watch.check("s", acked_before=10, entries_added=10, sent_after=10) is None
    assert watch.check("s", acked_before=15, entries_added=40, sent_after=15) is None  # others appended too
    assert watch.check("s", acked_before=15, entries_added=40, sent_after=15) is None


def test_a_stream_that_vanished_or_went_back_lost_entries() -> None:
    watch = StreamWatch()
    watch.check("s", 10, 10, 10)
    assert watch.check("s", 10, 0, 10) == 10, "FLUSHALL: the stream is gone, the script answers 0"
    assert watch.check("s", 10, 0, 10) is None, "said once: nothing more was appended since"
    assert watch.check("s", 13, 3, 13) is None, "recreated by ingest's next entries"
    assert watch.check("s", 20, 5, 20) == 10, "a failover to a replica that missed the last writes"
    assert StreamWatch().check("t", 5, 0, 5) == 5, "gone before the first look"


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


def test_the_watchdog_pings_after_a_short_silence_and_gives_up_on_an_unanswered_ping() -> None:
    assert watch_step(PING_AFTER - 0.01, None) is WatchStep.WAIT
    assert watch_step(PING_AFTER, None) is WatchStep.PING
    assert watch_step(PING_AFTER + 1, PONG_TIMEOUT - 0.01) is WatchStep.WAIT, "the ping's answer may be on its way"
    assert watch_step(PING_AFTER + PONG_TIMEOUT, PONG_TIMEOUT) is WatchStep.GIVE_UP


def test_the_liveness_key_is_renewed_only_while_data_can_land() -> None:
    assert renewal_withheld(None, 0.0) == "not_connected"
    assert renewal_withheld(0.0, 0.0) is None
    assert renewal_withheld(HEARD_WITHIN - 0.01, PUBLISH_STALL_AFTER - 0.01) is None, "quiet, answering pings"
    assert renewal_withheld(HEARD_WITHIN, 0.0) == "venue_silent"
    assert renewal_withheld(0.0, PUBLISH_STALL_AFTER) == "publishing_stalled"
    assert renewal_withheld(HEARD_WITHIN, PUBLISH_STALL_AFTER) == "venue_silent"


def test_a_silent_venue_or_stuck_publisher_is_called_lost_within_health_stale_after() -> None:
    # A quiet venue's ping is answered well inside the window, or the key would flicker.
    assert PING_AFTER * 2 <= HEARD_WITHIN
    # The last renewal comes at most one renewal interval before the window closes; the key then lives
    # its TTL; consumers need SESSION_LOST_AFTER of absence, checked about once a second.
    worst = max(HEARD_WITHIN, PUBLISH_STALL_AFTER) + INGEST_ALIVE_TTL_MS / 1000 + SESSION_LOST_AFTER + 1.0
    assert worst < load_settings(environ={}).health_stale_after
    assert INGEST_ALIVE_RENEW < INGEST_ALIVE_TTL_MS / 1000


def test_no_topic_subscribed_is_a_problem_and_some_rejected_is_degraded() -> None:
    rejected, subscribed, pending = TopicState.REJECTED, TopicState.SUBSCRIBED, TopicState.PENDING
    assert subscription_verdict({"a": rejected, "b": rejected}) == (
        "no topic subscribed: the venue rejected all 2", ["a", "b"])
    assert subscription_verdict({"b": rejected, "a": subscribed}) == (None, ["b"])
    assert subscription_verdict({"a": pending, "b": rejected}) == (None, ["b"])
    assert subscription_verdict({}) == (None, [])
