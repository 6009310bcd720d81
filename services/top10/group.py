"""Membership of consumer group `top10`: joining streams, taking over abandoned entries, removing departed members.

These are the group operations around the read loop, each a few pipelined commands over every stream. They
decide nothing about snapshots and report through their return values; the service counts and logs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from services.core.entries import PendingEntry
from services.core.keys import TOP10_GROUP
from services.core.text import as_text
from services.runtime.redis_client import RedisClient
from services.top10.scripts import REMOVE_CONSUMER, ScriptCall, run_pipelined

CLAIM_COUNT = 200
"""Entries per stream per XAUTOCLAIM call; Redis scans at most ten times as many pending entries."""


@dataclass
class Joined:
    """The outcome of joining streams: the groups that had to be created, the streams that cannot be joined."""

    created: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    """Stream -> the reason: WRONGTYPE, something else holds the name."""


async def join(redis: RedisClient, streams: Sequence[str]) -> Joined:
    """Create the group on each stream from id 0, so entries written before we came are not lost.

    A group that exists already is joined, whoever created it. Of several instances creating the same
    group at once, exactly one sees it created. Only a name held by something else (WRONGTYPE) refuses a
    stream for good; any other error reply (a slot moving on a cluster and redis-py's redirect failing too,
    a denied command, Redis out of memory) raises, for the caller's loop to back off and try again.
    """
    async with redis.pipeline(transaction=False) as pipe:
        for stream in streams:
            pipe.xgroup_create(stream, TOP10_GROUP, id="0", mkstream=True)
        results = await pipe.execute(raise_on_error=False)
    joined = Joined()
    for stream, result in zip(streams, results, strict=True):
        if not isinstance(result, Exception):
            joined.created.append(stream)
        elif str(result).startswith("WRONGTYPE"):
            joined.refused[stream] = str(result)
        elif not str(result).startswith("BUSYGROUP"):
            raise result
    return joined


@dataclass
class ClaimedPage:
    """Entries just claimed, per stream, and the ids Redis dropped because MAXLEN had trimmed them."""

    entries: list[tuple[bytes, list[PendingEntry]]] = field(default_factory=list)
    trimmed: list[tuple[str, str]] = field(default_factory=list)


async def claim_abandoned(redis: RedisClient, streams: Sequence[str], consumer: str,
                          min_idle_ms: int) -> AsyncIterator[ClaimedPage]:
    """XAUTOCLAIM for `consumer` every entry pending longer than `min_idle_ms`, whoever holds it, page by page.

    Each page is claimed before the next is asked for, so a consumer dying midway leaves at most a page
    in its own pending list, for the next claim to take over.
    """
    cursors: dict[str, bytes | str] = dict.fromkeys(streams, "0-0")
    while cursors:
        async with redis.pipeline(transaction=False) as pipe:
            for stream, cursor in cursors.items():
                pipe.xautoclaim(stream, TOP10_GROUP, consumer, min_idle_ms, cursor, count=CLAIM_COUNT)
            replies = await pipe.execute()
        page = ClaimedPage()
        following: dict[str, bytes | str] = {}
        for stream, (cursor, entries, *deleted) in zip(cursors, replies, strict=True):
            if entries:
                page.entries.append((stream.encode(), entries))
            # Redis 7 reports claimed ids whose entries MAXLEN trimmed, and drops them from the pending list.
            page.trimmed.extend((stream, as_text(entry_id)) for entry_id in (deleted[0] if deleted else []))
            if as_text(cursor) != "0-0":
                following[stream] = cursor
        if page.entries or page.trimmed:
            yield page
        cursors = following


@dataclass(frozen=True)
class Departure:
    """A member found gone: idle at least this long on every stream, owning nothing."""

    consumer: str
    idle_ms: int
    streams: int


async def remove_departed(redis: RedisClient, streams: Sequence[str], consumer: str, expiry_ms: int) -> list[Departure]:
    """Remove the members other than `consumer` idle at least `expiry_ms` on every stream and owning nothing.

    A member counts as gone only when it is idle everywhere: Redis 7.0 refreshes a consumer's idle time on
    a stream only when that stream delivers to it, so a live member looks idle on quiet streams. In a market
    quiet for longer than the expiry, live members may be removed too; that costs nothing, since they own
    nothing and Redis creates them again on their next delivery.
    """
    async with redis.pipeline(transaction=False) as pipe:
        for stream in streams:
            pipe.xinfo_consumers(stream, TOP10_GROUP)
        listings = await pipe.execute()
    idle_ms: dict[str, int] = {}
    pending: dict[str, int] = {}
    found_on: dict[str, list[str]] = {}
    for stream, members in zip(streams, listings, strict=True):
        for member in members:
            name = as_text(member["name"])
            idle_ms[name] = min(idle_ms.get(name, member["idle"]), member["idle"])
            pending[name] = pending.get(name, 0) + member["pending"]
            found_on.setdefault(name, []).append(stream)
    gone = [name for name in idle_ms if name != consumer and idle_ms[name] >= expiry_ms and pending[name] == 0]
    memberships = [(name, stream) for name in gone for stream in found_on[name]]
    if not memberships:
        return []
    # The script checks again, atomically: the member may have come back since the listing.
    calls: list[ScriptCall] = [([stream], [TOP10_GROUP, name, expiry_ms]) for name, stream in memberships]
    removed = await run_pipelined(redis, REMOVE_CONSUMER, calls)
    removed_from = dict.fromkeys(gone, 0)
    for (name, _), result in zip(memberships, removed, strict=True):
        removed_from[name] += result
    return [Departure(name, idle_ms[name], count) for name, count in removed_from.items() if count]


async def leave(redis: RedisClient, streams: Sequence[str], consumer: str) -> int:
    """Remove `consumer` from the group on every stream where it owns nothing; return how many."""
    calls: list[ScriptCall] = [([stream], [TOP10_GROUP, consumer, 0]) for stream in streams]
    return sum(await run_pipelined(redis, REMOVE_CONSUMER, calls))
