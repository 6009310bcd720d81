"""The Redis side of l2builder against a real Redis: group creation, ranges, covered acks, tidying."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest
from redis.exceptions import RedisError, ResponseError

from services.core.keys import L2BUILDER_GROUP, Keys
from services.l2builder.streams import GroupInfo, L2Streams
from services.runtime.redis_client import connect


def test_group_ranges_and_acknowledgements(redis_url: str, key_prefix: str) -> None:
    keys = Keys(key_prefix)

    async def scenario() -> None:
        client = connect(redis_url, 5.0)  # the service's client: bytes, raw stream replies
        owner = L2Streams(client, keys, "owner", redis_url, 5.0)
        dead = L2Streams(client, keys, "dead", redis_url, 5.0)
        stream = keys.l2_stream("XBTUSD")
        try:
            async def add(number: int) -> str:
                return cast(bytes, await client.xadd(stream, {"n": str(number)})).decode()

            ids = [await add(number) for number in range(6)]
            await owner.ensure_group("XBTUSD", ids[1])  # a recreated group starts after the stored position
            await owner.ensure_group("XBTUSD", None)  # and is never reset once it exists
            assert await owner.last_delivered("XBTUSD") == ids[1]
            assert await owner.last_delivered("NOSTREAM") is None
            [(symbol, delivered)] = await dead.read_new(["XBTUSD"], count=3, block_ms=10)
            assert symbol == "XBTUSD" and [entry_id.decode() for entry_id, _ in delivered] == ids[2:5]
            assert await owner.last_delivered("XBTUSD") == ids[4]
            between = await owner.read_range("XBTUSD", ids[2], ids[4], count=10)
            assert [entry_id.decode() for entry_id, _ in between] == ids[3:5]
            assert await owner.read_range("XBTUSD", None, f"({ids[1]}", count=10) != []
            # The dead consumer's entries up to a stored position are covered by that book.
            assert await owner.ack_covered("XBTUSD", ids[3]) == 2
            assert (await client.xpending(stream, L2BUILDER_GROUP))["pending"] == 1
            head = await owner.head("XBTUSD")
            assert head.first is not None and head.first[0].decode() == ids[0] and head.max_deleted_id == "0-0"
            assert head.last_generated_id == ids[5]
            await client.xdel(stream, ids[5])
            assert (await owner.head("XBTUSD")).max_deleted_id == ids[5]

            newest = await add(6)
            await owner.read_new(["XBTUSD"], count=1, block_ms=10)  # "owner" becomes a consumer too
            await asyncio.sleep(0.05)
            assert await owner.remove_idle_consumers(["XBTUSD"], idle=0.01) == 0  # "dead" still holds one
            await owner.ack({"XBTUSD": [ids[4], newest]})
            assert await owner.remove_idle_consumers(["XBTUSD"], idle=0.01) == 1
            assert [c["name"] for c in await client.xinfo_consumers(stream, L2BUILDER_GROUP)] == [b"owner"]
            assert await owner.groups(["XBTUSD"]) == {"XBTUSD": GroupInfo(0, newest)}
            await client.xadd(keys.l2_stream("NOGROUP"), {"a": "1"})
            assert await owner.groups(["NOGROUP", "NOSTREAM"]) == {"NOGROUP": None, "NOSTREAM": None}
            await client.sadd(keys.symbols, "XBTUSD", "bad\x1b[31m", "A" * 500, b"\xff\xfe")
            valid, invalid = await owner.symbols()
            assert valid == {"XBTUSD"} and len(invalid) == 3
            await owner.request_resync("XBTUSD", "gap: disconnect", "owner")
            [(_, fields)] = cast(list[tuple[bytes, list[bytes]]], await client.xrange(keys.control))
            assert fields == [b"op", b"resubscribe", b"symbol", b"XBTUSD", b"reason", b"gap: disconnect",
                              b"requested_by", b"owner"]
        finally:
            owner.close()
            dead.close()
            await client.aclose()

    asyncio.run(scenario())


def test_reads_and_acks_raise_redis_errors_and_reconnect(redis_url: str, key_prefix: str) -> None:
    """The hot path's own connections fail like redis-py's (a RedisError the worker handles) and recover."""
    keys = Keys(key_prefix)

    async def scenario() -> None:
        client = connect(redis_url, 5.0)
        streams = L2Streams(client, keys, "reader", redis_url, 5.0)
        stream = keys.l2_stream("XBTUSD")
        try:
            with pytest.raises(ResponseError, match="NOGROUP"):
                await streams.read_new(["XBTUSD"], count=10, block_ms=10)
            await streams.ensure_group("XBTUSD", None)
            first = cast(bytes, await client.xadd(stream, {"n": "1"}))
            [(_, delivered)] = await streams.read_new(["XBTUSD"], count=10, block_ms=10)
            assert [entry_id for entry_id, _ in delivered] == [first]
            names = {b"l2builder:reader:read", b"l2builder:reader:ack"}
            await streams.ack({"XBTUSD": [first.decode()]})  # opens the ack connection
            listed = {client_info["name"].encode() for client_info in await client.client_list()}
            assert names <= listed
            for name in names:
                killed = [info["id"] for info in await client.client_list() if info["name"] == name.decode()]
                assert await client.client_kill_filter(_id=killed[0]) == 1
            second = cast(bytes, await client.xadd(stream, {"n": "2"}))
            with pytest.raises(RedisError):
                await streams.read_new(["XBTUSD"], count=10, block_ms=10)
            with pytest.raises(RedisError):
                await streams.ack({"XBTUSD": [second.decode()]})
            # Both reconnect on their next call; nothing was delivered by the failed read.
            [(_, delivered)] = await streams.read_new(["XBTUSD"], count=10, block_ms=10)
            assert [entry_id for entry_id, _ in delivered] == [second]
            await streams.ack({"XBTUSD": [second.decode()]})
            assert (await client.xpending(stream, L2BUILDER_GROUP))["pending"] == 0
        finally:
            streams.close()
            await client.aclose()

    asyncio.run(scenario())
