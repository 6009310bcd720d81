"""The read loop's round trip, built and taken apart without Redis."""

from __future__ import annotations

import pytest
from redis.exceptions import ResponseError

from services.top10.round_trip import round_trip
from services.top10.scripts import MARK_GAP, STORE_TOP10

READ = ("XREADGROUP", "GROUP", "top10", "me", "STREAMS", "s", ">")
SIGNAL = ("XREAD", "COUNT", 200, "BLOCK", 10, "STREAMS", "activity", "1-0")
LEARN = ("XREVRANGE", "activity", "+", "-", "COUNT", 1)


def test_replies_are_split_by_what_each_command_was() -> None:
    trip = round_trip({b"s1": [b"1-0", b"2-0"], b"s2": [b"3-0"]}, [(["k1"], [1]), (["k2"], [2])], [(["k3"], [3])],
                      [READ, READ], SIGNAL)
    assert trip.commands[0] == ("XACK", b"s1", "top10", b"1-0", b"2-0")
    assert trip.commands[2][:2] == ("EVALSHA", STORE_TOP10.sha) and trip.commands[4][:2] == ("EVALSHA", MARK_GAP.sha)
    assert trip.commands[5:] == [READ, READ, SIGNAL]
    refused = ResponseError("NOGROUP")
    replies = trip.split([2, 1, 17, 0, 1, refused, None, [b"signals"]])
    assert replies.acks == [2, 1] and replies.stores == [17, 0] and replies.gap_marks == [1]
    assert replies.reads == [refused, None] and replies.signal == [b"signals"]


def test_learning_where_the_activity_stream_ends_goes_before_the_reads() -> None:
    trip = round_trip({b"s1": [b"1-0"]}, [], [], [READ], LEARN, signal_first=True)
    assert trip.commands == [LEARN, ("XACK", b"s1", "top10", b"1-0"), READ]
    replies = trip.split([[], 1, None])
    assert (replies.signal, replies.acks, replies.reads) == ([], [1], [None])


def test_a_read_alone_is_a_round_trip_too() -> None:
    trip = round_trip({}, [], [], [], SIGNAL)
    assert trip.commands == [SIGNAL]
    replies = trip.split([None])
    assert (replies.acks, replies.stores, replies.gap_marks, replies.reads, replies.signal) == ([], [], [], [], None)


def test_a_reply_count_that_does_not_match_is_refused() -> None:
    with pytest.raises(ValueError, match="2 replies to 1 commands"):
        round_trip({}, [], [], [], SIGNAL).split([None, None])
