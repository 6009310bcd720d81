"""The Redis client of the consumers: no hidden retries, a read timeout above BLOCK, commands packed in C.

redis-py's asyncio connections pack every command in Python, argument by argument: an XACK of covered
entries carries up to a thousand ids, and an XREADGROUP of top10 names each stream twice (key and id).
The sync client of redis-py packs with hiredis (`HiredisRespSerializer`); the pool here uses that same
serializer on top of whichever connection class the URL calls for (TCP, TLS, unix socket). The hot loops
have since moved to `RedisWire`; `python -m bench.wire` sets this pool beside plain redis-py and `RedisWire`.

XREADGROUP and XRANGE replies come back as Redis sends them, without redis-py's conversion of every entry's
fields into a dict, a visible share of l2builder's CPU in `python -m bench.l2builder`: `decode_entry` and
`decode_next` read the flat `[name, value, ...]` list.
With RESP3, redis-py's default, XREADGROUP answers a map of stream -> entries; with RESP2, a list of pairs.

Retries are off because every loop of the services retries on its own terms (with backoff, re-reading
what a failed read may have delivered, knowing that a lease may have expired meanwhile); a command silently
retried for seconds would hide that.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.connection import HiredisRespSerializer

CONNECT_TIMEOUT = 2.0
RAW_REPLIES = ("XREADGROUP", "XRANGE")


class _HiredisPacking:
    _serializer = HiredisRespSerializer()

    def pack_command(self, *args: Any) -> list[bytes]:
        packed: list[bytes] = self._serializer.pack(*args)
        return packed


def connect(url: str, socket_timeout: float, client_name: str | None = None) -> aioredis.Redis:
    """A client for `url`; `socket_timeout` must be longer than any BLOCK the caller uses."""
    pool = aioredis.ConnectionPool.from_url(url, socket_timeout=socket_timeout, socket_connect_timeout=CONNECT_TIMEOUT,
                                            retry=Retry(NoBackoff(), 0), client_name=client_name)
    base = pool.connection_class
    pool.connection_class = type(f"HiredisPacking{base.__name__}", (_HiredisPacking, base), {})
    client = aioredis.Redis.from_pool(pool)
    for command in RAW_REPLIES:
        client.response_callbacks.pop(command, None)
    return client


EVICTION_SAFE_POLICIES = frozenset({"noeviction"})


async def evicting_policy(client: aioredis.Redis) -> str | None:
    """The server's `maxmemory-policy` when it may evict keys (bookstream requires `noeviction`), else None.

    An evicting server drops streams, leases and epochs under memory pressure: the services detect and
    recover from such loss, but a user should hear of the setting before it happens. A refused
    `CONFIG GET` (an ACL without it, a managed Redis) is not a finding: None.
    """
    try:
        reply = await client.config_get("maxmemory-policy")
    except aioredis.ResponseError:
        return None
    raw: dict[Any, Any] = dict(reply)
    policy = raw.get("maxmemory-policy") or raw.get(b"maxmemory-policy")
    if isinstance(policy, bytes):
        policy = policy.decode()
    if not policy or policy in EVICTION_SAFE_POLICIES:
        return None
    return str(policy)


def stream_pairs(reply: Any) -> Iterable[tuple[bytes, list[Any]]]:
    """A raw XREADGROUP reply as (stream key, entries) pairs, whichever protocol version shaped it."""
    if not reply:
        return ()
    return cast(Iterable[tuple[bytes, list[Any]]], reply.items() if isinstance(reply, dict) else reply)
