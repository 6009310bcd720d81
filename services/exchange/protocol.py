"""One connection's side of the BitMEX realtime protocol, without I/O: client text in, events out.

`Session.receive()` parses a request, checks it against what the venue offers and returns what to do, in
order: replies to send (acks, errors, `pong`) and topics to start or stop. The server turns a `Subscribed`
event into a partial right after the ack, so the ack always comes first, as on BitMEX.

Behaviour copied from the venue: one ack per topic; `args` may be a single string; an empty `args` gets
no answer; unsubscribing from a topic that is not subscribed is still acknowledged; errors carry the
request back and leave the connection open; the text `ping` is answered by the text `pong`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import orjson

from services.exchange import messages

MAX_ARGS: Final = 20
PING: Final = "ping"
SUBSCRIBE: Final = "subscribe"
UNSUBSCRIBE: Final = "unsubscribe"


@dataclass(frozen=True, slots=True)
class Topic:
    """A subscription: a table and one symbol, or every symbol of the table when `symbol` is None."""

    table: str
    symbol: str | None = None

    @classmethod
    def parse(cls, arg: str) -> Topic:
        table, colon, symbol = arg.partition(":")
        return cls(table, symbol if colon else None)

    def __str__(self) -> str:
        return self.table if self.symbol is None else f"{self.table}:{self.symbol}"


@dataclass(frozen=True, slots=True)
class Venue:
    """What a server offers: its tables and its symbols."""

    tables: frozenset[str]
    symbols: frozenset[str]


class Reply(NamedTuple):
    text: bytes


class Subscribed(NamedTuple):
    topic: Topic


class Unsubscribed(NamedTuple):
    topic: Topic


Event = Reply | Subscribed | Unsubscribed


class Session:
    """The subscriptions of one connection and the answers to its requests."""

    def __init__(self, venue: Venue) -> None:
        self.venue = venue
        self.topics: set[Topic] = set()

    def receive(self, text: str | bytes) -> list[Event]:
        """Events answering one message from the client."""
        if text == PING:
            return [Reply(messages.PONG)]
        try:
            request = orjson.loads(text)
        except orjson.JSONDecodeError:
            return [Reply(messages.unrecognized_request({}))]
        if type(request) is not dict:
            return [Reply(messages.unrecognized_request({}))]
        op = request.get("op")
        if op not in (SUBSCRIBE, UNSUBSCRIBE):
            # BitMEX echoes an unknown op back as the literal "UNKNOWN".
            echoed = {**request, "op": "UNKNOWN"} if "op" in request else request
            return [Reply(messages.unrecognized_request(echoed))]
        args = request.get("args")
        if isinstance(args, str):
            args = [args]
        if not args:
            return []
        if type(args) is not list or not all(isinstance(arg, str) for arg in args):
            return [Reply(messages.unrecognized_request(request))]
        if len(args) > MAX_ARGS:
            return [Reply(messages.too_many_args(MAX_ARGS, request))]
        return self._apply(op, args, request)

    def subscribe_query(self, value: str) -> list[Event]:
        """Events for `?subscribe=a,b` on the connection URL: the same as a subscribe request."""
        args = [arg for arg in value.split(",") if arg]
        return self._apply(SUBSCRIBE, args, {"op": SUBSCRIBE, "args": args}) if args else []

    def _apply(self, op: str, args: list[str], request: dict[str, Any]) -> list[Event]:
        events: list[Event] = []
        for arg in args:
            topic = Topic.parse(arg)
            if topic.table not in self.venue.tables:
                events.append(Reply(messages.unknown_table(topic.table, request)))
            elif topic.symbol is not None and topic.symbol not in self.venue.symbols:
                events.append(Reply(messages.unknown_symbol(request)))
            elif op == SUBSCRIBE:
                if topic in self.topics:
                    events.append(Reply(messages.already_subscribed(arg, request)))
                    continue
                self.topics.add(topic)
                events += [Reply(messages.subscription_ack(op, arg, request)), Subscribed(topic)]
            else:
                events.append(Reply(messages.subscription_ack(op, arg, request)))
                if topic in self.topics:
                    self.topics.discard(topic)
                    events.append(Unsubscribed(topic))
        return events
