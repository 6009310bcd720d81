"""The lease and membership scripts against a real Redis: who may own, fencing epochs, expiry."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis

from services.common.keys import Keys
from services.l2builder.ownership import LEASE_TRUST, Ownership


def test_leases_fence_and_hand_over(redis_url: str, key_prefix: str) -> None:
    keys = Keys(key_prefix)

    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_url)
        one, two = Ownership(client, keys, "one", 0.5), Ownership(client, keys, "two", 0.5)
        try:
            [lease] = await one.acquire(["XBTUSD"])
            assert lease.epoch == 1 and lease.valid(time.monotonic())
            assert lease.valid_until - lease.renewed_at == 0.5 * LEASE_TRUST
            assert await two.acquire(["XBTUSD"]) == []
            assert await client.get(keys.lease("XBTUSD")) == b"one"
            assert await one.renew([lease]) == []
            await two.release([lease])  # not its lease: nothing happens
            assert await client.get(keys.lease("XBTUSD")) == b"one"
            await one.release([lease])
            [taken] = await two.acquire(["XBTUSD"])
            assert taken.epoch == 2
            assert await one.renew([lease]) == [lease]  # the old holder learns it lost the symbol
            await asyncio.sleep(0.6)  # the lease expires without renewals
            [again] = await one.acquire(["XBTUSD"])
            assert again.epoch == 3 and await two.renew([taken]) == [taken]
            [restarted] = await one.acquire(["XBTUSD"])  # a new process under the same name
            assert restarted.epoch == 4 and await one.renew([again]) == [again]
            assert await one.raise_epoch(restarted, 10) and restarted.epoch == 10
            assert await client.get(keys.epoch("XBTUSD")) == b"10"
            assert await one.raise_epoch(restarted, 3) and restarted.epoch == 10
            assert not await two.raise_epoch(taken, 20)
        finally:
            await client.aclose()

    asyncio.run(scenario())


def test_membership_expires_without_heartbeats(redis_url: str, key_prefix: str) -> None:
    keys = Keys(key_prefix)

    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_url)
        one, two = Ownership(client, keys, "one", 0.4), Ownership(client, keys, "two", 30)
        try:
            assert await one.heartbeat() == ["one"]
            assert await two.heartbeat() == ["one", "two"]
            await asyncio.sleep(0.5)
            assert await two.heartbeat() == ["two"]
            await two.leave()
            assert await client.zcard(keys.l2builder_members) == 0
        finally:
            await client.aclose()

    asyncio.run(scenario())
