"""Who owns which symbol: membership heartbeats, leases with a fencing epoch, all through Lua scripts.

Keys (DESIGN.md): `<p>:l2builder:members` is a zset of instances scored by heartbeat expiry in Redis time;
`<p>:lease:{SYM}` names the owner of SYM and expires after LEASE_TTL unless renewed; `<p>:epoch:{SYM}` is
incremented on every acquisition and never goes down, so an epoch key found missing or lower than a held
lease's epoch proves that Redis lost data (`Renewal.vanished`). Each script touches one symbol's two keys,
which share a hash tag, so the protocol also works on Redis Cluster; many symbols are handled in one
pipelined round trip.

The writes fencing relies on (an acquisition, a renewal, a raised epoch) count only once a replica has
them, where the primary has replicas (services.runtime.replicas, docs/cluster.md): a failover to a replica
that missed an acquisition would hand the same epoch out again. An unconfirmed acquisition gives no lease
(the key names this instance, so the next tick takes it again under a new epoch), an unconfirmed renewal
extends nothing, an unconfirmed raise counts as the lease lost.

An instance trusts a lease only until `valid_until`: a fraction of the TTL measured from when the renewal
was *sent*, on its own monotonic clock. Redis expires the key no earlier than a full TTL after it received
the renewal, so the holder always gives up before anyone else can take the symbol. The epoch covers what
timing cannot (a paused process, a write already on the wire): every MongoDB write carries it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from services.core.keys import Keys
from services.runtime.redis_client import RedisClient
from services.runtime.replicas import NotReplicated, ReplicaWait
from services.runtime.scripts import LuaScript, ScriptCall, raise_first_error

LEASE_TRUST = 0.75
"""Fraction of LEASE_TTL a renewal is trusted for, leaving room for clock drift and network delay."""
RENEW_FRACTION = 0.25
"""A lease is renewed once this fraction of LEASE_TTL has passed since its last renewal."""
REPLICA_WAIT_SHARE = 0.1
"""The WAIT for a replica after a fencing write lasts at most this share of LEASE_TTL (and 1 s): a replica
that is slower than that has the write refused, to be tried again on the next tick."""
REPLICA_WAIT_MAX_MS = 1000

HEARTBEAT = LuaScript.beside(__file__, "heartbeat.lua")
ACQUIRE = LuaScript.beside(__file__, "acquire_lease.lua")
RENEW = LuaScript.beside(__file__, "renew_lease.lua")
RELEASE = LuaScript.beside(__file__, "release_lease.lua")
RAISE_EPOCH = LuaScript.beside(__file__, "raise_epoch.lua")


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

    def __init__(self, redis: RedisClient, keys: Keys, instance: str, ttl: float) -> None:
        self.redis, self.keys, self.instance, self.ttl = redis, keys, instance, ttl
        self._ttl_ms = max(1, int(ttl * 1000))
        self.replicated = ReplicaWait(redis, max(1, min(REPLICA_WAIT_MAX_MS, int(self._ttl_ms * REPLICA_WAIT_SHARE))))

    def _lease_keys(self, symbol: str) -> list[str]:
        return [self.keys.lease(symbol), self.keys.epoch(symbol)]

    async def _run_each(self, script: LuaScript, calls: list[ScriptCall], replicated: bool = False) -> list[Any]:
        """One pipelined run per call; the first error raises (after the whole pipeline ran). `replicated`:
        each write no replica confirmed has a `NotReplicated` as its reply (that one is not raised)."""
        replies = await script.run_each(self.redis, calls, self.replicated if replicated else None)
        raise_first_error([reply for reply in replies if not isinstance(reply, NotReplicated)])
        return replies

    async def heartbeat(self) -> tuple[list[str], bool]:
        """Announce this instance for one more TTL; return the live members (this one included) and whether
        this instance was missing from them (first heartbeat, membership expired or lost by Redis)."""
        await self.replicated.refresh()
        added, members = await HEARTBEAT(self.redis, [self.keys.l2builder_members], [self.instance, self._ttl_ms])
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
        epochs = await self._run_each(ACQUIRE, [(self._lease_keys(symbol),
                                                 [self.instance, self._ttl_ms, floors.get(symbol, 0)])
                                                for symbol in symbols], replicated=True)
        return [Lease(symbol, int(epoch), sent, sent + self.ttl * LEASE_TRUST)
                for symbol, epoch in zip(symbols, epochs, strict=True)
                if epoch is not None and not isinstance(epoch, NotReplicated)]

    def due(self, leases: list[Lease], now: float) -> list[Lease]:
        return [lease for lease in leases if now - lease.renewed_at >= self.ttl * RENEW_FRACTION]

    async def renew(self, leases: list[Lease]) -> Renewal:
        """Extend `leases` in place; return those that could not be (see `Renewal`)."""
        renewal = Renewal()
        if not leases:
            return renewal
        sent = time.monotonic()
        replies = await self._run_each(RENEW, [(self._lease_keys(lease.symbol),
                                                [self.instance, self._ttl_ms, lease.epoch]) for lease in leases],
                                       replicated=True)
        for lease, renewed in zip(leases, replies, strict=True):
            if isinstance(renewed, NotReplicated):
                # Trusted as before until confirmed; a refusal (0, -1) changed nothing, so it holds as it is.
                if renewed.reply != 1:
                    (renewal.vanished if renewed.reply < 0 else renewal.lost).append(lease)
            elif renewed == 1:
                lease.renewed_at, lease.valid_until = sent, sent + self.ttl * LEASE_TRUST
            elif renewed < 0:
                renewal.vanished.append(lease)
            else:
                renewal.lost.append(lease)
        return renewal

    async def release(self, leases: list[Lease]) -> None:
        if not leases:
            return
        await self._run_each(RELEASE, [(self._lease_keys(lease.symbol), [self.instance, lease.epoch])
                                       for lease in leases])

    async def advance(self, leases: list[Lease]) -> list[Lease]:
        """Move each lease to the next epoch, in place, in one round trip; return those no longer ours.

        A book that changes without a new entry (it turned stale where it stood) needs a version above
        the one stored at the same position, and the version is (epoch, stream id)."""
        if not leases:
            return []
        epochs = await self._run_each(RAISE_EPOCH, [(self._lease_keys(lease.symbol),
                                                     [self.instance, lease.epoch, lease.epoch + 1])
                                                    for lease in leases], replicated=True)
        lost = []
        for lease, epoch in zip(leases, epochs, strict=True):
            if epoch is None or isinstance(epoch, NotReplicated):
                lost.append(lease)
            else:
                lease.epoch = int(epoch)
        return lost

    async def raise_epoch(self, lease: Lease, floor: int) -> bool:
        """Make `lease.epoch` at least `floor`; False when the lease is no longer ours."""
        [epoch] = await self._run_each(RAISE_EPOCH, [(self._lease_keys(lease.symbol),
                                                      [self.instance, lease.epoch, floor])], replicated=True)
        if epoch is None or isinstance(epoch, NotReplicated):
            return False
        lease.epoch = int(epoch)
        return True
