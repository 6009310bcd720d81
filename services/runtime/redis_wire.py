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

`ClusterWire` is the same contract on a Redis Cluster (`redis+cluster://` URLs; `open_wire` picks the class
from the URL): one `RedisWire` per primary, each command sent to the primary of its key's slot, a call's
commands written to every node at once and their replies put back in order. MOVED, ASK, TRYAGAIN and
CLUSTERDOWN mean a command did not run, so those are sent again (MOVED and CLUSTERDOWN after refreshing the
slot map from CLUSTER SLOTS) up to `MAX_REDIRECTS` times, then raise redis-py's `ClusterError`. A connection
error raises at once, as on one server (what ran on the other nodes is as unknown as a failed call's
outcome there), and the slot map is read again on the next call.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Final, Protocol

import hiredis
from redis.asyncio.connection import SSLConnection, parse_url
from redis.exceptions import ClusterError, InvalidResponse, NoScriptError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.core.slots import SLOTS, cluster_node_urls, command_key, is_cluster_url, key_slot

Command = Sequence[bytes | str | int | float]

_pack: Callable[[tuple[Any, ...]], bytes] = hiredis.pack_command
"""hiredis.pack_command, typed for any number of arguments (its stub declares a one-element tuple)."""

READ_SIZE = 65536
CONNECT_TIMEOUT = 2.0


class Wire(Protocol):
    """What the hot loops use of a wire, one server's (`RedisWire`) or a cluster's (`ClusterWire`)."""

    @property
    def connected(self) -> bool: ...

    @property
    def client_ids(self) -> dict[str, int]:
        """CLIENT ID of each open connection, by the address of its node."""
        ...

    @property
    def ordered(self) -> bool:
        """Whether a call's commands run in the order given (one server), not only per node (a cluster)."""
        ...

    @property
    def call_client_ids(self) -> dict[str, int]:
        """CLIENT ID of every connection the last call wrote on, by node, those it abandoned included: what
        a fence must kill after a call whose outcome is unknown (a cluster call may open new ones)."""
        ...

    async def connect(self) -> None: ...

    async def call(self, commands: Sequence[Command]) -> list[Any]: ...

    async def kill_clients(self, ids: Mapping[str, int], skip_me: bool = False) -> list[Any]:
        """CLIENT KILL ID of each connection in `ids` (as `client_ids` named them) on its node, a node no longer
        serving slots skipped (its connections can write nothing); the replies, errors in place."""
        ...

    def slot_groups(self, keys: Sequence[str | bytes]) -> list[list[int]]:
        """The indices of `keys` in groups a multi-key command may take together, each in order."""
        ...

    def close(self) -> None: ...


def open_wire(url: str, timeout: float, client_name: str, connect_timeout: float = CONNECT_TIMEOUT) -> Wire:
    """The wire for `url`: a `ClusterWire` for a cluster URL, else a `RedisWire`."""
    if is_cluster_url(url):
        return ClusterWire(url, timeout, client_name, connect_timeout)
    return RedisWire(url, timeout, client_name, connect_timeout)


class RedisWire:
    def __init__(self, url: str, timeout: float, client_name: str, connect_timeout: float = CONNECT_TIMEOUT,
                 address: tuple[str, int] | None = None) -> None:
        """`timeout` bounds each call, so it must be longer than any BLOCK the caller sends; `address` (host,
        port) replaces the URL's (a cluster node's, with the cluster URL's credentials and TLS settings)."""
        self._options: dict[str, Any] = dict(parse_url(url))
        if address is not None:
            self._options["host"], self._options["port"] = address
        self._timeout, self._connect_timeout = timeout, connect_timeout
        self._client_name = client_name
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._parser = _new_parser()
        self.client_id: int | None = None
        """CLIENT ID of the current connection (None when closed): what CLIENT KILL ID names it by."""
        self._call_ids: dict[str, int] = {}

    @property
    def connected(self) -> bool:
        return self._writer is not None

    @property
    def ordered(self) -> bool:
        return True

    @property
    def address(self) -> str:
        options = self._options
        if "path" in options:
            return str(options["path"])
        return f"{options.get('host', 'localhost')}:{options.get('port', 6379)}"

    @property
    def client_ids(self) -> dict[str, int]:
        return {} if self.client_id is None else {self.address: self.client_id}

    @property
    def call_client_ids(self) -> dict[str, int]:
        return self._call_ids

    async def kill_clients(self, ids: Mapping[str, int], skip_me: bool = False) -> list[Any]:
        skip: tuple[str, ...] = ("SKIPME", "yes") if skip_me else ()
        if not ids:
            return []
        return await self.call([("CLIENT", "KILL", "ID", client_id, *skip) for client_id in ids.values()])

    def slot_groups(self, keys: Sequence[str | bytes]) -> list[list[int]]:
        return [list(range(len(keys)))] if keys else []

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
        # Kept when the connection is abandoned: a fence after the failed call must still name it.
        self._call_ids = {} if self.client_id is None else {self.address: self.client_id}


