"""The BitMEX-protocol server: websocket connections, the REST truth and the fault controls on one port.

Like the venue's host, one port serves it all: the websocket at `/realtime` (`?subscribe=` accepted), the
REST truth at `/api/v1/orderBook/L2`, `/healthz`, and `/_faults/*` to break things on purpose during a
drill. Plain HTTP requests are answered from `process_request`, before any websocket handshake, which is
also where a connection attempt gets its HTTP 429 when the venue's connection rate limit is simulated.

The server knows nothing of markets or recordings: a `Feed` (the simulator or a replay) does the
publishing, the server routes each client's protocol events to it.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
from collections.abc import Mapping
from typing import Any, Final, Protocol
from urllib.parse import parse_qs, urlsplit

import orjson
from prometheus_client import Counter, Gauge
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from services.core.text import excerpt
from services.exchange import messages
from services.exchange.client import Client
from services.exchange.faults import INJECTED_ERROR, FaultPlan, RejectGate
from services.exchange.protocol import Event, Reply, Session, Subscribed, Topic, Venue
from services.runtime.config import ConfigError
from services.runtime.lifecycle import listen_error
from services.runtime.logs import EventLog

REALTIME_PATH: Final = "/realtime"
ORDER_BOOK_PATH: Final = "/api/v1/orderBook/L2"
FAULTS_PREFIX: Final = "/_faults/"
DEFAULT_REST_DEPTH: Final = 25
CLOSE_TIMEOUT: Final = 2.0
MAX_REST_DEPTH: Final = 100_000
MAX_FAULT_COUNT: Final = 1000
"""Malformed frames per client, or connection attempts to reject, that one fault request may ask for."""
MAX_FAULT_SECONDS: Final = 300.0

CLIENTS = Gauge("bookstream_exchange_clients", "Connected websocket clients")
CONNECTIONS = Counter("bookstream_exchange_connections", "Websocket connections accepted")
REJECTED = Counter("bookstream_exchange_connections_rejected", "Connection attempts answered with HTTP 429")


class Feed(Protocol):
    """What publishes to clients: the simulator or a replay."""

    venue: Venue

    @property
    def finished(self) -> bool: ...

    def welcome(self) -> bytes: ...

    def subscribe(self, client: Client, topic: Topic) -> None: ...

    def unsubscribe(self, client: Client, topic: Topic) -> None: ...

    def disconnect(self, client: Client) -> None: ...

    async def run(self, stop: asyncio.Event) -> None: ...

    def rest_book(self, symbol: str, depth: int | None) -> bytes | None: ...

    def status(self) -> dict[str, Any]: ...


class HttpError(Exception):
    """An HTTP request the server refuses; `status` and message go back in BitMEX's REST error shape."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ExchangeServer:
    """Accepts clients, routes their requests to the feed and applies the fault plan."""

    def __init__(self, feed: Feed, plan: FaultPlan, max_queue_bytes: int, seed: int, log: EventLog) -> None:
        self.feed = feed
        self.plan = plan
        self.max_queue_bytes = max_queue_bytes
        self.clients: set[Client] = set()
        self.rejects = RejectGate(plan.reject, plan.retry_after)
        self.port: int | None = None
        self._numbers = itertools.count(1)
        self._drop_rng = random.Random(f"drop-every:{seed}")
        self._log = log

    async def serve(self, host: str, port: int, stop: asyncio.Event, describe: Mapping[str, Any]) -> int:
        """Serve until `stop` is set; the start-up line gives the URL and whatever `describe` holds."""
        try:
            # No compression: a frame is serialized once for every client, deflate would redo work per client.
            server = await serve(self._connection, host, port, process_request=self._http, compression=None,
                                 close_timeout=CLOSE_TIMEOUT)
        except OSError as exc:
            raise ConfigError(listen_error("--port", host, port, exc, "choose another --port (or --host)")) from None
        async with server:
            self.port = int(next(iter(server.sockets)).getsockname()[1])
            shown_host = "127.0.0.1" if host in ("", "0.0.0.0") else host
            self._log.info("listening", url=f"ws://{shown_host}:{self.port}{REALTIME_PATH}", **describe)
            feed = asyncio.create_task(self.feed.run(stop))
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait((feed, stopped), return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if feed.done() and not stop.is_set():
                try:
                    feed.result()
                except Exception:
                    self._log.error("feed_failed", exc_info=True)
                    return 1
        await feed
        return 0

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy once listening; `idle` says the feed is done and every queue is empty."""
        idle = self.feed.finished and all(client.idle for client in self.clients)
        return self.port is not None, {
            **self.feed.status(), "clients": len(self.clients),
            "queued_bytes": sum(client.queued_bytes for client in self.clients), "idle": idle}

    # Websocket connections

    async def _connection(self, ws: ServerConnection) -> None:
        client = Client(ws, next(self._numbers), Session(self.feed.venue), self.plan, self.max_queue_bytes,
                        self._log)
        self.clients.add(client)
        CLIENTS.set(len(self.clients))
        CONNECTIONS.inc()
        assert ws.request is not None  # set by the opening handshake
        query = parse_qs(urlsplit(ws.request.path).query)
        peer = ws.remote_address
        self._log.info("client_connected", client=client.number, peer=f"{peer[0]}:{peer[1]}" if peer else "",
                       subscribe=",".join(query.get("subscribe", [])))
        writer = asyncio.create_task(client.write())
        dropper = None
        if self.plan.drop_every:
            delay = self.plan.drop_every * self._drop_rng.uniform(0.5, 1.5)
            dropper = asyncio.get_running_loop().call_later(delay, client.drop, "drop-every fault")
        try:
            client.send(self.feed.welcome())
            for value in query.get("subscribe", []):
                self._dispatch(client, client.session.subscribe_query(value))
            async for message in ws:
                self._dispatch(client, client.session.receive(message))
        except ConnectionClosed:
            pass
        finally:
            if dropper is not None:
                dropper.cancel()
            self.feed.disconnect(client)
            writer.cancel()
            self.clients.discard(client)
            CLIENTS.set(len(self.clients))
            self._log.info("client_disconnected", client=client.number, sent=client.sent, code=ws.close_code)

    def _dispatch(self, client: Client, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, Reply):
                client.send(event.text)
            elif isinstance(event, Subscribed):
                self.feed.subscribe(client, event.topic)
            else:
                self.feed.unsubscribe(client, event.topic)

    # HTTP

    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        query = {name: values[-1] for name, values in parse_qs(url.query).items()}
        try:
            if url.path == REALTIME_PATH:
                return self._admit(connection)
            if url.path == "/healthz":
                healthy, detail = self.health()
                return _json(connection, 200 if healthy else 503, orjson.dumps({"healthy": healthy, **detail}))
            if url.path == ORDER_BOOK_PATH:
                return self._order_book(connection, query)
            if url.path.startswith(FAULTS_PREFIX):
                return _json(connection, 200, orjson.dumps(self._fault(url.path.removeprefix(FAULTS_PREFIX), query)))
            raise HttpError(404, "Not Found")
        except HttpError as exc:
            return _json(connection, exc.status,
                         orjson.dumps({"error": {"message": str(exc), "name": "HTTPError"}}))

    def _admit(self, connection: ServerConnection) -> Response | None:
        if not self.rejects.take():
            return None
        REJECTED.inc()
        self._log.info("connection_rejected", status=429, still_rejecting=self.rejects.remaining)
        response = _json(connection, 429, messages.rate_limited_body(self.rejects.retry_after).encode())
        if self.rejects.retry_after:
            response.headers["Retry-After"] = str(math.ceil(self.rejects.retry_after))
        return response

    def _order_book(self, connection: ServerConnection, query: dict[str, str]) -> Response:
        symbol = query.get("symbol")
        if not symbol:
            raise HttpError(400, "'symbol' is required")
        depth = _integer(query, "depth", DEFAULT_REST_DEPTH, 0, MAX_REST_DEPTH)
        body = self.feed.rest_book(symbol, depth or None)
        if body is None:
            raise HttpError(404, "this feed keeps no order book")
        return _json(connection, 200, body)

    def _fault(self, name: str, query: dict[str, str]) -> dict[str, Any]:
        """Apply a fault to the server or to every connected client now; the reply says what was done.

        Every count and duration is bounded: the endpoints are for drills, not for growing the server's
        memory or hanging it.
        """
        clients = list(self.clients)
        applied: dict[str, Any] = {}
        if name == "drop":
            for client in clients:
                client.drop("drop requested")
        elif name == "reject":
            count = _integer(query, "count", 1, 1, MAX_FAULT_COUNT)
            retry_after = _seconds(query, "retry_after", self.rejects.retry_after, MAX_FAULT_SECONDS)
            self.rejects.arm(count, retry_after)
            self._log.info("fault_requested", fault=name, count=count, retry_after=retry_after)
            return {"fault": name, "rejecting": self.rejects.remaining}
        elif name == "malformed":
            applied["count"] = count = _integer(query, "count", 1, 1, MAX_FAULT_COUNT)
            for client in clients:
                for _ in range(count):
                    client.inject(client.faults.malformed())
        elif name == "stall":
            applied["seconds"] = seconds = _seconds(query, "seconds", 5.0, MAX_FAULT_SECONDS)
            for client in clients:
                client.stall_now(seconds)
        elif name == "error":
            for client in clients:
                client.inject(INJECTED_ERROR)
        else:
            raise HttpError(404, f"unknown fault {excerpt(name, 40)!r} (drop, reject, malformed, stall, error)")
        self._log.info("fault_requested", fault=name, clients=len(clients), **applied)
        return {"fault": name, "clients": len(clients)}


def _integer(query: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    if not raw.isdecimal() or len(raw) > len(str(high)) or not low <= int(raw) <= high:
        raise HttpError(400, f"{name!r} must be an integer from {low} to {high}, got {excerpt(raw, 20)!r}")
    return int(raw)


def _seconds(query: dict[str, str], name: str, default: float, high: float) -> float:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0 <= value <= high:  # also refuses nan
        raise HttpError(400, f"{name!r} must be a number of seconds from 0 to {high:g}, got {excerpt(raw, 20)!r}")
    return value


def _json(connection: ServerConnection, status: int, body: bytes) -> Response:
    response = connection.respond(status, body.decode())
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = "application/json; charset=utf-8"
    return response
