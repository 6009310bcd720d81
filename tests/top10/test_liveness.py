"""The pure decisions behind liveness: when a session is lost, which keys to mark, how often to log."""

from __future__ import annotations

from services.top10.liveness import KeyLiveness, SessionWatch, keys_to_mark, session_lost
from services.top10.ratelimit import LogRateLimit

LOST_AFTER = 3.0


def test_a_session_is_lost_only_after_its_key_was_absent_for_the_whole_grace() -> None:
    assert not session_lost(None, 100.0, LOST_AFTER)
    assert not session_lost(100.0, 102.9, LOST_AFTER)
    assert session_lost(100.0, 103.0, LOST_AFTER)


def test_only_keys_not_stale_yet_of_lost_sessions_are_marked() -> None:
    keys = {"A": KeyLiveness("gone", "live"), "B": KeyLiveness("gone", "stale"), "C": KeyLiveness("alive", "live"),
            "D": KeyLiveness("gone", "")}
    assert keys_to_mark(keys, {"gone"}) == [("A", "gone"), ("D", "gone")]
    assert keys_to_mark(keys, set()) == []


def test_the_watch_calls_a_session_lost_once_and_back_when_its_key_returns() -> None:
    watch = SessionWatch(LOST_AFTER, retain=60.0)
    watch.reference(["s1", "s2"], 0.0)
    assert sorted(watch.watched()) == ["s1", "s2"]
    assert watch.observe({"s1": False, "s2": True}, 0.0).lost == []
    # Present once in between: the absence starts over (a quiet symbol of a healthy session stays live).
    assert watch.observe({"s1": True, "s2": True}, 2.0).lost == []
    assert watch.observe({"s1": False, "s2": True}, 2.5).lost == []
    assert watch.observe({"s1": False, "s2": True}, 5.4).lost == []
    changes = watch.observe({"s1": False, "s2": True}, 5.5)
    assert (changes.lost, changes.back) == (["s1"], [])
    assert watch.is_lost("s1") and not watch.is_lost("s2") and watch.lost == {"s1"}
    assert watch.observe({"s1": False, "s2": True}, 9.0).lost == [], "reported once"
    changes = watch.observe({"s1": True, "s2": True}, 10.0)
    assert (changes.lost, changes.back) == ([], ["s1"])
    assert not watch.is_lost("s1")


def test_a_session_no_key_names_is_forgotten_after_the_retention() -> None:
    watch = SessionWatch(LOST_AFTER, retain=60.0)
    watch.reference(["old"], 0.0)
    watch.observe({"old": False}, 0.0)
    watch.observe({"old": False}, 4.0)
    watch.reference(["new"], 50.0)
    assert watch.is_lost("old"), "still known lost, so a late snapshot of it is written stale"
    watch.reference(["new"], 61.0)
    assert watch.watched() == ["new"] and not watch.is_lost("old")
    assert watch.observe({"unknown": False}, 62.0).lost == []
    assert not watch.is_lost("never-seen")


def test_the_log_rate_limit_lets_one_through_per_interval_and_counts_the_rest() -> None:
    limit = LogRateLimit(10.0)
    assert limit.allow(0.0) == 0
    assert [limit.allow(now) for now in (1.0, 5.0, 9.9)] == [None, None, None]
    assert limit.allow(10.0) == 3
    assert limit.allow(12.0) is None
    assert limit.allow(100.0) == 1
