"""The consumers' session tracker, fed looks at liveness keys by hand, and the lookup against a real Redis."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from services.core.keys import Keys
from services.core.liveness import IngestLiveness, SessionTracker
from services.runtime.redis_client import sessions_alive

LOST_AFTER, RETAIN = 3.0, 60.0


def look(tracker: SessionTracker, alive: dict[str, bool], now: float) -> list[str]:
    """One tick of a consumer whose books name the sessions of `alive`; the sessions newly lost."""
    tracker.watch(alive, now)
    return tracker.observe(alive, now).lost


def test_a_session_is_lost_only_after_its_key_is_absent_continuously() -> None:
    tracker = SessionTracker(LOST_AFTER, RETAIN)
    assert look(tracker, {"s1": True, "s2": False}, 0) == []
    assert look(tracker, {"s1": True, "s2": False}, 2.9) == []
    assert tracker.absent_for("s2", 2.9) == 2.9 and tracker.absent_for("s1", 2.9) == 0
    assert look(tracker, {"s1": True, "s2": False}, 3.0) == ["s2"]
    assert look(tracker, {"s1": True, "s2": False}, 4.0) == [], "reported once"
    assert tracker.is_lost("s2") and not tracker.is_lost("s1") and tracker.lost == {"s2"}
    assert tracker.lost_reason("s2", 4.0) == "ingest_lost: session s2 has had no liveness key for 4.0 s"


def test_one_look_with_the_key_present_starts_the_count_again() -> None:
    tracker = SessionTracker(LOST_AFTER, RETAIN)
    look(tracker, {"s1": False}, 0)
    look(tracker, {"s1": True}, 2)  # the first liveness write came after the first entries
    assert look(tracker, {"s1": False}, 4) == []
    assert look(tracker, {"s1": False}, 6.9) == []
    assert look(tracker, {"s1": False}, 7) == ["s1"]


def test_a_renewed_session_is_never_lost_however_quiet() -> None:
    tracker = SessionTracker(LOST_AFTER, RETAIN)
    assert all(look(tracker, {"s1": True}, tick * 0.5) == [] for tick in range(1000))


def test_a_lost_session_whose_key_returns_is_back() -> None:
    tracker = SessionTracker(LOST_AFTER, RETAIN)
    look(tracker, {"s1": False}, 0)
    look(tracker, {"s1": False}, 3)
    tracker.watch([], 4)
    changes = tracker.observe({"s1": True}, 4)
    assert (changes.lost, changes.back) == ([], ["s1"]) and not tracker.is_lost("s1")


def test_a_lost_session_is_remembered_after_nothing_names_it_then_forgotten() -> None:
    tracker = SessionTracker(LOST_AFTER, RETAIN)
    look(tracker, {"old": False}, 0)
    look(tracker, {"old": False}, 4)
    # No book names it any more (its books are stale), yet it is still looked up and known lost: a late
    # partial or snapshot of it must not make anything live.
    assert tracker.watch(["new"], 50) == ["old", "new"]
    assert tracker.observe({"old": False, "new": True}, 50).lost == []
    assert tracker.is_lost("old")
    assert tracker.watch(["new"], 64.1) == ["new"] and not tracker.is_lost("old")
    assert tracker.observe({"unknown": False}, 65).lost == [], "only tracked sessions are judged"
    assert not tracker.is_lost("never-seen") and not tracker.is_lost(None)


def test_the_lookup_says_which_liveness_keys_exist(redis_url: str, key_prefix: str) -> None:
    keys = Keys(key_prefix)

    async def scenario() -> dict[str, bool]:
        client = Redis.from_url(redis_url)
        try:
            await client.set(keys.ingest_alive("s1"), "ingest", px=10_000)
            assert await sessions_alive(client, keys, []) == {}
            return await sessions_alive(client, keys, ["s1", "s2"])
        finally:
            await client.aclose()

    assert asyncio.run(scenario()) == {"s1": True, "s2": False}


def test_the_liveness_value_says_who_and_how_the_subscriptions_went() -> None:
    said = IngestLiveness("ingest-1", 3, ("orderBookL2:xbtusd",))
    assert IngestLiveness.decode(said.encode()) == said
    assert IngestLiveness.decode(b"ingest-old") == IngestLiveness("ingest-old"), "a bare name, as ingest once wrote"
    assert IngestLiveness.decode(b'{"instance": 5, "subscribed": "x", "rejected": 7}') == IngestLiveness("5")
