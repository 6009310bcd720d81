"""top10's group upkeep and liveness pass on a real Redis Cluster, its streams spread over every primary:
joining, claiming a dead member's entries, writing their keys, removing the member, marking the keys of a
lost session, leaving; each command and script routed to the slot of its stream or key."""

from __future__ import annotations

import asyncio
import time

from redis.asyncio.cluster import RedisCluster

from services.core.entries import encode_entry
from services.core.keys import TOP10_GROUP, Keys
from services.core.liveness import SessionTracker
from services.runtime.redis_client import connect
from services.runtime.redis_wire import open_wire
from services.top10 import group
from services.top10.liveness_pass import LivenessPass
from services.top10.reader import Reader
from services.top10.report import Report
from services.top10.upkeep import GroupUpkeep
from tests.top10.feed import SESSION, snapshot

SYMBOLS = [f"S{number:02d}USD" for number in range(60)]


def test_group_upkeep_and_liveness_on_every_primary(redis_cluster_url: str, key_prefix: str) -> None:
    keys = Keys(key_prefix)

    async def scenario() -> None:
        client = connect(redis_cluster_url, 5.0)
        assert isinstance(client, RedisCluster)
        wire = open_wire(redis_cluster_url, 5.0, "test")
        report = Report(5.0)
        sessions = SessionTracker(lost_after=0)
        upkeep = GroupUpkeep(client, keys, "live", report)
        reader = Reader(client, wire, keys, "live", 5_000_000, sessions, lambda: upkeep.symbols, report)
        try:
            await client.initialize()
            nodes = {node.name for symbol in SYMBOLS
                     if (node := client.get_node_from_key(keys.ob10_stream(symbol))) is not None}
            assert len(nodes) == 3
            async with client.pipeline(transaction=False) as pipe:
                for symbol in SYMBOLS:
                    fields = encode_entry(snapshot(symbol, 1).frame(), "orderBook10", "update", SESSION, 1,
                                          time.time_ns() // 1000)
                    pipe.xadd(keys.ob10_stream(symbol), dict(fields))  # type: ignore[arg-type]
                await pipe.execute()
            await client.set(keys.ob10_stream("TAKENUSD"), "not a stream")
            await client.sadd(keys.symbols, *SYMBOLS, "TAKENUSD")
            await upkeep.join_new_streams()
            assert sorted(upkeep.symbols) == SYMBOLS  # the one name held by a string is skipped, for good

            # A member that read every stream and died: its entries are claimed, written and acknowledged.
            for symbol in SYMBOLS:
                await client.xreadgroup(TOP10_GROUP, "dead", {keys.ob10_stream(symbol): ">"})
            claimed = 0
            async for page in upkeep.abandoned(claim_idle=0):
                claimed += sum(len(entries) for _, entries in page)
                await reader.process(page, "claimed")
            assert claimed == len(SYMBOLS)
            async with client.pipeline(transaction=False) as pipe:
                for symbol in SYMBOLS:
                    pipe.hget(keys.top10(symbol), "status")
                    pipe.xpending(keys.ob10_stream(symbol), TOP10_GROUP)
                replies = await pipe.execute()
            assert set(replies[::2]) == {b"live"} and {reply["pending"] for reply in replies[1::2]} == {0}
            await upkeep.remove_departed(consumer_expiry=0)
            async with client.pipeline(transaction=False) as pipe:
                for symbol in SYMBOLS:
                    pipe.xinfo_consumers(keys.ob10_stream(symbol), TOP10_GROUP)
                listings = await pipe.execute()
            assert {member["name"] for listing in listings for member in listing} == {b"live"}

            # The session has no liveness key: with no grace (lost_after=0), every key turns stale.
            liveness = LivenessPass(client, keys, sessions, lambda: list(upkeep.symbols), report)
            assert await liveness.check()  # notices the session's absence
            await liveness.check()
            async with client.pipeline(transaction=False) as pipe:
                for symbol in SYMBOLS:
                    pipe.hget(keys.top10(symbol), "status")
                assert set(await pipe.execute()) == {b"stale"}
            assert await group.leave(client, upkeep.streams, "live") == len(SYMBOLS)
        finally:
            wire.close()
            await client.aclose()

    asyncio.run(scenario())
