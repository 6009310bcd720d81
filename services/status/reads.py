"""The one pipeline a status snapshot reads Redis with: what it asks, in order, and its replies by name.

The server's TIME is asked just before, beside the pipeline (a cluster pipeline refuses a command of no key),
and its reply comes first in what `split_reads` takes.

The commands are queued and their replies split in this module only, so the snapshot never counts
positions. A command that failed (XINFO of a missing stream, a key of another type) comes back in place
as an error (services.runtime), read here as None.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from services.core.keys import Keys
from services.runtime.scripts import LuaScript

STREAM_SUMMARY = LuaScript.beside(__file__, "stream_summary.lua")
TOP10_FIELDS = ("updated_us", "stream_id", "timestamp", "bids", "asks", "status", "reason")
"""The fields of a top10 hash the snapshot shows, in the order `Top10` is built from."""
HEAD = 2
"""Replies before the per-symbol ones: the server's TIME (asked beside the pipeline) and the l2builder members."""
PER_SYMBOL = 8
"""Commands per symbol: summary and groups of both streams, lease, epoch, lease TTL, top10 hash."""


@dataclass(frozen=True, slots=True)
class SymbolReplies:
    """The replies about one symbol, each None when its command failed."""

    l2_summary: list[Any] | None
    """`stream_summary.lua` of the l2 stream: length, entries-added, first id, last id, last session."""
    l2_groups: list[dict[str, Any]] | None
    ob10_summary: list[Any] | None
    ob10_groups: list[dict[str, Any]] | None
    lease: str | None
    epoch: str | None
    lease_pttl: int | None
    top10: list[str | None] | None


@dataclass(frozen=True, slots=True)
class RedisReads:
    time: Any
    """TIME: (seconds, microseconds); raised rather than kept when it failed (see `split_reads`)."""
    members: list[tuple[str, float]] | None
    """The l2builder members zset with scores (heartbeat expiries, Redis time in ms)."""
    symbols: list[SymbolReplies]

    @property
    def redis_now_ms(self) -> int:
        seconds, micros = self.time
        return int(seconds) * 1000 + int(micros) // 1000


def queue_reads(pipe: redis.client.Pipeline | redis.cluster.ClusterPipeline, keys: Keys, names: Sequence[str]) -> None:
    """Queue the snapshot's reads of `names` on `pipe`, in the order `split_reads` expects after TIME."""
    pipe.zrange(keys.l2builder_members, 0, -1, withscores=True)
    for sym in names:
        for stream in (keys.l2_stream(sym), keys.ob10_stream(sym)):
            # A cluster pipeline refuses `.evalsha`; it routes the bare command by its key.
            pipe.execute_command("EVALSHA", STREAM_SUMMARY.sha, 1, stream)  # type: ignore[no-untyped-call]
            pipe.xinfo_groups(stream)
        pipe.get(keys.lease(sym))
        pipe.get(keys.epoch(sym))
        pipe.pttl(keys.lease(sym))
        pipe.hmget(keys.top10(sym), list(TOP10_FIELDS))


def split_reads(results: Sequence[Any], names: Sequence[str]) -> RedisReads:
    """The replies of `queue_reads(..., names)` by name. A failed TIME raises: without the server's clock
    no age can be told, so the snapshot reports Redis instead."""
    if len(results) != HEAD + PER_SYMBOL * len(names):
        raise ValueError(f"{len(results)} replies to the reads of {len(names)} symbols")
    if isinstance(results[0], Exception):
        raise results[0]
    symbols = [SymbolReplies(*(ok(reply) for reply in results[start:start + PER_SYMBOL]))
               for start in range(HEAD, len(results), PER_SYMBOL)]
    return RedisReads(results[0], ok(results[1]), symbols)


def ok(result: object) -> Any:
    """A pipeline result, or None for a failed command."""
    return None if isinstance(result, Exception) else result
