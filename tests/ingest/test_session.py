"""The sans-I/O session: subscription requests and replies, routing, per-stream seq, gap markers."""

from __future__ import annotations

import orjson
import pytest

from services.core.bitmex import ErrorReply, ProtocolError, SubscriptionAck, TableFrame, parse_frame
from services.core.entries import GAP_ACTION
from services.core.keys import Keys
from services.ingest.session import SUBSCRIBE_ARGS_LIMIT, Entry, Session, TopicState, malformed_target

KEYS = Keys("p")
SYMBOLS = tuple(f"S{n:02d}" for n in range(15))


def session(symbols: tuple[str, ...] = SYMBOLS, extra: tuple[str, ...] = ()) -> Session:
    return Session("sess1", KEYS, "orderBookL2", symbols, extra)


def l2_text(symbol: str, action: str = "update", ident: int = 1) -> str:
    row = {"symbol": symbol, "id": ident, "side": "Buy", "size": 5, "price": 10.5}
    return orjson.dumps({"table": "orderBookL2", "action": action, "data": [row]}).decode()


def ob10_text(symbol: str) -> str:
    return orjson.dumps({"table": "orderBook10", "action": "update",
                         "data": [{"symbol": symbol, "bids": [[1.0, 2]], "asks": [[2.0, 3]],
                                   "timestamp": "2024-01-01T00:00:00.000Z"}]}).decode()


def route(s: Session, text: str) -> list[Entry]:
    frame = parse_frame(text)
    assert isinstance(frame, TableFrame)
    return s.route(frame, text, 1_700_000_000_000_000, 42)


def state_of(s: Session, topic: str) -> TopicState:
    return s.topics[topic]


def ack(topic: str, request: dict[str, object], op: str = "subscribe", success: bool = True) -> SubscriptionAck:
    frame = parse_frame(orjson.dumps({"success": success, op: topic, "request": request}))
    assert isinstance(frame, SubscriptionAck)
    return frame


def test_subscribe_requests_cover_every_topic_in_requests_of_at_most_20_args() -> None:
    s = session(extra=("trade",))
    requests = [orjson.loads(text) for text in s.subscribe_requests()]
    topics = [topic for request in requests for topic in request["args"]]
    assert all(request["op"] == "subscribe" for request in requests)
    assert all(len(request["args"]) <= SUBSCRIBE_ARGS_LIMIT for request in requests)
    assert len(requests) == 3  # 45 topics
    assert sorted(topics) == sorted(f"{table}:{symbol}" for symbol in SYMBOLS
                                    for table in ("orderBookL2", "orderBook10", "trade"))
    assert set(s.topics.values()) == {TopicState.PENDING}


def test_frames_get_their_text_unchanged_and_a_seq_per_stream_from_1() -> None:
    s = session()
    texts = [l2_text("S00", "partial"), l2_text("S01", "partial"), l2_text("S00"), l2_text("S00", "delete")]
    entries = [entry for text in texts for entry in route(s, text)]
    assert [(e.stream, e.fields["seq"], e.fields["action"]) for e in entries] == [
        ("p:l2:{S00}", "1", "partial"), ("p:l2:{S01}", "1", "partial"),
        ("p:l2:{S00}", "2", "update"), ("p:l2:{S00}", "3", "delete")]
    assert [e.fields["frame"] for e in entries] == texts
    assert {e.fields["session"] for e in entries} == {"sess1"}
    assert entries[0].fields["recv_us"] == "1700000000000000"
    assert entries[0].received_ns == 42


def test_orderbook10_goes_to_its_own_stream_with_its_own_seq() -> None:
    s = session()
    route(s, l2_text("S00"))
    [entry] = route(s, ob10_text("S00"))
    assert (entry.stream, entry.fields["seq"], entry.fields["table"]) == ("p:ob10:{S00}", "1", "orderBook10")


def test_other_tables_are_published_only_when_configured() -> None:
    text = orjson.dumps({"table": "trade", "action": "insert",
                         "data": [{"symbol": "S00", "price": 1.0, "size": 2}]}).decode()
    assert route(session(), text) == []
    [entry] = route(session(extra=("trade",)), text)
    assert entry.stream == "p:trade:{S00}"


def test_a_frame_mixing_symbols_is_split_and_each_part_reserialized() -> None:
    rows = [{"symbol": sym, "id": n, "side": "Buy", "size": 1, "price": 1.0}
            for n, sym in enumerate(["S00", "S01", "S00"])]
    text = orjson.dumps({"table": "orderBookL2", "action": "insert", "data": rows}).decode()
    entries = route(session(), text)
    assert [e.stream for e in entries] == ["p:l2:{S00}", "p:l2:{S01}"]
    parts = [orjson.loads(e.fields["frame"]) for e in entries]
    assert [part["data"] for part in parts] == [[rows[0], rows[2]], [rows[1]]]
    assert all(part["table"] == "orderBookL2" and part["action"] == "insert" for part in parts)


