"""A hostile BitMEX-protocol venue for the tests: a websocket server the test scripts frame by frame.

`bookstream exchange` behaves like a well-run venue; this one does whatever the test says: send any text
at any moment, reject chosen topics, answer the connection with HTTP 429 and any `Retry-After`, go
silent (no data, no `pong`). It speaks just enough of the protocol for ingest: the welcome, one ack or
error per subscribed topic, the unsubscribe ack, `pong`. It runs on its own event loop in a thread, so
the (synchronous) test drives it while the real `bookstream` processes talk to it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from testkit.harness import free_port, wait_until

WELCOME = orjson.dumps({"info": "Welcome to the hostile venue.", "version": "test", "timestamp": "",
                        "docs": "", "limit": {"remaining": 40}}).decode()
OnSubscribe = Callable[[str], list[str]]


class Venue:
    """One listening port; at most one client connection is scripted at a time (the latest)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.rejected_topics: set[str] = set()
        """Topics answered with a 400 error frame instead of an ack."""
        self.on_subscribe: OnSubscribe = lambda topic: []
        """Frames to send right after acking a subscribe of `topic` (e.g. its partial)."""
        self.silent = False
        """Say nothing at all (no welcome, ack or `pong`) while the connections stay open."""
        self.http_429: tuple[int, str] | None = None
        """(how many more connection attempts to refuse, their Retry-After header)."""
        self.attempts = 0
        self.connections = 0
        self.requests: list[dict[str, Any]] = []
        self.pings = 0
        self._current: ServerConnection | None = None
        self._loop = asyncio.new_event_loop()
        self._server: Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/realtime"

    def start(self) -> Venue:
        async def listen() -> Server:
            return await serve(self._handle, "127.0.0.1", self.port, process_request=self._gate,
                               ping_interval=None, compression=None, max_size=None)

        self._thread.start()
        self._server = self._run(listen())
        return self

    def stop(self) -> None:
        server = self._server
        if server is not None:
            server.close()
            self._run(server.wait_closed())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def send(self, *texts: str | bytes) -> None:
        """Send each text to the connected client, in order, as one websocket message each."""
        async def send_all() -> None:
            connection = self._current
            assert connection is not None, "no client connected"
            for text in texts:
                await connection.send(text)

        self._run(send_all())

    def drop(self) -> None:
        connection = self._current
        if connection is not None:
            self._run(connection.close())

    def subscribed(self, topic: str) -> int:
        """How many subscribe requests named `topic` so far."""
        return sum(topic in request.get("args", ()) for request in self.requests if request.get("op") == "subscribe")

    def wait_connections(self, count: int, timeout: float = 20) -> None:
        wait_until(lambda: self.connections >= count, timeout, f"{count} connection(s) to the venue")

    def _run(self, coroutine: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(10)

    def _gate(self, connection: ServerConnection, request: Request) -> Response | None:
        self.attempts += 1
        if self.http_429 is not None and self.http_429[0] > 0:
            remaining, retry_after = self.http_429
            self.http_429 = (remaining - 1, retry_after)
            response = connection.respond(429, "Too Many Requests\n")
            response.headers["Retry-After"] = retry_after
            return response
        return None

    async def _handle(self, connection: ServerConnection) -> None:
        self.connections += 1
        self._current = connection
        try:
            if not self.silent:
                await connection.send(WELCOME)
            async for message in connection:
                await self._answer(connection, message)
        except ConnectionClosed:
            pass

    async def _answer(self, connection: ServerConnection, message: str | bytes) -> None:
        if message == "ping":
            self.pings += 1
            if not self.silent:
                await connection.send("pong")
            return
        request = orjson.loads(message)
        self.requests.append(request)
        if self.silent:
            return
        op = request.get("op")
        for topic in request.get("args", ()):
            if op == "unsubscribe":
                await connection.send(orjson.dumps({"success": True, "unsubscribe": topic, "request": request}))
            elif topic in self.rejected_topics:
                await connection.send(orjson.dumps({"status": 400, "error": f"Unknown table or symbol: {topic}",
                                                    "meta": {}, "request": request}))
            else:
                await connection.send(orjson.dumps({"success": True, "subscribe": topic, "request": request}))
                for text in self.on_subscribe(topic):
                    await connection.send(text)
