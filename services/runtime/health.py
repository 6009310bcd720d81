"""A tiny HTTP server for `/healthz` and Prometheus `/metrics`, shared by every service.

It is a few lines on `asyncio.start_server` rather than a web framework: two read-only endpoints do not
justify a dependency, and it runs on the service's own event loop so health reflects that loop's liveness.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from services.core.text import escape_controls

HealthCheck = Callable[[], tuple[bool, dict[str, Any]]]

ERROR_TEXT_LIMIT = 160
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S*")
_HOST_PORT = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|\d{1,3}(?:\.\d{1,3}){3}|[A-Za-z][\w.-]*)(?::\d{1,5})(?!\w)"
                        r"|\b\d{1,3}(?:\.\d{1,3}){3}\b")
# pymongo appends its configured timeouts and the whole topology description (every host) to the first clause.
_DRIVER_TAILS = (" (configured timeouts", ", Timeout:", ", Topology Description:")


def safe_error(exc: BaseException) -> str:
    """A short description of `exc` fit for /healthz and log lines: its class and the gist of its first line.

    Error texts name hosts, ports and whole URLs (credentials included); those become `<url>` and `<host>`,
    control characters are escaped, and the text is cut to a line.
    """
    text = (str(exc).strip().splitlines() or [""])[0]
    for tail in _DRIVER_TAILS:
        text = text.split(tail, 1)[0]
    text = _HOST_PORT.sub("<host>", _URL.sub("<url>", text))
    if len(text) > ERROR_TEXT_LIMIT:
        text = text[:ERROR_TEXT_LIMIT] + "..."
    return escape_controls(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


class HealthServer:
    """Serves `GET /healthz` (200 or 503 with a JSON body) and `GET /metrics` until `close()`."""

    def __init__(self, host: str, port: int, check: HealthCheck,
                 registry: CollectorRegistry = REGISTRY) -> None:
        self._host, self._port, self._check, self._registry = host, port, check, registry
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int | None:
        """The bound port (useful when started with port 0 in tests), or None when not serving."""
        if self._server is None or not self._server.sockets:
            return None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self._host, self._port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _respond(self, path: str) -> tuple[int, str, bytes]:
        if path == "/healthz":
            try:
                healthy, detail = self._check()
            except Exception as exc:  # a broken check is itself a reason to report unhealthy, not to hang up
                healthy, detail = False, {"error": f"health check failed: {safe_error(exc)}"}
            body = orjson.dumps({"healthy": healthy, **detail}, default=str)
            return (200 if healthy else 503), "application/json", body
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self._registry)
        return 404, "text/plain", b"not found\n"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            method, _, rest = request.partition(b" ")
            path = rest.split(b" ", 1)[0].split(b"?", 1)[0].decode("latin-1")
            if method not in (b"GET", b"HEAD"):
                status, ctype, body = 405, "text/plain", b"method not allowed\n"
            else:
                status, ctype, body = self._respond(path)
            reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}[status]
            head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode("latin-1")
            writer.write(head if method == b"HEAD" else head + body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