def test_a_frame_naming_no_symbol_is_refused() -> None:
    text = orjson.dumps({"table": "orderBookL2", "action": "partial", "data": []}).decode()
    with pytest.raises(ProtocolError, match="names no symbol"):
        route(session(), text)


def test_acks_settle_topics_and_an_error_is_charged_to_the_topic_it_answers() -> None:
    s = session(("A", "B", "C"))
    request = orjson.loads(s.subscribe_requests()[0])
    # The venue answers topic by topic, in order; "Unknown or expired symbol." names no topic.
    assert s.on_ack(ack("orderBookL2:A", request), 0, 0).settled == (("orderBookL2:A", TopicState.SUBSCRIBED),)
    s.on_ack(ack("orderBook10:A", request), 0, 0)
    error = ErrorReply(400, "Unknown or expired symbol.", {}, request)
    assert s.on_error(error).settled == (("orderBookL2:B", TopicState.REJECTED),)
    s.on_error(error)
    for topic in ("orderBookL2:C", "orderBook10:C"):
        s.on_ack(ack(topic, request), 0, 0)
    assert s.topics_in(TopicState.REJECTED) == ["orderBookL2:B", "orderBook10:B"]
    assert s.errors == {"orderBookL2:B": "Unknown or expired symbol.", "orderBook10:B": "Unknown or expired symbol."}
    assert s.topics_in(TopicState.PENDING) == []
    assert len(s.topics_in(TopicState.SUBSCRIBED)) == 4


def test_an_error_naming_a_topic_rejects_that_topic() -> None:
    s = session(("A", "B"))
    request = orjson.loads(s.subscribe_requests()[0])
    reaction = s.on_error(ErrorReply(400, "Unknown table: orderBook10:B", {}, request))
    assert reaction.settled == (("orderBook10:B", TopicState.REJECTED),)


def test_already_subscribed_means_subscribed() -> None:
    s = session(("A",))
    request = orjson.loads(s.subscribe_requests()[0])
    error = ErrorReply(400, "You are already subscribed to this topic:orderBookL2:A.", {}, request)
    assert s.on_error(error).settled == (("orderBookL2:A", TopicState.SUBSCRIBED),)


def test_resubscribe_unsubscribes_then_on_the_ack_writes_a_gap_and_subscribes_again() -> None:
    s = session(("A",))
    request = orjson.loads(s.subscribe_requests()[0])
    s.on_ack(ack("orderBookL2:A", request), 0, 0)
    route(s, l2_text("A", "partial"))
    unsubscribe = s.resubscribe("A")
    assert unsubscribe is not None and orjson.loads(unsubscribe) == {"op": "unsubscribe", "args": ["orderBookL2:A"]}
    assert s.resubscribe("A") is None  # already on its way
    route(s, l2_text("A"))  # still flowing until the venue acks the unsubscribe
    reaction = s.on_ack(ack("orderBookL2:A", orjson.loads(unsubscribe), "unsubscribe"), 7, 8)
    assert [orjson.loads(text) for text in reaction.send] == [{"op": "subscribe", "args": ["orderBookL2:A"]}]
    [gap] = reaction.entries
    assert (gap.stream, gap.fields["action"], gap.fields["seq"], gap.fields["reason"]) == (
        "p:l2:{A}", GAP_ACTION, "3", "resubscribe")
    assert state_of(s, "orderBookL2:A") is TopicState.PENDING
    s.on_ack(ack("orderBookL2:A", orjson.loads(reaction.send[0])), 0, 0)
    assert state_of(s, "orderBookL2:A") is TopicState.SUBSCRIBED
    assert [e.fields["seq"] for e in route(s, l2_text("A", "partial"))] == ["4"]


def test_resubscribing_a_rejected_topic_asks_for_it_again() -> None:
    s = session(("A",))
    request = orjson.loads(s.subscribe_requests()[0])
    s.on_error(ErrorReply(400, "Unknown or expired symbol.", {}, request))
    again = s.resubscribe("A")
    assert again is not None and orjson.loads(again) == {"op": "subscribe", "args": ["orderBookL2:A"]}
    assert "orderBookL2:A" not in s.errors


