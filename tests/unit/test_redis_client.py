"""The consumers' Redis client: commands packed by hiredis exactly as redis-py packs them, raw stream replies."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection, UnixDomainSocketConnection

from services.core.entries import decode_entry, encode_entry, stream_pairs
from services.core.keys import Keys
from services.runtime.logs import EventLog
from services.runtime.redis_client import (
    EVICTION_CHECK_INTERVAL,
    EvictionWatch,
    connect,
    sessions_alive,
    slot_groups,
)
from services.runtime.scripts import LuaScript
from testkit.harness import RedisServer, free_port


def test_commands_are_packed_exactly_as_redis_py_packs_them() -> None:
    for url, expected in (("redis://127.0.0.1:1/0", Connection), ("unix:///tmp/none.sock", UnixDomainSocketConnection)):
        client = connect(url, 5.0)
        assert isinstance(client, aioredis.Redis)
        connection_class = client.connection_pool.connection_class
        assert issubclass(connection_class, expected)
        fast, plain = connection_class(), expected()
        for command in (("XINFO STREAM", "bitmex:l2:{XBTUSD}"), ("XACK", b"key", "l2builder", "1-1", "17-3"),
                        ("EVALSHA", "abc", 2, "k1", "k2", "instance", 6000), ("SET", "k", "v" * 10_000)):
            assert b"".join(fast.pack_command(*command)) == b"".join(plain.pack_command(*command)), command


@pytest.mark.parametrize("protocol", [2, 3])
def test_stream_replies_are_raw_in_both_protocols(redis_url: str, key_prefix: str, protocol: int) -> None:
    streams = [f"{key_prefix}:raw:{protocol}:{{A}}", f"{key_prefix}:raw:{protocol}:{{B}}"]
    written = encode_entry("{}", "orderBook10", "update", "s1", 1, 2)

    async def scenario() -> None:
        client = connect(f"{redis_url}{'&' if '?' in redis_url else '?'}protocol={protocol}", 5.0, "raw-test")
        try:
            for stream in streams:
                await client.xgroup_create(stream, "g", id="0", mkstream=True)
                await client.xadd(stream, written)  # type: ignore[arg-type]
            reply = await client.xreadgroup("g", "c", dict.fromkeys(streams, ">"))
            pairs = list(stream_pairs(reply))
            assert [key.decode() for key, _ in pairs] == streams
            for _, [(entry_id, fields)] in pairs:
                assert isinstance(fields, list) and fields[:2] == [b"frame", b"{}"]
                assert decode_entry(entry_id, fields).session == "s1"
            [(_, fields)] = cast(list[tuple[bytes, list[bytes]]], await client.xrange(streams[0]))
            assert isinstance(fields, list)
            assert await client.client_getname() in (b"raw-test", "raw-test")  # str in RESP2, bytes in RESP3
            assert list(stream_pairs(await client.xreadgroup("g", "c", {streams[0]: ">"}, block=1))) == []
        finally:
            await client.aclose()

    asyncio.run(scenario())


def test_the_eviction_watch_logs_each_change_once_and_shows_it_in_healthz(
        redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    watch = EvictionWatch(EventLog("test"))
    admin = redis.Redis.from_url(redis_server.url)

    async def check(now: float) -> dict[str, Any]:
        client = connect(redis_server.url, 5.0)
        try:
            await watch.check(client, now)
        finally:
            await client.aclose()
        detail: dict[str, Any] = {}
        watch.describe(detail)
        return detail

    caplog.set_level(logging.INFO, logger="bookstream.test")
    assert asyncio.run(check(0.0)) == {}
    admin.config_set("maxmemory-policy", "allkeys-lru")
    assert asyncio.run(check(1.0)) == {}, "not asked again before the interval"
    detail = asyncio.run(check(EVICTION_CHECK_INTERVAL))
    assert detail == {"redis_policy_warning": "maxmemory-policy allkeys-lru may evict streams and keys; "
                                              "bookstream needs noeviction"}
    assert asyncio.run(check(2 * EVICTION_CHECK_INTERVAL)) == detail
    admin.config_set("maxmemory-policy", "noeviction")
    assert asyncio.run(check(3 * EVICTION_CHECK_INTERVAL)) == {}
    assert [(record.getMessage(), record.levelname) for record in caplog.records] == [
        ("redis_evicting", "WARNING"), ("redis_eviction_safe", "INFO")]


def test_a_cluster_url_gives_a_cluster_client_whose_scripts_and_reads_run_per_slot(
        redis_cluster_url: str, key_prefix: str) -> None:
    streams = [f"{key_prefix}:l2:{{S{number}}}" for number in range(9)]
    script = LuaScript("return redis.call('XLEN', KEYS[1]) + #KEYS")

    async def scenario() -> tuple[list[list[str]], list[Any], dict[str, bool]]:
        client = connect(redis_cluster_url, 5.0, "cluster-client-test")
        try:
            assert isinstance(client, RedisCluster)
            for stream in streams:
                await client.xadd(stream, {"frame": "{}"})
            await client.script_flush()  # every primary forgets it: run_each loads it again and resends
            groups = slot_groups(client, streams)
            replies = await script.run_each(client, [(group, ()) for group in groups])
            [(_, fields)] = cast(list[tuple[bytes, list[bytes]]], await client.xrange(streams[0]))
            assert isinstance(fields, list)  # raw, as on one server
            alive = await sessions_alive(client, Keys(key_prefix), ["nobody", "somebody"])
            return groups, replies, alive
        finally:
            await client.aclose()

    groups, replies, alive = asyncio.run(scenario())
    assert len(groups) == 9 and sorted(stream for group in groups for stream in group) == sorted(streams)
    assert replies == [2] * 9
    assert alive == {"nobody": False, "somebody": False}


def test_an_unreachable_cluster_raises_a_redis_error() -> None:
    async def scenario() -> None:
        client = connect(f"redis+cluster://127.0.0.1:{free_port()}/", 1.0)
        try:
            await client.ping()
        finally:
            await client.aclose()

    with pytest.raises(redis.RedisError, match="cannot be connected"):
        asyncio.run(scenario())
