"""The session-loss decision, fed looks at liveness keys by hand."""

from __future__ import annotations

from services.l2builder.liveness import SessionWatch

LOST_AFTER = 3.0


def test_a_session_is_lost_only_after_its_key_is_absent_continuously() -> None:
    watch = SessionWatch(LOST_AFTER)
    assert watch.observe({"s1": True, "s2": False}, now=0) == set()
    assert watch.observe({"s1": True, "s2": False}, now=2.9) == set()
    assert watch.absent_for("s2", 2.9) == 2.9 and watch.absent_for("s1", 2.9) == 0
    assert watch.observe({"s1": True, "s2": False}, now=3.0) == {"s2"}
    assert watch.observe({"s1": True, "s2": False}, now=4.0) == {"s2"}


def test_one_look_with_the_key_present_starts_the_count_again() -> None:
    watch = SessionWatch(LOST_AFTER)
    watch.observe({"s1": False}, now=0)
    watch.observe({"s1": True}, now=2)  # the first liveness write came after the first entries
    assert watch.observe({"s1": False}, now=4) == set()
    assert watch.observe({"s1": False}, now=6.9) == set()
    assert watch.observe({"s1": False}, now=7) == {"s1"}


def test_a_renewed_session_is_never_lost_however_quiet() -> None:
    watch = SessionWatch(LOST_AFTER)
    assert all(watch.observe({"s1": True}, now=tick * 0.5) == set() for tick in range(1000))


def test_sessions_no_longer_watched_are_forgotten() -> None:
    watch = SessionWatch(LOST_AFTER)
    watch.observe({"s1": False}, now=0)
    watch.observe({}, now=1)  # no live book of s1 any more
    assert watch.absent_for("s1", 1) == 0
    assert watch.observe({"s1": False}, now=3.5) == set()  # a new partial of s1: counted from here
    assert watch.observe({"s1": False}, now=6.5) == {"s1"}
