"""The Lua scripts of top10 (`*.lua` beside this module) and the keys and arguments of each call.

They run by SHA (services.runtime.scripts): in the read loop's round trip through `RedisWire`, elsewhere
through redis-py's pipelines with `run_pipelined`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from services.runtime.redis_client import RedisClient
from services.runtime.scripts import LuaScript, ScriptCall, raise_first_error
from services.top10.snapshots import GapMark, Top10Write

__all__ = ["MARK_GAP", "MARK_STALE", "REMOVE_CONSUMER", "STORE_TOP10", "ScriptCall", "mark_gap_call",
           "mark_stale_call", "run_pipelined", "store_top10_call"]

STORE_TOP10 = LuaScript.beside(__file__, "store_top10.lua")
REMOVE_CONSUMER = LuaScript.beside(__file__, "remove_consumer.lua")
MARK_STALE = LuaScript.beside(__file__, "mark_stale.lua")
MARK_GAP = LuaScript.beside(__file__, "mark_gap.lua")

LIVE, STALE = "live", "stale"


def store_top10_call(key: str, write: Top10Write, tolerance_us: int, lost_reason: str | None = None) -> ScriptCall:
    """The keys and arguments of `store_top10.lua` for one write to the hash (and channel) `key`.

    A snapshot of a session known to be lost (`lost_reason`) is still the newest there is, but nothing says
    the market has not moved since: it is written `stale`. The script appends status and reason to the
    message (it may write the snapshot stale itself, see there).
    """
    snapshot = write.snapshot
    ts_us, id_ms, id_seq = write.order
    status, reason = (STALE, lost_reason) if lost_reason is not None else (LIVE, "")
    message = orjson.dumps({"symbol": write.symbol, "bids": snapshot.bids, "asks": snapshot.asks,
                            "timestamp": snapshot.timestamp, "stream_id": write.stream_id})[:-1]
    return [key], [ts_us, id_ms, id_seq, write.stream_id, orjson.dumps(snapshot.bids), orjson.dumps(snapshot.asks),
                   snapshot.timestamp, write.recv_us, message, write.session, status, reason, tolerance_us]


def mark_stale_call(key: str, symbol: str, session: str, reason: str) -> ScriptCall:
    """The keys and arguments of `mark_stale.lua`: mark `key` stale if it still holds a snapshot of `session`."""
    message = orjson.dumps({"symbol": symbol, "status": STALE, "reason": reason, "session": session})
    return [key], [session, reason, message]


def mark_gap_call(key: str, gap: GapMark) -> ScriptCall:
    """The keys and arguments of `mark_gap.lua`: mark `key` stale unless it holds a snapshot newer than `gap`."""
    message = orjson.dumps({"symbol": gap.symbol, "status": STALE, "reason": gap.reason, "session": gap.session,
                            "stream_id": gap.stream_id})
    return [key], [*gap.position, gap.stream_id, gap.reason, message]


async def run_pipelined(redis: RedisClient, script: LuaScript, calls: Sequence[ScriptCall]) -> list[Any]:
    """Run `script` once per `(keys, args)` in one pipeline; return the replies in order.

    Raises the first error other than a NOSCRIPT that a reload cured: a batch is never half-reported as done.
    """
    replies = await script.run_each(redis, calls)
    raise_first_error(replies)
    return replies
