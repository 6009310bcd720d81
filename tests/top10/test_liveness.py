"""Which keys of lost sessions to read, mark and report (when a session is lost: tests/unit/test_liveness.py)."""

from __future__ import annotations

from redis.exceptions import ResponseError

from services.top10.liveness import KeyLiveness, keys_to_mark, marked_per_session, read_keys


def test_only_keys_not_stale_yet_of_lost_sessions_are_marked() -> None:
    keys = {"A": KeyLiveness("gone", "live"), "B": KeyLiveness("gone", "stale"), "C": KeyLiveness("alive", "live"),
            "D": KeyLiveness("gone", "")}
    assert keys_to_mark(keys, {"gone"}) == [("A", "gone"), ("D", "gone")]
    assert keys_to_mark(keys, set()) == []


def test_the_keys_read_are_those_naming_a_valid_session() -> None:
    symbols = ["A", "B", "C", "D", "E"]
    replies = [[b"s-1", b"live"], [None, None], ResponseError("WRONGTYPE"), [b"bad session!", b"live"],
               [b"s-2", None]]
    read = read_keys(symbols, replies)
    assert read.keys == {"A": KeyLiveness("s-1", "live"), "E": KeyLiveness("s-2", "")}
    assert read.invalid_sessions == [b"bad session!"]


def test_only_the_keys_the_script_marked_are_reported_per_session() -> None:
    marks = [("A", "s-1"), ("B", "s-1"), ("C", "s-2"), ("D", "s-3")]
    assert marked_per_session(marks, [1, 0, 1, 0]) == {"s-1": ["A"], "s-2": ["C"]}
