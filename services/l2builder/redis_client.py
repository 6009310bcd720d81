"""The Redis client of l2builder: no hidden retries, a read timeout above BLOCK, commands packed in C.

redis-py's asyncio connections pack every command in Python, about 2 µs per argument, and an XACK of one
flush carries thousands of ids: that alone was a tenth of l2builder's CPU (bench.l2builder). The sync
client of redis-py packs with hiredis (`HiredisRespSerializer`, about 0.1 µs per argument); the pool here
uses that same serializer on top of whichever connection class the URL calls for (TCP, TLS, unix socket).

Retries are off because every loop of the service retries on its own terms (with backoff, and knowing
that a lease may have expired meanwhile); a command silently retried for seconds would hide that.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.connection import HiredisRespSerializer

SOCKET_TIMEOUT = 5.0
"""Longer than any XREADGROUP BLOCK, or every idle read would time out."""
CONNECT_TIMEOUT = 2.0


class _HiredisPacking:
    _serializer = HiredisRespSerializer()

    def pack_command(self, *args: Any) -> list[bytes]:
        packed: list[bytes] = self._serializer.pack(*args)
        return packed


def connect(url: str) -> aioredis.Redis:
    pool = aioredis.ConnectionPool.from_url(url, socket_timeout=SOCKET_TIMEOUT,
                                            socket_connect_timeout=CONNECT_TIMEOUT, retry=Retry(NoBackoff(), 0))
    base = pool.connection_class
    pool.connection_class = type(f"HiredisPacking{base.__name__}", (_HiredisPacking, base), {})
    return aioredis.Redis.from_pool(pool)
