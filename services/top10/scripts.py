"""The Lua scripts of top10, read from package data and run by SHA in pipelines.

redis-py's `register_script` objects send SCRIPT EXISTS before every pipeline that uses them: one more
round trip per batch, on the path whose latency we measure. Redis forgets scripts only when it restarts
or is told to (SCRIPT FLUSH), so `run_pipelined` sends bare EVALSHAs and, on NOSCRIPT, loads the script
and sends the whole batch again. That is safe because every script is idempotent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib.resources import files
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from services.runtime.redis_wire import Command
from services.top10.snapshots import GapMark, Top10Write


class LuaScript:
    """A script's source and the SHA1 that EVALSHA names it by."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    @classmethod
    def from_package(cls, filename: str) -> LuaScript:
        return cls(files(__package__).joinpath(filename).read_text(encoding="utf-8"))


STORE_TOP10 = LuaScript.from_package("store_top10.lua")
REMOVE_CONSUMER = LuaScript.from_package("remove_consumer.lua")
MARK_STALE = LuaScript.from_package("mark_stale.lua")
MARK_GAP = LuaScript.from_package("mark_gap.lua")

LIVE, STALE = "live", "stale"

ScriptCall = tuple[Sequence[str | bytes], Sequence[bytes | str | int | float]]


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


async def run_pipelined(redis: Redis, script: LuaScript, calls: Sequence[ScriptCall]) -> list[Any]:
    """EVALSHA `script` once per `(keys, args)` in one pipeline; return the replies in order.

    Raises the first error other than a NOSCRIPT that a reload cured: a batch is never half-reported as done.
    """
    replies = await _evalsha_each(redis, script, calls)
    if any(isinstance(reply, NoScriptError) for reply in replies):
        await redis.script_load(script.source)
        replies = await _evalsha_each(redis, script, calls)
    raise_first_error(replies)
    return replies


def evalsha_command(script: LuaScript, call: ScriptCall) -> Command:
    """The EVALSHA of `script` for one call, as a command to send (its sender handles NOSCRIPT, see run_pipelined)."""
    keys, args = call
    return ("EVALSHA", script.sha, len(keys), *keys, *args)


def raise_first_error(replies: Sequence[Any]) -> None:
    """Raise the first error among a pipeline's replies, if any."""
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply


async def _evalsha_each(redis: Redis, script: LuaScript, calls: Sequence[ScriptCall]) -> list[Any]:
    async with redis.pipeline(transaction=False) as pipe:
        for keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
    return replies
