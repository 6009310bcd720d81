"""One websocket session's protocol state, without I/O: subscriptions, routing, per-stream sequence numbers.

A `Session` lives exactly as long as one connection. It turns table frames into stream entries whose
`seq` counts 1, 2, 3... per stream within the session, gap markers included, so a hole can only mean loss.
It tracks the venue's answer to every topic it asked for and drives resubscriptions. The connection loop
feeds it what arrives and sends what it returns; everything here is plain data, tested without a socket.

The venue answers each topic of a request separately and in order (an ack naming the topic, or an error
that echoes the whole request), so an error is charged to the topic it names, else to the request's first
topic still unanswered. A topic the venue rejects is kept out of the way of the others: it is reported,
and every other topic proceeds.

Every topic is requested per symbol, so a frame is published only for a symbol of the subscription; any
other is set aside in `foreign` for the connection loop to count and log. A frame that cannot be parsed is
never simply skipped: when it may belong to a book table (L2 or orderBook10), `malformed_gaps` turns it into
a gap marker on that table's stream of the symbol it names, or on every subscribed one when it names none
that can be trusted. The consumers of both tables serve books, and a book built past a lost frame is wrong.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

import orjson

from services.core.bitmex import (
    ORDERBOOK10_TABLE,
    ErrorReply,
    ProtocolError,
    SubscriptionAck,
    TableFrame,
    split_by_symbol,
)
from services.core.entries import encode_entry, encode_gap
from services.core.keys import Keys

SUBSCRIBE_ARGS_LIMIT: Final = 20
"""BitMEX refuses a request with more topics than this."""
MALFORMED_GAP_REASON: Final = "malformed"
REPLY_KEYS: Final = frozenset({"error", "subscribe", "unsubscribe", "info", "success"})
"""Keys that make a JSON object without `table` a (broken) reply to a request rather than table data."""
_CUT_TABLE = re.compile(rb'\A\s*\{\s*"table"\s*:\s*"([^"\\]*)"')
_CUT_FILTER_SYMBOL = re.compile(rb'"filter"\s*:\s*\{\s*"symbol"\s*:\s*"([^"\\]{1,64})"')


class TopicState(enum.StrEnum):
    PENDING = "pending"
    SUBSCRIBED = "subscribed"
    REJECTED = "rejected"
    RESUBSCRIBING = "resubscribing"


@dataclass(slots=True)
class Entry:
    """A stream entry waiting for XADD: its stream, its fields, and when its frame arrived.

    `received_ns` is `time.perf_counter_ns()` at receipt: the start of the receive->acknowledged latency.
    Not frozen only because a frozen dataclass costs more to create, and one is created per frame.
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
        self.book_tables = (l2_table, ORDERBOOK10_TABLE)
        """The tables whose streams get gap markers: their consumers serve books that a lost frame makes wrong."""
        self._stream_of: dict[str, Callable[[str], str]] = {
            l2_table: keys.l2_stream, ORDERBOOK10_TABLE: keys.ob10_stream,
            **{table: _table_stream(keys, table) for table in extra_tables}}
        self._streams: dict[tuple[str, str], str] = {}
        self._seq: dict[str, int] = {}
        self.topics: dict[str, TopicState] = {}
        self.errors: dict[str, str] = {}
        self._unanswered: list[tuple[dict[str, Any], list[str]]] = []
        self._subscribed_symbols = frozenset(self.symbols)
        self._unsubscribed: list[str] = []
        """Topics unsubscribed for a resubscription, to subscribe again when their request is answered."""
        self._gapped: set[str] = set()
        """Streams whose latest entry is a gap marker: another malformed frame there adds nothing."""
        self.foreign: list[str] = []
        """Symbols of frames not published because no subscription names them; the caller empties it."""

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
        symbol = frame.symbol
        if symbol is not None:
            if symbol in self._subscribed_symbols:
                return [self._entry(frame.table, symbol, frame.action, text, recv_us, received_ns)]
            self.foreign.append(symbol)
            return []
        parts = split_by_symbol(frame)
        if any(part.symbol is None for part in parts):
            raise ProtocolError(f"{frame.table} {frame.action} frame names no symbol", text)
        self.foreign += [part.symbol for part in parts
                         if part.symbol is not None and part.symbol not in self._subscribed_symbols]
        message = orjson.loads(text)
        return [self._entry(frame.table, part.symbol, frame.action,
                            orjson.dumps({**message, "data": part.data}).decode(), recv_us, received_ns)
                for part in parts if part.symbol is not None and part.symbol in self._subscribed_symbols]

    def malformed_gaps(self, raw: bytes, recv_us: int, received_ns: int) -> list[Entry]:
        """Gap markers (reason `malformed`) for a frame that could not be parsed or routed.

        Nothing when the frame is plainly not book data (another table, a broken reply); else a gap on each
        book table's stream it may belong to, for each symbol it names whose topic was not rejected, or for
        all of them when it names none (a frame cut short may hide rows of symbols its visible part does
        not show, unless its filter names the one symbol of the whole frame). Named symbols that are not
        subscribed are `foreign`. A stream whose latest entry is a gap already gets none: a flood of garbage
        is one marker per stream until data flows there again, not one per frame.
        """
        tables, named = malformed_target(raw, self.book_tables)
        if not tables:
            return []
        if named:
            self.foreign += [symbol for symbol in sorted(named) if symbol not in self._subscribed_symbols]
        return [self._gap(table, symbol, MALFORMED_GAP_REASON, recv_us, received_ns)
                for table in self.book_tables if table in tables
                for symbol in self._gap_symbols(table)
                if (not named or symbol in named) and self._stream(table, symbol) not in self._gapped]

    def on_ack(self, ack: SubscriptionAck, recv_us: int, received_ns: int) -> Reaction:
        """Settle the topic an ack names; the unsubscribe halves of resubscriptions send the subscribe half
        once their request is answered in full."""
        answered = self._answer(ack.request, ack.topic)
        return self._resubscribe_after(self._on_ack(ack, recv_us, received_ns), answered)

    def _on_ack(self, ack: SubscriptionAck, recv_us: int, received_ns: int) -> Reaction:
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
        self._unsubscribed.append(ack.topic)
        return Reaction(((ack.topic, TopicState.PENDING),), (), (gap,))

    def _resubscribe_after(self, reaction: Reaction, answered: bool) -> Reaction:
        """`reaction`, plus the subscribe of every topic unsubscribed for a resubscription once a request
        is answered in full: one request for the many topics of one unsubscribe."""
        if not answered or not self._unsubscribed:
            return reaction
        topics, self._unsubscribed = self._unsubscribed, []
        requests = tuple(self._request("subscribe", topics[start:start + SUBSCRIBE_ARGS_LIMIT])
                         for start in range(0, len(topics), SUBSCRIBE_ARGS_LIMIT))
        return Reaction(reaction.settled, reaction.send + requests, reaction.entries)

    def on_error(self, error: ErrorReply) -> Reaction:
        """Charge an error frame to the topic it answers, if it answers one of our requests."""
        request = error.request
        if request is None or request.get("op") not in ("subscribe", "unsubscribe"):
            return Reaction()
        topic, answered = self._answer_error(request, error.error)
        return self._resubscribe_after(self._on_error(request, topic, error.error), answered)

    def _on_error(self, request: dict[str, Any], topic: str | None, text: str) -> Reaction:
        state = self.topics.get(topic) if topic is not None else None
        if topic is None or state is None:
            return Reaction()
        if request["op"] == "unsubscribe":
            return self._settle(topic, TopicState.SUBSCRIBED) if state is TopicState.RESUBSCRIBING else Reaction()
        if "already subscribed" in text:
            return self._settle(topic, TopicState.SUBSCRIBED)
        return self._reject(topic, text)

    def resubscribe(self, symbol: str, table: str | None = None) -> str | None:
        """The request that starts a fresh partial of `symbol`'s topic of `table` (the L2 table unless said),
        or None when one is on its way."""
        requests = self.resubscribe_many([symbol], table)
        return requests[0] if requests else None

    def resubscribe_many(self, symbols: Iterable[str], table: str | None = None) -> list[str]:
        """The requests that start fresh partials of the topics of `table` (the L2 table unless said) of
        `symbols`, as few as the venue allows (SUBSCRIBE_ARGS_LIMIT topics each); a topic whose partial is
        on its way is left out.

        Subscribed topics are unsubscribed first; once the venue has answered every topic of such a request,
        one subscribe asks for all of them again (`on_ack`). A rejected topic is simply asked for again.
        """
        unsubscribe, subscribe = [], []
        for symbol in symbols:
            topic = f"{table or self.l2_table}:{symbol}"
            state = self.topics.get(topic)
            if state is TopicState.SUBSCRIBED:
                self.topics[topic] = TopicState.RESUBSCRIBING
                unsubscribe.append(topic)
            elif state is TopicState.REJECTED:
                self.topics[topic] = TopicState.PENDING
                self.errors.pop(topic, None)
                subscribe.append(topic)
        return [self._request(op, topics[start:start + SUBSCRIBE_ARGS_LIMIT])
                for op, topics in (("unsubscribe", unsubscribe), ("subscribe", subscribe))
                for start in range(0, len(topics), SUBSCRIBE_ARGS_LIMIT)]

    def disconnect_gaps(self, reason: str, recv_us: int, received_ns: int) -> list[Entry]:
        """A gap marker for every book table's stream of every symbol subscribed (or heard from) in this session."""
        return [self._gap(table, symbol, reason, recv_us, received_ns)
                for table in self.book_tables for symbol in self._gap_symbols(table)]

    @property
    def delivered(self) -> bool:
        """True once a frame was routed to a stream: the connection has proved it works."""
        return bool(self._seq)

    def topics_in(self, state: TopicState) -> list[str]:
        return [topic for topic, current in self.topics.items() if current is state]

    def _gap_symbols(self, table: str) -> list[str]:
        """Symbols whose topic of `table` was not rejected, plus any whose stream of `table` this session wrote to."""
        symbols = [symbol for symbol in self.symbols
                   if self.topics.get(f"{table}:{symbol}") is not TopicState.REJECTED]
        symbols += [symbol for written, symbol in self._streams if written == table and symbol not in symbols]
        return symbols

    def _entry(self, table: str, symbol: str, action: str, text: str, recv_us: int, received_ns: int) -> Entry:
        stream = self._stream(table, symbol)
        seq = self._seq.get(stream, 0) + 1
        self._seq[stream] = seq
        if self._gapped:
            self._gapped.discard(stream)
        return Entry(stream, symbol, encode_entry(text, table, action, self.id, seq, recv_us), received_ns)

    def _gap(self, table: str, symbol: str, reason: str, recv_us: int, received_ns: int) -> Entry:
        stream = self._stream(table, symbol)
        seq = self._seq.get(stream, 0) + 1
        self._seq[stream] = seq
        self._gapped.add(stream)
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

    def _answer(self, request: dict[str, Any] | None, topic: str) -> bool:
        """Note the answer for `topic`; True when it was the last its request waited for."""
        for index, (sent, waiting) in enumerate(self._unanswered):
            if topic in waiting and (request is None or request == sent):
                waiting.remove(topic)
                if not waiting:
                    del self._unanswered[index]
                    return True
                return False
        return False

    def _answer_error(self, request: dict[str, Any], text: str) -> tuple[str | None, bool]:
        """The topic an error answers, and whether it was the last its request waited for."""
        for index, (sent, waiting) in enumerate(self._unanswered):
            if request == sent:
                topic = next((name for name in waiting if name in text), waiting[0])
                waiting.remove(topic)
                if not waiting:
                    del self._unanswered[index]
                return topic, not waiting
        return None, False