def test_disconnect_gaps_cover_both_book_streams_of_subscribed_symbols_and_skip_rejected_topics() -> None:
    s = session(("A", "B", "C"))
    request = orjson.loads(s.subscribe_requests()[0])
    s.on_ack(ack("orderBookL2:A", request), 0, 0)
    s.on_ack(ack("orderBook10:A", request), 0, 0)
    s.on_error(ErrorReply(400, "Unknown or expired symbol.", {}, request))  # orderBookL2:B
    s.on_error(ErrorReply(400, "Unknown or expired symbol.", {}, request))  # orderBook10:B
    route(s, l2_text("A", "partial"))
    route(s, l2_text("A"))
    route(s, ob10_text("A"))
    gaps = s.disconnect_gaps("closed", 5, 6)
    assert [(g.stream, g.fields["seq"], g.fields["reason"], g.fields["table"]) for g in gaps] == [
        ("p:l2:{A}", "3", "closed", "orderBookL2"), ("p:l2:{C}", "1", "closed", "orderBookL2"),
        ("p:ob10:{A}", "2", "closed", "orderBook10"), ("p:ob10:{C}", "1", "closed", "orderBook10")]
    assert all(g.fields["action"] == GAP_ACTION and "frame" not in g.fields for g in gaps)


def test_frames_of_symbols_nobody_subscribed_are_set_aside_not_published() -> None:
    s = session(("A",))
    assert route(s, l2_text("Z")) == []
    rows = [{"symbol": sym, "id": n, "side": "Buy", "size": 1, "price": 1.0} for n, sym in enumerate(["A", "Y"])]
    [entry] = route(s, orjson.dumps({"table": "orderBookL2", "action": "insert", "data": rows}).decode())
    assert orjson.loads(entry.fields["frame"])["data"] == rows[:1]
    assert s.foreign == ["Z", "Y"]
    assert not any(stream.endswith(("{Z}", "{Y}")) for stream in (e.stream for e in s.disconnect_gaps("x", 0, 0)))


L2, OB10 = frozenset({"orderBookL2"}), frozenset({"orderBook10"})
BOOKS, NONE = L2 | OB10, frozenset[str]()


@pytest.mark.parametrize(("raw", "expected"), [
    (b'{"table":"orderBookL2","action":"update","data":[{"symbol":"A","id":1,"side":"buy","size":1}]}',
     (L2, frozenset({"A"}))),
    (b'{"table":"orderBookL2","action":"upsert","data":[{"symbol":"A"},{"symbol":"B"}]}', (L2, frozenset({"A", "B"}))),
    (b'{"table":"orderBookL2","action":"update","filter":{"symbol":"A"},"data":[{"id":1}]}', (L2, frozenset({"A"}))),
    (b'{"table":"orderBookL2","action":"update","data":[{"symbol":"A"},{"id":1}]}', (L2, NONE)),
    (b'{"table":"orderBookL2","action":"partial","data":[]}', (L2, NONE)),
    (b'{"table":"orderBookL2","action":"update","data":[{"symbol":"A","id":1', (L2, NONE)),
    (b'{"table":"orderBookL2","action":"partial","filter":{"symbol":"A"},"data":[{"sym', (L2, frozenset({"A"}))),
    (b'{"table":"orderBook10","action":"update","data":[{"symbol":"A","bids":5}]}', (OB10, frozenset({"A"}))),
    (b'{"table":"orderBook10","action":"update","data":[{"symbol":"A"', (OB10, NONE)),
    (b'{"table":"orderBook10","action":"partial","filter":{"symbol":"A"},"data":[{"sym', (OB10, frozenset({"A"}))),
    (b"<html>502 Bad Gateway</html>", (BOOKS, NONE)),
    (b"[1,2,3]", (BOOKS, NONE)),
    (b"\xff\xfe", (BOOKS, NONE)),
    (b'{"tabel":"orderBookL2"}', (BOOKS, NONE)),
    (b'{"table":7,"data":[{"symbol":"A"}]}', (BOOKS, frozenset({"A"}))),
    (b'{"table":"orderBookL2_25","action":"update","data":[]}', (NONE, NONE)),
    (b'{"table":"trade","action":"insert","data":[{"symbol":"A"', (NONE, NONE)),
    (b'{"success":"yes","subscribe":"orderBookL2:A"}', (NONE, NONE)),
])
def test_a_malformed_frame_is_attributed_only_as_far_as_it_shows(
        raw: bytes, expected: tuple[frozenset[str], frozenset[str]]) -> None:
    assert malformed_target(raw, ("orderBookL2", "orderBook10")) == expected


