"""Who owns which symbol: membership heartbeats, leases with a fencing epoch, all through Lua scripts.

Keys (DESIGN.md): `<p>:l2builder:members` is a zset of instances scored by heartbeat expiry in Redis time;
`<p>:lease:{SYM}` names the owner of SYM and expires after LEASE_TTL unless renewed; `<p>:epoch:{SYM}` is
incremented on every acquisition and never goes down, so an epoch key found missing or lower than a held
lease's epoch proves that Redis lost data (`Renewal.vanished`). Each script touches one symbol's two keys,
which share a hash tag, so the protocol also works on Redis Cluster; many symbols are handled in one
pipelined round trip.

An instance trusts a lease only until `valid_until`: a fraction of the TTL measured from when the renewal
was *sent*, on its own monotonic clock. Redis expires the key no earlier than a full TTL after it received
the renewal, so the holder always gives up before anyone else can take the symbol. The epoch covers what
timing cannot (a paused process, a write already on the wire): every MongoDB write carries it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from services.core.keys import Keys
from services.l2builder.scripts import register

LEASE_TRUST = 0.75
"""Fraction of LEASE_TTL a renewal is trusted for, leaving room for clock drift and network delay."""
RENEW_FRACTION = 0.25
"""A lease is renewed once this fraction of LEASE_TTL has passed since its last renewal."""


@dataclass(slots=True)
class Lease:
    symbol: str
    epoch: int
    renewed_at: float
    valid_until: float

    def valid(self, now: float) -> bool:
        return now < self.valid_until


@dataclass(slots=True)
class Renewal:
    """The leases a renewal could not extend: `lost` to expiry or another instance, `vanished` with their
    epoch key (Redis lost data; the lease may be taken again in place with `acquire`'s floor)."""

    lost: list[Lease] = field(default_factory=list)
    vanished: list[Lease] = field(default_factory=list)


class Ownership:
    """Membership and leases of one instance; time is `time.monotonic()` throughout."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, instance: str, ttl: float) -> None:
        self.redis, self.keys, self.instance, self.ttl = redis, keys, instance, ttl
        self._ttl_ms = max(1, int(ttl * 1000))
        self._heartbeat = register(redis, "heartbeat")
        self._acquire = register(redis, "acquire_lease")
        self._renew = register(redis, "renew_lease")
        self._release = register(redis, "release_lease")
        self._raise_epoch = register(redis, "raise_epoch")

    def _lease_keys(self, symbol: str) -> list[str]:
        return [self.keys.lease(symbol), self.keys.epoch(symbol)]

    async def heartbeat(self) -> tuple[list[str], bool]:
        """Announce this instance for one more TTL; return the live members (this one included) and whether
        this instance was missing from them (first heartbeat, membership expired or lost by Redis)."""
        added, members = await self._heartbeat(keys=[self.keys.l2builder_members],
                                               args=[self.instance, self._ttl_ms])
        return sorted(member.decode() for member in members), bool(added)

    async def leave(self) -> None:
        await self.redis.zrem(self.keys.l2builder_members, self.instance)

    async def acquire(self, symbols: list[str], floors: Mapping[str, int] | None = None) -> list[Lease]:
        """Try to take each symbol; return the leases obtained (symbols held by others are left out).

        `floors` gives the least epoch a symbol may get: one above an epoch this instance wrote under
        before Redis lost the epoch key."""
        if not symbols:
            return []
        floors = floors or {}
        sent = time.monotonic()
        async with self.redis.pipeline(transaction=False) as pipe:
            for symbol in symbols:
                await self._acquire(keys=self._lease_keys(symbol),
                                    args=[self.instance, self._ttl_ms, floors.get(symbol, 0)], client=pipe)
            epochs = await pipe.execute()
        return [Lease(symbol, int(epoch), sent, sent + self.ttl * LEASE_TRUST)
                for symbol, epoch in zip(symbols, epochs, strict=True) if epoch is not None]

    def due(self, leases: list[Lease], now: float) -> list[Lease]:
        return [lease for lease in leases if now - lease.renewed_at >= self.ttl * RENEW_FRACTION]

    async def renew(self, leases: list[Lease]) -> Renewal:
        """Extend `leases` in place; return those that could not be (see `Renewal`)."""
        renewal = Renewal()
        if not leases:
            return renewal
        sent = time.monotonic()
        async with self.redis.pipeline(transaction=False) as pipe:
            for lease in leases:
                await self._renew(keys=self._lease_keys(lease.symbol),
                                  args=[self.instance, self._ttl_ms, lease.epoch], client=pipe)
            replies = await pipe.execute()
        for lease, renewed in zip(leases, replies, strict=True):
            if renewed == 1:
                lease.renewed_at, lease.valid_until = sent, sent + self.ttl * LEASE_TRUST
            elif renewed < 0:
                renewal.vanished.append(lease)
            else:
                renewal.lost.append(lease)
        return renewal

    async def release(self, leases: list[Lease]) -> None:
        if not leases:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for lease in leases:
                await self._release(keys=self._lease_keys(lease.symbol), args=[self.instance, lease.epoch],
                                    client=pipe)
            await pipe.execute()

    async def advance(self, leases: list[Lease]) -> list[Lease]:
        """Move each lease to the next epoch, in place, in one round trip; return those no longer ours.

        A book that changes without a new entry (it turned stale where it stood) needs a version above
        the one stored at the same position, and the version is (epoch, stream id)."""
        if not leases:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for lease in leases:
                await self._raise_epoch(keys=self._lease_keys(lease.symbol),
                                        args=[self.instance, lease.epoch, lease.epoch + 1], client=pipe)
            epochs = await pipe.execute()
        lost = []
        for lease, epoch in zip(leases, epochs, strict=True):
            if epoch is None:
                lost.append(lease)
            else:
                lease.epoch = int(epoch)
        return lost

    async def raise_epoch(self, lease: Lease, floor: int) -> bool:
        """Make `lease.epoch` at least `floor`; False when the lease is no longer ours."""
        epoch = await self._raise_epoch(keys=self._lease_keys(lease.symbol),
                                        args=[self.instance, lease.epoch, floor])
        if epoch is None:
            return False
        lease.epoch = int(epoch)
        return True
