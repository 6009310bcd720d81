"""A lean Redis connection for one hot loop: hiredis packs the commands and parses the replies, on bare streams.

redis-py's asyncio client spends more CPU on a pipelined round trip (a timeout scope, a lock, the retry
and response-callback layers, per command and per reply) than top10's loop spends on the batch it carries,
and the hot loops make one round trip per batch, on cores they share with ingest and the exchange.
`RedisWire.call` writes the packed commands at once and feeds what arrives to a `hiredis.Reader` until every
reply is in, and nothing else. `python -m bench.wire` measures both clients on the hot loops' round trips,
side by side (figures in bench/RESULTS.md).

It connects as the URL says (`redis://`, `rediss://`, `unix://`; username, password, db), names itself with
CLIENT SETNAME, and speaks RESP2 (no HELLO): replies are plain lists, integers and bytes. One task uses it
at a time. A failure, a timeout or a cancellation in the middle of a call closes the connection, because a
reply left unread would otherwise be taken for the next call's; the next call connects again. Its errors
are redis-py's (the contract of services.runtime), so callers catch `RedisError` whichever client they use.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import hiredis
from redis.asyncio.connection import SSLConnection, parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

Command = Sequence[bytes | str | int | float]

_pack: Callable[[tuple[Any, ...]], bytes] = hiredis.pack_command
"""hiredis.pack_command, typed for any number of arguments (its stub declares a one-element tuple)."""

READ_SIZE = 65536
CONNECT_TIMEOUT = 2.0


class RedisWire:
    def __init__(self, url: str, timeout: float, client_name: str, connect_timeout: float = CONNECT_TIMEOUT) -> None:
        """`timeout` bounds each call, so it must be longer than any BLOCK the caller sends."""
        self._options: dict[str, Any] = dict(parse_url(url))
        self._timeout, self._connect_timeout = timeout, connect_timeout
        self._client_name = client_name
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._parser = _new_parser()
        self.client_id: int | None = None
        """CLIENT ID of the current connection (None when closed): what CLIENT KILL ID names it by."""

    @property
    def connected(self) -> bool:
        return self._writer is not None

    async def connect(self) -> None:
        """Open the connection unless it is open (a call also opens it when needed)."""
        if self._writer is not None:
            return
        with self._abandoned_on_failure():
            async with asyncio.timeout(self._connect_timeout):
                await self._connect()

    async def call(self, commands: Sequence[Command]) -> list[Any]:
        """Send `commands` in one write and return their replies in order.

        An error reply comes back as a `ResponseError` (a `NoScriptError` for NOSCRIPT) in its place, not
        raised, so the caller sees what the other commands did. Connection trouble raises redis-py's
        `ConnectionError` (`TimeoutError` when the server does not answer within the timeout) or
        `InvalidResponse`.
        """
        await self.connect()
        with self._abandoned_on_failure():
            async with asyncio.timeout(self._timeout):
                return await self._exchange(commands)

    def close(self) -> None:
        """Close the connection after sending what is already written."""
        if self._writer is not None:
            self._writer.close()
        self._forget()

    @contextlib.contextmanager
    def _abandoned_on_failure(self) -> Iterator[None]:
        """Abandon the connection when the block fails, connection trouble raised as a redis-py error."""
        try:
            yield
        except (OSError, EOFError) as exc:  # TimeoutError too
            self._abandon()
            raise _as_redis_error(exc) from exc
        except BaseException:
            self._abandon()
            raise

    def _abandon(self) -> None:
        """Drop the connection at once: the unsent rest of a failed call must never reach Redis later."""
        if self._writer is not None:
            self._writer.transport.abort()
        self._forget()

    def _forget(self) -> None:
        self._reader = self._writer = None
        self._parser = _new_parser()
        self.client_id = None

    async def _exchange(self, commands: Sequence[Command]) -> list[Any]:
        reader, writer, parser = self._reader, self._writer, self._parser
        assert reader is not None and writer is not None
        writer.write(b"".join([_pack(tuple(command)) for command in commands]))
        await writer.drain()
        replies: list[Any] = []
        while len(replies) < len(commands):
            reply = parser.gets()
            if reply is False:
                data = await reader.read(READ_SIZE)
                if not data:
                    raise RedisConnectionError("Redis closed the connection")
                parser.feed(data)
            elif type(reply) is ResponseError and str(reply).startswith("NOSCRIPT"):
                replies.append(NoScriptError(str(reply)))
            else:
                replies.append(reply)
        return replies

    async def _connect(self) -> None:
        options = self._options
        if "path" in options:
            self._reader, self._writer = await asyncio.open_unix_connection(options["path"])
        else:
            context = tls_context(options) if options.get("connection_class") is SSLConnection else None
            self._reader, self._writer = await asyncio.open_connection(
                options.get("host", "localhost"), options.get("port", 6379), ssl=context)
        handshake: list[Command] = []
        if options.get("password") is not None:
            user = options.get("username")
            handshake.append(("AUTH", user, options["password"]) if user else ("AUTH", options["password"]))
        if options.get("db"):
            handshake.append(("SELECT", options["db"]))
        handshake += [("CLIENT", "SETNAME", self._client_name), ("CLIENT", "ID")]
        *replies, client_id = await self._exchange(handshake)
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        # An ACL may refuse CLIENT ID; only ingest's fence after a failed batch uses it, and does without.
        self.client_id = client_id if isinstance(client_id, int) else None


def _as_redis_error(exc: OSError | EOFError) -> RedisError:
    """Socket trouble as redis-py raises it: its `TimeoutError` or `ConnectionError`."""
    if isinstance(exc, TimeoutError):
        return RedisTimeoutError("Redis did not answer in time")
    return RedisConnectionError(f"Redis connection failed: {exc!r}")


def _new_parser() -> hiredis.Reader:
    return hiredis.Reader(protocolError=InvalidResponse, replyError=ResponseError)


def tls_context(options: dict[str, Any]) -> ssl.SSLContext:
    """The TLS context of a `rediss://` URL's options, built by redis-py itself so both clients agree on
    every `ssl_*` setting (certificates, hostname check, versions, ciphers)."""
    settings = {name: value for name, value in options.items() if name.startswith("ssl_")}
    return SSLConnection(**settings).ssl_context.get()
