"""l2builder's Redis parts on a real Redis Cluster, its symbols spread over every primary: leases, epochs,
membership, group upkeep and acknowledgements, each command or script routed to the slot of its keys.
And the replica confirmation of the fencing writes (services.runtime.replicas), on a cluster and on one
server with and without a replica."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
import redis
from redis.asyncio.cluster import RedisCluster

from services.core.keys import L2BUILDER_GROUP, Keys
from services.l2builder.ownership import Ownership, Renewal
from services.l2builder.streams import GroupInfo, L2Streams
from services.runtime.redis_client import connect
from testkit.harness import RedisServer

SYMBOLS = [f"S{number:02d}USD" for number in range(60)]


def primaries_of(client: RedisCluster, keys: list[str]) -> set[str]:
    names = set()
    for key in keys:
        node = client.get_node_from_key(key)
        assert node is not None
        names.add(node.name)
    return names


def cluster_wait_calls(client: RedisCluster) -> int:
    """How many WAIT commands the primaries have run."""
    nodes = [node.name for node in client.get_primaries()]
    return sum(wait_calls(f"redis://{name}/0") for name in nodes)


def test_leases_and_epochs_on_every_primary(redis_cluster_url: str, key_prefix: str) -> None:
    keys = Keys(key_prefix)

    async def scenario() -> None:
        client = connect(redis_cluster_url, 5.0)
        assert isinstance(client, RedisCluster)
        await client.initialize()
        try:
            assert len(primaries_of(client, [keys.lease(symbol) for symbol in SYMBOLS])) == 3
            while not all(len(nodes) > 1 for nodes in client.nodes_manager.slots_cache.values()):
                await asyncio.sleep(0.1)  # a cluster just created: its replicas are not all in the slot map yet
                await client.nodes_manager.initialize()
            one, two = Ownership(client, keys, "one", 5.0), Ownership(client, keys, "two", 5.0)
            assert await one.heartbeat() == (["one"], True)
            assert await two.heartbeat() == (["one", "two"], True)
            before = cluster_wait_calls(client)
            leases = await one.acquire(SYMBOLS)
            # Every primary has a replica: each acquisition counted only once its replica confirmed it.
            assert cluster_wait_calls(client) >= before + 3
            assert [lease.symbol for lease in leases] == SYMBOLS and {lease.epoch for lease in leases} == {1}
            assert await two.acquire(SYMBOLS) == []
            assert await one.renew(leases) == Renewal()
            assert await one.advance(leases) == [] and {lease.epoch for lease in leases} == {2}
            assert await one.raise_epoch(leases[0], 10) and leases[0].epoch == 10
            # Redis lost some epoch keys: the renewal says so, and a retake goes above the epochs written under.
            lost = leases[:5]
            await client.delete(*[keys.epoch(lease.symbol) for lease in lost])
            renewal = await one.renew(leases)
            assert renewal.vanished == lost and renewal.lost == []
            retaken = await one.acquire([lease.symbol for lease in lost],
                                        {lease.symbol: lease.epoch + 1 for lease in lost})
            assert [lease.epoch for lease in retaken] == [11, 3, 3, 3, 3]
            await one.release(leases[5:])
            taken = await two.acquire(SYMBOLS)
            assert [lease.symbol for lease in taken] == SYMBOLS[5:] and {lease.epoch for lease in taken} == {3}
            assert await one.renew(leases[5:]) == Renewal(lost=leases[5:])
            await two.leave()
            assert await one.heartbeat() == (["one"], False)
        finally:
            await client.aclose()

    asyncio.run(scenario())


def test_streams_groups_and_acks_on_every_primary(redis_cluster_url: str, key_prefix: str) -> None:
    keys = Keys(key_prefix)

    async def scenario() -> None:
        client = connect(redis_cluster_url, 5.0)
        assert isinstance(client, RedisCluster)
        owner = L2Streams(client, keys, "owner", redis_cluster_url, 5.0)
        dead = L2Streams(client, keys, "dead", redis_cluster_url, 5.0)
        try:
            await client.sadd(keys.symbols, *SYMBOLS, "not a symbol")
            valid, invalid = await owner.symbols()
            assert valid == set(SYMBOLS) and invalid == [b"not a symbol"]
            assert len(primaries_of(client, [keys.l2_stream(symbol) for symbol in SYMBOLS])) == 3
            ids: dict[str, list[str]] = {}
            for symbol in SYMBOLS:
                ids[symbol] = [cast(bytes, await client.xadd(keys.l2_stream(symbol), {"n": str(n)})).decode()
                               for n in range(3)]
                await owner.ensure_group(symbol, ids[symbol][0])
                await owner.ensure_group(symbol, None)  # exists: unchanged
            groups = await owner.groups([*SYMBOLS, "NOSTREAM"])
            assert groups["NOSTREAM"] is None
            assert all(groups[symbol] == GroupInfo(2, ids[symbol][0]) for symbol in SYMBOLS)
            for symbol in SYMBOLS:  # one stream per read: each is routed to its own primary
                [(read, entries)] = await dead.read_new([symbol], count=10, block_ms=10)
                assert read == symbol and [entry_id.decode() for entry_id, _ in entries] == ids[symbol][1:]
                assert await owner.last_delivered(symbol) == ids[symbol][2]
                head = await owner.head(symbol)
                assert head.first is not None and head.first[0].decode() == ids[symbol][0]
            # The new owner's catch-up covers the dead one's first pending entry; one XACK call does the rest,
            # every stream's XACK sent to its own primary.
            assert sum([await owner.ack_covered(symbol, ids[symbol][1]) for symbol in SYMBOLS]) == len(SYMBOLS)
            await owner.ack({symbol: [ids[symbol][2]] for symbol in SYMBOLS})
            async with client.pipeline(transaction=False) as pipe:
                for symbol in SYMBOLS:
                    pipe.xpending(keys.l2_stream(symbol), L2BUILDER_GROUP)
                assert {reply["pending"] for reply in await pipe.execute()} == {0}
            await owner.read_new([SYMBOLS[0]], count=1, block_ms=10)  # "owner" becomes a consumer of one
            assert await owner.remove_idle_consumers(SYMBOLS, idle=0) == len(SYMBOLS)  # "dead" everywhere
            await owner.forget_consumer(SYMBOLS)
            consumers = await client.xinfo_consumers(keys.l2_stream(SYMBOLS[0]), L2BUILDER_GROUP)
            assert consumers == []
            await owner.request_resync(SYMBOLS[7], "gap", "owner")
            [(_, fields)] = cast(list[tuple[bytes, list[bytes]]], await client.xrange(keys.control))  # raw reply
            assert dict(zip(fields[::2], fields[1::2], strict=True))[b"symbol"] == SYMBOLS[7].encode()
        finally:
            owner.close()
            dead.close()
            await client.aclose()

    asyncio.run(scenario())


def wait_calls(url: str) -> int:
    """How many WAIT commands the server has run."""
    stats = redis.Redis.from_url(url).info("commandstats")
    return int(stats.get("cmdstat_wait", {}).get("calls", 0))


def test_no_wait_on_a_server_without_replicas(redis_url: str, key_prefix: str) -> None:
    keys = Keys(key_prefix)

    async def scenario() -> None:
        client = connect(redis_url, 5.0)
        try:
            one = Ownership(client, keys, "one", 5.0)
            await one.heartbeat()
            before = wait_calls(redis_url)
            leases = await one.acquire(SYMBOLS[:3])
            assert await one.renew(leases) == Renewal() and await one.advance(leases) == []
            assert [lease.epoch for lease in leases] == [2, 2, 2]
            assert wait_calls(redis_url) == before
        finally:
            await client.aclose()

    asyncio.run(scenario())


@pytest.fixture
def replicated(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer]]:
    """One server and a replica of it."""
    primary = RedisServer(tmp_path / "primary").start()
    replica = RedisServer(tmp_path / "replica", ["--replicaof", "127.0.0.1", str(primary.port)]).start()
    client = redis.Redis.from_url(primary.url)
    try:
        while client.info("replication")["connected_slaves"] < 1 or client.wait(1, 1000) < 1:
            client.set("probe", "x")
        yield primary, replica
    finally:
        client.close()
        replica.stop()
        primary.stop()


def test_fencing_writes_count_only_once_a_replica_has_them(
        replicated: tuple[RedisServer, RedisServer], key_prefix: str) -> None:
    primary, replica = replicated
    keys = Keys(key_prefix)
    assert replica.process is not None
    pid = replica.process.pid

    async def scenario() -> None:
        client = connect(primary.url, 5.0)
        try:
            one = Ownership(client, keys, "one", 2.0)
            await one.heartbeat()  # learns that the server has a replica
            before = wait_calls(primary.url)
            [lease, other] = await one.acquire(["XBTUSD", "LTCUSD"])
            assert (lease.epoch, other.epoch) == (1, 1) and wait_calls(primary.url) > before
            valid_until = lease.valid_until
            os.kill(pid, signal.SIGSTOP)  # the replica no longer acknowledges anything
            try:
                assert await one.acquire(["ETHUSD"]) == []  # ran on the primary, but a failover may lose it
                assert await client.get(keys.lease("ETHUSD")) == b"one"
                assert await one.renew([lease]) == Renewal() and lease.valid_until == valid_until  # not extended
                assert not await one.raise_epoch(lease, 10) and lease.epoch == 1  # an unconfirmed raise: lost
                assert await one.advance([other]) == [other] and other.epoch == 1
            finally:
                os.kill(pid, signal.SIGCONT)
            [again] = await one.acquire(["ETHUSD"])  # the lease names this instance: taken under a new epoch
            assert again.epoch == 2
            assert await client.wait(1, 2000) == 1
        finally:
            await client.aclose()

    asyncio.run(scenario())
