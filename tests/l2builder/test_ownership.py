"""The lease and membership scripts against a real Redis: who may own, fencing epochs, expiry."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

from services.core.keys import Keys
from services.l2builder.ownership import LEASE_TRUST, Ownership, Renewal

Scenario = Callable[[aioredis.Redis, Keys, Ownership, Ownership], Awaitable[None]]


def run_owners(redis_url: str, key_prefix: str, lease_ttls: tuple[float, float], scenario: Scenario) -> None:
    """Run `scenario` with a client, the keys and two instances `one` and `two` with these lease TTLs."""
    keys = Keys(key_prefix)

    async def run() -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            await scenario(client, keys, Ownership(client, keys, "one", lease_ttls[0]),
                           Ownership(client, keys, "two", lease_ttls[1]))
        finally:
            await client.aclose()

    asyncio.run(run())


def test_leases_fence_and_hand_over(redis_url: str, key_prefix: str) -> None:
    async def scenario(client: aioredis.Redis, keys: Keys, one: Ownership, two: Ownership) -> None:
        [lease] = await one.acquire(["XBTUSD"])
        assert lease.epoch == 1 and lease.valid(time.monotonic())
        assert lease.valid_until - lease.renewed_at == 0.5 * LEASE_TRUST
        assert await two.acquire(["XBTUSD"]) == []
        assert await client.get(keys.lease("XBTUSD")) == b"one"
        assert await one.renew([lease]) == Renewal()
        await two.release([lease])  # not its lease: nothing happens
        assert await client.get(keys.lease("XBTUSD")) == b"one"
        await one.release([lease])
        [taken] = await two.acquire(["XBTUSD"])
        assert taken.epoch == 2
        assert await one.renew([lease]) == Renewal(lost=[lease])  # the old holder learns it lost the symbol
        await asyncio.sleep(0.6)  # the lease expires without renewals
        [again] = await one.acquire(["XBTUSD"])
        assert again.epoch == 3 and await two.renew([taken]) == Renewal(lost=[taken])
        [restarted] = await one.acquire(["XBTUSD"])  # a new process under the same name
        assert restarted.epoch == 4 and await one.renew([again]) == Renewal(lost=[again])
        assert await one.raise_epoch(restarted, 10) and restarted.epoch == 10
        assert await client.get(keys.epoch("XBTUSD")) == b"10"
        assert await one.raise_epoch(restarted, 3) and restarted.epoch == 10
        assert not await two.raise_epoch(taken, 20)
        assert await one.advance([restarted]) == [] and restarted.epoch == 11
        assert await one.advance([again]) == [again]  # no longer the lease's epoch: not ours
        assert await client.get(keys.epoch("XBTUSD")) == b"11" and await one.renew([restarted]) == Renewal()

    run_owners(redis_url, key_prefix, (0.5, 0.5), scenario)


def test_membership_expires_without_heartbeats(redis_url: str, key_prefix: str) -> None:
    async def scenario(client: aioredis.Redis, keys: Keys, one: Ownership, two: Ownership) -> None:
        assert await one.heartbeat() == (["one"], True)
        assert await two.heartbeat() == (["one", "two"], True)
        assert await two.heartbeat() == (["one", "two"], False)
        await asyncio.sleep(0.5)
        assert await two.heartbeat() == (["two"], False)
        await client.delete(keys.l2builder_members)  # Redis lost it: the next heartbeat says so
        assert await two.heartbeat() == (["two"], True)
        await two.leave()
        assert await client.zcard(keys.l2builder_members) == 0

    run_owners(redis_url, key_prefix, (0.4, 30), scenario)


def test_a_lost_epoch_key_is_detected_and_never_goes_backwards(redis_url: str, key_prefix: str) -> None:
    async def scenario(client: aioredis.Redis, keys: Keys, one: Ownership, two: Ownership) -> None:
        [first] = await one.acquire(["XBTUSD"])
        await one.release([first])
        [lease] = await one.acquire(["XBTUSD"])
        [other] = await one.acquire(["ETHUSD"])
        assert lease.epoch == 2
        await client.delete(keys.lease("XBTUSD"), keys.epoch("XBTUSD"))  # as FLUSHALL or eviction would
        assert await one.renew([lease, other]) == Renewal(vanished=[lease])
        # Another instance took the symbol after the loss: its epoch restarted below ours.
        [taken] = await two.acquire(["XBTUSD"])
        assert taken.epoch == 1 and await one.renew([lease]) == Renewal(vanished=[lease])
        await two.release([taken])
        [again] = await one.acquire(["XBTUSD"], floors={"XBTUSD": lease.epoch + 1})
        assert again.epoch == 3 and await client.get(keys.epoch("XBTUSD")) == b"3"
        assert await one.renew([again]) == Renewal()
        [higher] = await one.acquire(["XBTUSD"], floors={"XBTUSD": 1})  # a floor below the counter: no effect
        assert higher.epoch == 4

    run_owners(redis_url, key_prefix, (30, 30), scenario)