MAX_REDIRECTS: Final = 5
"""How many times one call sends a command again after MOVED, ASK, TRYAGAIN or CLUSTERDOWN."""
RETRY_DELAY: Final = 0.05
"""The pause before sending again after TRYAGAIN (a slot half migrated) or CLUSTERDOWN (a failover)."""
Address = tuple[str, int]


class ClusterWire:
    """`RedisWire`'s contract on a Redis Cluster: see the module's docstring."""

    def __init__(self, url: str, timeout: float, client_name: str, connect_timeout: float = CONNECT_TIMEOUT) -> None:
        nodes = cluster_node_urls(url)
        self._node_url = nodes[0]
        """The URL every node is reached with, its address replaced: the credentials and TLS settings."""
        self._seeds: list[Address] = [(str(options.get("host", "localhost")), int(options.get("port", 6379)))
                                      for options in map(parse_url, nodes)]
        self._timeout, self._connect_timeout, self._client_name = timeout, connect_timeout, client_name
        self._nodes: dict[Address, RedisWire] = {}
        self._slots: list[Address] | None = None
        """The primary serving each slot; None until read (again) from CLUSTER SLOTS."""
        self._call_ids: dict[str, int] = {}

    @property
    def connected(self) -> bool:
        return self._slots is not None and all(wire.connected for wire in self._nodes.values())

    @property
    def client_ids(self) -> dict[str, int]:
        ids: dict[str, int] = {}
        for wire in self._nodes.values():
            ids.update(wire.client_ids)
        return ids

    @property
    def ordered(self) -> bool:
        return False

    @property
    def call_client_ids(self) -> dict[str, int]:
        return self._call_ids

    @property
    def primaries(self) -> list[Address]:
        """The nodes serving slots, as last read (empty before the first call)."""
        return list(self._nodes)

    async def connect(self) -> None:
        """Read the slot map unless known, and open a connection to every primary."""
        if self._slots is None:
            await self._refresh()
        await _gather_or_raise([wire.connect() for wire in self._nodes.values()])

    def slot_groups(self, keys: Sequence[str | bytes]) -> list[list[int]]:
        groups: dict[int, list[int]] = {}
        for index, key in enumerate(keys):
            groups.setdefault(key_slot(key), []).append(index)
        return list(groups.values())

    async def kill_clients(self, ids: Mapping[str, int], skip_me: bool = False) -> list[Any]:
        skip: tuple[str, ...] = ("SKIPME", "yes") if skip_me else ()
        if self._slots is None:
            await self._refresh()
        by_address = {wire.address: wire for wire in self._nodes.values()}
        targets = [(by_address[address], client_id) for address, client_id in ids.items() if address in by_address]
        return await _gather_or_raise([wire.call([("CLIENT", "KILL", "ID", client_id, *skip)])
                                       for wire, client_id in targets], first_reply=True)

    async def call(self, commands: Sequence[Command]) -> list[Any]:
        """`RedisWire.call` across the cluster: replies in order, error replies in place."""
        if self._slots is None:
            await self._refresh()
        replies: list[Any] = [None] * len(commands)
        pending = list(range(len(commands)))
        self._call_ids = {}
        asking: dict[int, Address] = {}
        for _ in range(MAX_REDIRECTS + 1):
            redirected, moved, pause = await self._send(commands, pending, asking, replies)
            if not redirected:
                return replies
            if moved is not None:
                await self._refresh(moved)
            if pause:
                await asyncio.sleep(RETRY_DELAY)
            pending = redirected
        raise ClusterError(f"still redirected after {MAX_REDIRECTS} tries: {replies[pending[0]]}")

    def close(self) -> None:
        for wire in self._nodes.values():
            wire.close()
        self._slots = None

    async def _send(self, commands: Sequence[Command], pending: list[int], asking: dict[int, Address],
                    replies: list[Any]) -> tuple[list[int], dict[int, Address] | None, bool]:
        """Send the `pending` commands, each to its node, and put their replies in `replies`.

        Returns the commands to send again, the slots MOVED elsewhere (None when no map refresh is needed)
        and whether to pause first."""
        slots = self._slots
        assert slots is not None
        plan: dict[Address, list[int]] = {}
        broadcast: list[int] = []
        for index in pending:
            command = commands[index]
            if _is_broadcast(command):
                broadcast.append(index)
                continue
            key = command_key(command)
            plan.setdefault(asking.get(index) or slots[0 if key is None else key_slot(key)], []).append(index)
        for index in broadcast:
            for address in self._nodes:
                plan.setdefault(address, []).append(index)
        calls, layouts, wires = [], [], []
        for address, indices in plan.items():
            wire = self._node(address)
            sent: list[Command] = []
            for index in indices:
                if index in asking:
                    sent.append(("ASKING",))
                sent.append(commands[index])
            calls.append(wire.call(sent))
            layouts.append(indices)
            wires.append(wire)
        try:
            results = await _gather_or_raise(calls)
        except RedisError:
            self._slots = None
            raise
        finally:
            for wire in wires:
                self._call_ids.update(wire.call_client_ids)
        redirected: list[int] = []
        moved: dict[int, Address] | None = None
        pause = False
        answered: set[int] = set()
        for indices, node_replies in zip(layouts, results, strict=True):
            position = 0
            for index in indices:
                if index in asking:
                    position += 1  # ASKING's own OK
                reply = node_replies[position]
                position += 1
                if index in broadcast:
                    # A broadcast's reply is the first node's, unless some node refused it.
                    if index not in answered or isinstance(reply, ResponseError):
                        replies[index] = reply
                    answered.add(index)
                    continue
                asking.pop(index, None)
                replies[index] = reply
                if type(reply) is not ResponseError:
                    continue
                kind, _, rest = str(reply).partition(" ")
                if kind == "MOVED":
                    slot, address = _redirect(rest)
                    moved = (moved or {}) | {slot: address}
                elif kind == "ASK":
                    asking[index] = _redirect(rest)[1]
                elif kind in ("TRYAGAIN", "CLUSTERDOWN"):
                    pause = True
                    if kind == "CLUSTERDOWN":
                        moved = moved or {}
                else:
                    continue
                redirected.append(index)
        redirected.sort()
        return redirected, moved, pause

    def _node(self, address: Address) -> RedisWire:
        wire = self._nodes.get(address)
        if wire is None:
            wire = self._nodes[address] = RedisWire(self._node_url, self._timeout, self._client_name,
                                                    self._connect_timeout, address)
        return wire

    async def _refresh(self, moved: Mapping[int, Address] | None = None) -> None:
        """Read the slot map from the first node that answers (known primaries, then the URL's seeds), then
        apply the MOVED redirects just seen: the old owner's word is newer than a lagging node's map."""
        errors: list[RedisError] = []
        for address in dict.fromkeys([*self._nodes, *self._seeds]):
            wire = self._node(address)
            try:
                [reply] = await wire.call([("CLUSTER", "SLOTS")])
            except RedisError as exc:
                errors.append(exc)
                continue
            if isinstance(reply, ResponseError):
                errors.append(reply)
                continue
            slots = _slot_map(reply, address)
            if slots is None:
                errors.append(ClusterError(f"{wire.address} does not serve every slot yet"))
                continue
            for slot, target in (moved or {}).items():
                slots[slot] = target
            self._install(slots)
            return
        self._slots = None
        raise RedisConnectionError(f"no cluster node gave its slot map: {errors[-1] if errors else 'no node known'}")

    def _install(self, slots: list[Address]) -> None:
        serving = set(slots)
        for address in [address for address in self._nodes if address not in serving]:
            self._nodes.pop(address).close()
        for address in dict.fromkeys(slots):
            self._node(address)
        self._slots = slots


