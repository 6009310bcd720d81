"""The lean wire on a real Redis Cluster: commands routed by slot, replies put back in order, scripts on every
primary, and redirects (a manual failover's MOVED, a resharding's ASK, TRYAGAIN and MOVED) followed."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
import redis
from redis.exceptions import ClusterError, NoScriptError, ResponseError

from services.core.slots import command_key, key_slot
from services.runtime.redis_wire import ClusterWire, RedisWire, open_wire
from services.runtime.scripts import LuaScript
from testkit.harness import RedisClusterServers

T = TypeVar("T")
SCRIPT = LuaScript("return redis.call('INCRBY', KEYS[1], ARGV[1])")


def run(scenario: Callable[[ClusterWire], Awaitable[T]], url: str) -> T:
    async def body() -> T:
        wire = open_wire(url, 5.0, "cluster-wire-test")
        assert isinstance(wire, ClusterWire)
        try:
            return await scenario(wire)
        finally:
            wire.close()

    return asyncio.run(body())


def test_commands_are_routed_by_slot_and_replies_come_back_in_order(redis_cluster_url: str, key_prefix: str) -> None:
    keys = [f"{key_prefix}:{{S{number}}}" for number in range(40)]
    assert len({key_slot(key) for key in keys}) == 40

    async def scenario(wire: ClusterWire) -> tuple[list[Any], list[Any], int]:
        writes = await wire.call([("SET", key, number) for number, key in enumerate(keys)]
                                 + [("INCR", f"{key_prefix}:{{S0}}:text"), ("LPUSH", keys[0], 1)])
        reads = await wire.call([("GET", key) for key in reversed(keys)])
        return writes, reads, len(wire.primaries)

    writes, reads, primaries = run(scenario, redis_cluster_url)
    assert writes[:40] == [b"OK"] * 40 and writes[40] == 1
    assert isinstance(writes[41], ResponseError) and "WRONGTYPE" in str(writes[41])
    assert reads == [str(number).encode() for number in reversed(range(40))]
    assert primaries == 3


def test_a_script_is_loaded_on_every_primary_and_run_per_slot(redis_cluster_url: str, key_prefix: str) -> None:
    keys = [f"{key_prefix}:{{E{number}}}" for number in range(12)]

    async def scenario(wire: ClusterWire) -> tuple[list[Any], list[Any], list[Any]]:
        await wire.call([(b"SCRIPT", b"FLUSH")])  # keyless: to one primary only
        first = await wire.call([SCRIPT.command([key], [2]) for key in keys])
        [sha] = await wire.call([SCRIPT.load_command()])
        assert sha == SCRIPT.sha.encode()
        second = await wire.call([SCRIPT.command([key], [3]) for key in keys])
        crossed = await wire.call([SCRIPT.command([keys[0], keys[1]], [1])])
        return first, second, crossed

    first, second, crossed = run(scenario, redis_cluster_url)
    assert any(isinstance(reply, NoScriptError) for reply in first)  # the flushed primary did not know it
    assert second == [3 if isinstance(reply, NoScriptError) else 5 for reply in first]
    [refused] = crossed
    assert isinstance(refused, ResponseError) and "CROSSSLOT" in str(refused)


def test_slot_groups_split_keys_by_slot_on_a_cluster_only(redis_url: str, redis_cluster_url: str) -> None:
    keys = ["a:{X}", "b:{Y}", "c:{X}", "d:{Z}", "e:{Y}"]
    assert ClusterWire(redis_cluster_url, 1.0, "t").slot_groups(keys) == [[0, 2], [1, 4], [3]]
    assert RedisWire(redis_url, 1.0, "t").slot_groups(keys) == [[0, 1, 2, 3, 4]]
    assert isinstance(open_wire(redis_url, 1.0, "t"), RedisWire)
    assert command_key(("XREADGROUP", "GROUP", "g", "c", "STREAMS", "s:{X}", ">")) == "s:{X}"


def test_client_ids_name_each_primary_and_kill_clients_reaches_them(redis_cluster_url: str) -> None:
    async def scenario(wire: ClusterWire) -> tuple[list[Any], bool]:
        await wire.connect()
        ids = wire.client_ids
        assert len(ids) == 3
        other = open_wire(redis_cluster_url, 5.0, "cluster-wire-victim")
        await other.connect()
        try:
            probed = await wire.kill_clients(ids, skip_me=True)
            killed = await wire.kill_clients(other.client_ids)
            assert killed == [1, 1, 1]
            try:
                await other.call([("PING",)])
            except redis.RedisError:
                return probed, True
            return probed, False
        finally:
            other.close()

    probed, victim_failed = run(scenario, redis_cluster_url)
    assert probed == [0, 0, 0] and victim_failed


def test_moved_after_a_manual_failover_is_followed(redis_cluster: RedisClusterServers, key_prefix: str) -> None:
    key = f"{key_prefix}:{{failover}}"
    old = redis_cluster.owner(key_slot(key))

    async def scenario(wire: ClusterWire) -> tuple[list[Any], list[Any]]:
        before = await wire.call([("SET", key, "kept")])
        new = await asyncio.to_thread(redis_cluster.fail_over, old)
        after = await wire.call([("GET", key), ("SET", key, "again")])
        assert ("127.0.0.1", new.port) in wire.primaries
        # The node met through the redirect is among the connections the call wrote on (ingest's fence).
        assert f"127.0.0.1:{new.port}" in wire.call_client_ids
        return before, after

    before, after = run(scenario, redis_cluster.url)
    assert before == [b"OK"] and after == [b"kept", b"OK"]
    assert old not in redis_cluster.primaries()


def test_resharding_ask_tryagain_then_moved(redis_cluster: RedisClusterServers, key_prefix: str) -> None:
    present, absent = f"{key_prefix}:{{mig}}:a", f"{key_prefix}:{{mig}}:b"
    slot = key_slot(present)
    source = redis_cluster.owner(slot)
    target = next(node for node in redis_cluster.primaries() if node is not source)
    source_id, target_id = redis_cluster.node_id(source), redis_cluster.node_id(target)
    src, dst = redis.Redis(port=source.port), redis.Redis(port=target.port)
    src.set(present, "here")

    async def scenario(wire: ClusterWire) -> tuple[list[Any], BaseException | None, list[Any]]:
        await wire.connect()
        dst.cluster("SETSLOT", slot, "IMPORTING", source_id)
        src.cluster("SETSLOT", slot, "MIGRATING", target_id)
        # `present` is still on the source; `absent` is asked of the target (ASK, then ASKING + the command).
        during = await wire.call([("GET", present), ("SET", absent, "there"), ("GET", absent)])
        try:
            await wire.call([("MGET", present, absent)])  # the slot's keys are split: TRYAGAIN each time
        except ClusterError as exc:
            split: BaseException | None = exc
        else:
            split = None
        src.migrate("127.0.0.1", target.port, [present], 0, 5000)
        for node in redis_cluster.primaries():
            client = redis.Redis(port=node.port)
            client.cluster("SETSLOT", slot, "NODE", target_id)
            client.close()
        after = await wire.call([("MGET", present, absent)])  # MOVED, the map read again
        return during, split, after

    try:
        during, split, after = run(scenario, redis_cluster.url)
    finally:
        src.close()
        dst.close()
    assert during == [b"here", b"OK", b"there"]
    assert isinstance(split, ClusterError) and "TRYAGAIN" in str(split)
    assert after == [[b"here", b"there"]]
    redis_cluster.wait_ok()


def test_an_unreachable_cluster_raises_a_connection_error() -> None:
    async def scenario() -> None:
        wire = ClusterWire("redis+cluster://127.0.0.1:1/", 1.0, "t", connect_timeout=0.5)
        await wire.call([("PING",)])

    with pytest.raises(redis.ConnectionError, match="no cluster node gave its slot map"):
        asyncio.run(scenario())
