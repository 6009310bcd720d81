"""Which keys of lost sessions to mark (when a session is lost: tests/unit/test_liveness.py)."""

from __future__ import annotations

from services.top10.liveness import KeyLiveness, keys_to_mark


def test_only_keys_not_stale_yet_of_lost_sessions_are_marked() -> None:
    keys = {"A": KeyLiveness("gone", "live"), "B": KeyLiveness("gone", "stale"), "C": KeyLiveness("alive", "live"),
            "D": KeyLiveness("gone", "")}
    assert keys_to_mark(keys, {"gone"}) == [("A", "gone"), ("D", "gone")]
    assert keys_to_mark(keys, set()) == []