def _is_broadcast(command: Command) -> bool:
    """SCRIPT LOAD goes to every primary: each must know a script before an EVALSHA of a slot it serves."""
    return len(command) > 1 and _upper(command[0]) == "SCRIPT" and _upper(command[1]) == "LOAD"


def _upper(part: bytes | str | int | float) -> str:
    return (part.decode() if isinstance(part, bytes) else str(part)).upper()


def _redirect(text: str) -> tuple[int, Address]:
    """The slot and node of a MOVED or ASK reply's `<slot> <host>:<port>`."""
    slot, _, endpoint = text.partition(" ")
    host, _, port = endpoint.rpartition(":")
    return int(slot), (host, int(port))


def _slot_map(reply: Any, asked: Address) -> list[Address] | None:
    """The primary of every slot from a CLUSTER SLOTS reply, None while some slot has none. A node with an
    unknown endpoint (an empty host, or `?`) is reached at the host of the node that was asked."""
    slots: list[Address | None] = [None] * SLOTS
    for start, end, primary, *_replicas in reply:
        host = primary[0].decode() if isinstance(primary[0], bytes) else str(primary[0])
        address = (asked[0] if host in ("", "?") else host, int(primary[1]))
        slots[int(start):int(end) + 1] = [address] * (int(end) + 1 - int(start))
    if any(address is None for address in slots):
        return None
    return [address for address in slots if address is not None]


async def _gather_or_raise(calls: Sequence[Any], first_reply: bool = False) -> list[Any]:
    """Run the calls at once; raise the first error after all ended (so none is left half-read)."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    done: list[Any] = []
    for result in results:
        if isinstance(result, BaseException):
            raise result
        done.append(result[0] if first_reply else result)
    return done


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