def test_malformed_gaps_go_to_the_named_symbol_else_to_every_book_stream_not_rejected() -> None:
    s = session(("A", "B", "C"))
    request = orjson.loads(s.subscribe_requests()[0])
    s.on_ack(ack("orderBookL2:A", request), 0, 0)
    s.on_ack(ack("orderBook10:A", request), 0, 0)
    s.on_error(ErrorReply(400, "Unknown or expired symbol.", {}, request))  # orderBookL2:B
    route(s, l2_text("A", "partial"))
    [named] = s.malformed_gaps(b'{"table":"orderBookL2","action":"update","data":[{"symbol":"A","size":1.5}]}', 3, 4)
    assert (named.stream, named.fields["seq"], named.fields["reason"], named.fields["action"]) == (
        "p:l2:{A}", "2", "malformed", GAP_ACTION)
    assert [gap.stream for gap in s.malformed_gaps(b"garbage", 3, 4)] == [
        "p:l2:{C}", "p:ob10:{A}", "p:ob10:{B}", "p:ob10:{C}"], "A's L2 stream has its gap already"
    assert s.malformed_gaps(b"garbage", 3, 4) == []
    route(s, l2_text("A"))
    route(s, ob10_text("C"))
    assert [gap.stream for gap in s.malformed_gaps(b"garbage", 3, 4)] == ["p:l2:{A}", "p:ob10:{C}"]
    route(s, ob10_text("A"))
    route(s, ob10_text("C"))
    [ob10] = s.malformed_gaps(b'{"table":"orderBook10","action":"update","data":[{"symbol":"C","bids":5}]}', 3, 4)
    assert (ob10.stream, ob10.fields["seq"], ob10.fields["table"]) == ("p:ob10:{C}", "5", "orderBook10")
    assert [gap.stream for gap in s.malformed_gaps(b'{"table":"orderBook10","action":"update"', 3, 4)] == [
        "p:ob10:{A}"], "no symbol shown: every ob10 stream not marked already"
    assert s.malformed_gaps(b'{"table":"trade","action":"insert","data":5}', 3, 4) == []
    assert s.malformed_gaps(b'{"table":"orderBookL2","action":"x","data":[{"symbol":"Z"}]}', 3, 4) == []
    assert s.malformed_gaps(b'{"table":"orderBookL2","action":"x","data":[{"symbol":"B"}]}', 3, 4) == []
    assert s.foreign == ["Z"]


def test_resubscribing_an_orderbook10_topic_gaps_its_own_stream() -> None:
    s = session(("A",))
    request = orjson.loads(s.subscribe_requests()[0])
    for topic in ("orderBookL2:A", "orderBook10:A"):
        s.on_ack(ack(topic, request), 0, 0)
    route(s, ob10_text("A"))
    unsubscribe = s.resubscribe("A", "orderBook10")
    assert unsubscribe is not None and orjson.loads(unsubscribe) == {"op": "unsubscribe", "args": ["orderBook10:A"]}
    assert s.resubscribe("A", "orderBook10") is None, "one on its way"
    reaction = s.on_ack(ack("orderBook10:A", orjson.loads(unsubscribe), op="unsubscribe"), 7, 8)
    assert [orjson.loads(text) for text in reaction.send] == [{"op": "subscribe", "args": ["orderBook10:A"]}]
    [gap] = reaction.entries
    assert (gap.stream, gap.fields["seq"], gap.fields["reason"]) == ("p:ob10:{A}", "2", "resubscribe")
    assert state_of(s, "orderBookL2:A") is TopicState.SUBSCRIBED


def test_many_resubscriptions_go_out_in_as_few_requests_as_the_venue_allows() -> None:
    symbols = tuple(f"S{n:02d}" for n in range(SUBSCRIBE_ARGS_LIMIT + 5))
    s = session(symbols)
    for text in s.subscribe_requests():
        request = orjson.loads(text)
        for topic in request["args"]:
            s.on_ack(ack(topic, request), 0, 0)
    unsubscribes = [orjson.loads(text) for text in s.resubscribe_many(symbols)]
    assert [(request["op"], len(request["args"])) for request in unsubscribes] == [
        ("unsubscribe", SUBSCRIBE_ARGS_LIMIT), ("unsubscribe", 5)]
    assert s.resubscribe_many(symbols) == []  # every one on its way
    first = unsubscribes[0]
    reactions = [s.on_ack(ack(topic, first, "unsubscribe"), 0, 0) for topic in first["args"]]
    assert all(not reaction.send for reaction in reactions[:-1]), "no subscribe before the request is answered"
    assert [orjson.loads(text) for text in reactions[-1].send] == [{"op": "subscribe", "args": first["args"]}]
    assert sum(len(reaction.entries) for reaction in reactions) == SUBSCRIBE_ARGS_LIMIT  # one gap each
    # An error answering the last topic of a request still sends the subscribe of those unsubscribed.
    second = unsubscribes[1]
    for topic in second["args"][:-1]:
        s.on_ack(ack(topic, second, "unsubscribe"), 0, 0)
    last = s.on_error(ErrorReply(400, f"cannot unsubscribe {second['args'][-1]}", {}, second))
    assert [orjson.loads(text) for text in last.send] == [{"op": "subscribe", "args": second["args"][:-1]}]
    assert state_of(s, second["args"][-1]) is TopicState.SUBSCRIBED
