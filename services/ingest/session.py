"""One websocket session's protocol state, without I/O: subscriptions, routing, per-stream sequence numbers.

A `Session` lives exactly as long as one connection. It turns table frames into stream entries whose
`seq` counts 1, 2, 3... per stream within the session, gap markers included, so a hole can only mean loss.
It tracks the venue's answer to every topic it asked for and drives resubscriptions. The connection loop
feeds it what arrives and sends what it returns; everything here is plain data, tested without a socket.

The venue answers each topic of a request separately and in order (an ack naming the topic, or an error
that echoes the whole request), so an error is charged to the topic it names, else to the request's first
topic still unanswered. A topic the venue rejects is kept out of the way of the others: it is reported,
and every other topic proceeds.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

import orjson

from services.common.bitmex import (
    ORDERBOOK10_TABLE,
    ErrorReply,
    ProtocolError,
    SubscriptionAck,
    TableFrame,
    split_by_symbol,
)
from services.common.entries import encode_entry, encode_gap
from services.common.keys import Keys

SUBSCRIBE_ARGS_LIMIT: Final = 20
"""BitMEX refuses a request with more topics than this."""


class TopicState(enum.StrEnum):
    PENDING = "pending"
    SUBSCRIBED = "subscribed"
    REJECTED = "rejected"
    RESUBSCRIBING = "resubscribing"


@dataclass(slots=True)
class Entry:
    """A stream entry waiting for XADD: its stream, its fields, and when its frame arrived.

    `received_ns` is `time.perf_counter_ns()` at receipt: the start of the receive->acknowledged latency.
    Not frozen only because a frozen dataclass costs three times as much to create, once per frame.
    """

    stream: str
    symbol: str
    fields: dict[str, str]
    received_ns: int


@dataclass(frozen=True, slots=True)
class Reaction:
    """What a reply from the venue changed: topics it settled, requests to send, entries to publish."""

    settled: tuple[tuple[str, TopicState], ...] = ()
    send: tuple[str, ...] = ()
    entries: tuple[Entry, ...] = ()


class Session:
    """Subscriptions and stream sequence numbers of one connection, identified by `session_id`."""

    def __init__(self, session_id: str, keys: Keys, l2_table: str, symbols: Iterable[str],
                 extra_tables: Iterable[str] = ()) -> None:
        self.id = session_id
        self.l2_table = l2_table
        self.symbols = tuple(symbols)
        self.tables = (l2_table, ORDERBOOK10_TABLE, *extra_tables)
        self._stream_of: dict[str, Callable[[str], str]] = {
            l2_table: keys.l2_stream, ORDERBOOK10_TABLE: keys.ob10_stream,
            **{table: _table_stream(keys, table) for table in extra_tables}}
        self._streams: dict[tuple[str, str], str] = {}
        self._seq: dict[str, int] = {}
        self.topics: dict[str, TopicState] = {}
        self.errors: dict[str, str] = {}
        self._unanswered: list[tuple[dict[str, Any], list[str]]] = []

    def subscribe_requests(self) -> list[str]:
        """The subscribe requests for every topic, at most `SUBSCRIBE_ARGS_LIMIT` topics each."""
        topics = [f"{table}:{symbol}" for symbol in self.symbols for table in self.tables]
        for topic in topics:
            self.topics[topic] = TopicState.PENDING
        return [self._request("subscribe", topics[start:start + SUBSCRIBE_ARGS_LIMIT])
                for start in range(0, len(topics), SUBSCRIBE_ARGS_LIMIT)]

    def route(self, frame: TableFrame, text: str, recv_us: int, received_ns: int) -> list[Entry]:
        """The entries of a table frame: one, or one per symbol when its rows mix symbols; none for a table
        that is not published. Raises ProtocolError when the frame names no symbol at all."""
        if frame.table not in self._stream_of:
            return []
        if frame.symbol is not None:
            return [self._entry(frame.table, frame.symbol, frame.action, text, recv_us, received_ns)]
        parts = split_by_symbol(frame)
        if any(part.symbol is None for part in parts):
            raise ProtocolError(f"{frame.table} {frame.action} frame names no symbol", text)
        message = orjson.loads(text)
        return [self._entry(frame.table, part.symbol, frame.action,
                            orjson.dumps({**message, "data": part.data}).decode(), recv_us, received_ns)
                for part in parts if part.symbol is not None]

    def on_ack(self, ack: SubscriptionAck, recv_us: int, received_ns: int) -> Reaction:
        """Settle the topic an ack names; the unsubscribe half of a resubscription sends the subscribe half."""
        self._answer(ack.request, ack.topic)
        state = self.topics.get(ack.topic)
        if state is None:
            return Reaction()
        if ack.op == "subscribe":
            if ack.success:
                self.errors.pop(ack.topic, None)
                return self._settle(ack.topic, TopicState.SUBSCRIBED)
            return self._reject(ack.topic, "subscription refused")
        if state is not TopicState.RESUBSCRIBING:
            return Reaction()
        if not ack.success:
            return self._settle(ack.topic, TopicState.SUBSCRIBED)
        # The venue sends nothing more for the topic from here until the fresh partial: the gap goes here.
        table, _, symbol = ack.topic.partition(":")
        gap = self._gap(table, symbol, "resubscribe", recv_us, received_ns)
        self.topics[ack.topic] = TopicState.PENDING
        return Reaction(((ack.topic, TopicState.PENDING),), (self._request("subscribe", [ack.topic]),), (gap,))

    def on_error(self, error: ErrorReply) -> Reaction:
        """Charge an error frame to the topic it answers, if it answers one of our requests."""
        request = error.request
        if request is None or request.get("op") not in ("subscribe", "unsubscribe"):
            return Reaction()
        topic = self._answer_error(request, error.error)
        state = self.topics.get(topic) if topic is not None else None
        if topic is None or state is None:
            return Reaction()
        if request["op"] == "unsubscribe":
            return self._settle(topic, TopicState.SUBSCRIBED) if state is TopicState.RESUBSCRIBING else Reaction()
        if "already subscribed" in error.error:
            return self._settle(topic, TopicState.SUBSCRIBED)
        return self._reject(topic, error.error)

    def resubscribe(self, symbol: str) -> str | None:
        """The request that starts a fresh partial of `symbol`'s L2 topic, or None when one is on its way.

        A subscribed topic is unsubscribed first (its ack sends the subscribe); a rejected one is simply
        asked for again.
        """
        topic = f"{self.l2_table}:{symbol}"
        state = self.topics.get(topic)
        if state is TopicState.SUBSCRIBED:
            self.topics[topic] = TopicState.RESUBSCRIBING
            return self._request("unsubscribe", [topic])
        if state is TopicState.REJECTED:
            self.topics[topic] = TopicState.PENDING
            self.errors.pop(topic, None)
            return self._request("subscribe", [topic])
        return None

    def disconnect_gaps(self, reason: str, recv_us: int, received_ns: int) -> list[Entry]:
        """A gap marker for the L2 stream of every symbol subscribed (or heard from) in this session."""
        symbols = [symbol for symbol in self.symbols
                   if self.topics.get(f"{self.l2_table}:{symbol}") is not TopicState.REJECTED]
        symbols += [symbol for table, symbol in self._streams if table == self.l2_table and symbol not in symbols]
        return [self._gap(self.l2_table, symbol, reason, recv_us, received_ns) for symbol in symbols]

    @property
    def delivered(self) -> bool:
        """True once a frame was routed to a stream: the connection has proved it works."""
        return bool(self._seq)

    def topics_in(self, state: TopicState) -> list[str]:
        return [topic for topic, current in self.topics.items() if current is state]

    def _entry(self, table: str, symbol: str, action: str, text: str, recv_us: int, received_ns: int) -> Entry:
        stream = self._stream(table, symbol)
        seq = self._seq.get(stream, 0) + 1
        self._seq[stream] = seq
        return Entry(stream, symbol, encode_entry(text, table, action, self.id, seq, recv_us), received_ns)

    def _gap(self, table: str, symbol: str, reason: str, recv_us: int, received_ns: int) -> Entry:
        stream = self._stream(table, symbol)
        seq = self._seq.get(stream, 0) + 1
        self._seq[stream] = seq
        return Entry(stream, symbol, encode_gap(table, self.id, seq, recv_us, reason), received_ns)

    def _stream(self, table: str, symbol: str) -> str:
        stream = self._streams.get((table, symbol))
        if stream is None:
            stream = self._streams[table, symbol] = self._stream_of[table](symbol)
        return stream

    def _request(self, op: str, topics: list[str]) -> str:
        request = {"op": op, "args": topics}
        self._unanswered.append((request, list(topics)))
        return orjson.dumps(request).decode()

    def _settle(self, topic: str, state: TopicState) -> Reaction:
        self.topics[topic] = state
        return Reaction(((topic, state),))

    def _reject(self, topic: str, reason: str) -> Reaction:
        self.errors[topic] = reason
        return self._settle(topic, TopicState.REJECTED)

    def _answer(self, request: dict[str, Any] | None, topic: str) -> None:
        for index, (sent, waiting) in enumerate(self._unanswered):
            if topic in waiting and (request is None or request == sent):
                waiting.remove(topic)
                if not waiting:
                    del self._unanswered[index]
                return

    def _answer_error(self, request: dict[str, Any], text: str) -> str | None:
        for index, (sent, waiting) in enumerate(self._unanswered):
            if request == sent:
                topic = next((name for name in waiting if name in text), waiting[0])
                waiting.remove(topic)
                if not waiting:
                    del self._unanswered[index]
                return topic
        return None


def _table_stream(keys: Keys, table: str) -> Callable[[str], str]:
    return lambda symbol: keys.table_stream(table, symbol)