def _table_stream(keys: Keys, table: str) -> Callable[[str], str]:
    return lambda symbol: keys.table_stream(table, symbol)


def malformed_target(raw: bytes, tables: tuple[str, ...]) -> tuple[frozenset[str], frozenset[str]]:
    """Which of `tables` an unparsable frame may be data of (none: it plainly is not), and the symbols it
    names (empty: unknown).

    Only what the frame shows for certain counts: a frame that is not even a JSON object may be anything,
    data of every table included; a JSON object names its table and, through its filter and rows, its symbols.
    """
    every = frozenset(tables)
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError:
        message = None
    if type(message) is not dict:
        cut_table = _CUT_TABLE.match(raw)
        if cut_table is not None:
            shown = cut_table.group(1).decode("utf-8", "replace")
            if shown not in every:
                return frozenset(), frozenset()
            every = frozenset({shown})
        filter_symbol = _CUT_FILTER_SYMBOL.search(raw)
        named = frozenset() if filter_symbol is None else frozenset({filter_symbol.group(1).decode("utf-8", "replace")})
        return every, named
    if "table" not in message:
        return (frozenset() if REPLY_KEYS.intersection(message) else every), frozenset()
    table = message["table"]
    if type(table) is str:
        if table not in every:
            return frozenset(), frozenset()
        every = frozenset({table})
    frame_filter = message.get("filter")
    filter_symbol = frame_filter.get("symbol") if type(frame_filter) is dict else None
    rows = message.get("data")
    row_symbols = [row.get("symbol") if type(row) is dict else None for row in rows] if type(rows) is list else [None]
    if type(filter_symbol) is str:
        return every, frozenset({filter_symbol, *(symbol for symbol in row_symbols if type(symbol) is str)})
    if not row_symbols or not all(type(symbol) is str for symbol in row_symbols):
        return every, frozenset()
    return every, frozenset(symbol for symbol in row_symbols if type(symbol) is str)
