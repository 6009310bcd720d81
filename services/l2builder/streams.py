"""The Redis side of l2builder: its consumer group on the l2 streams, catch-up ranges, acks and resyncs.

New entries are read with XREADGROUP in the `l2builder` group, under this instance's name, only from the
streams it owns, those the activity stream named (services.core.activity); so `XINFO GROUPS` shows the lag
and `XPENDING` what is read but not yet durable. Entries a previous owner read but never made durable are
not delivered again by the group: the new owner reads them with XRANGE from the position stored in MongoDB
(`read_range`), which is also how holes are refilled.
XACK may acknowledge an entry pending under any consumer, so the new owner clears the old one's entries.

The hot path, XREADGROUP and XACK, runs on two lean wires (`open_wire`: hiredis on bare streams, a
fraction of redis-py's CPU per round trip, see `python -m bench.wire`; on a cluster one connection per
primary, each command routed by its stream's slot), one each because the reader always has a read in
flight while the flusher acknowledges; everything else goes through redis-py.
Either way a failure raises a `RedisError` (services.runtime), an error reply to a wire command included.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, cast

from redis.exceptions import RedisError, ResponseError

from services.core.activity import ActivityReads
from services.core.entries import RawEntry, stream_pairs
from services.core.keys import CONTROL_MAXLEN, L2BUILDER_GROUP, SYMBOL_PATTERN, Keys
from services.runtime.redis_client import RedisClient
from services.runtime.redis_wire import Command, Wire, open_wire
from services.runtime.scripts import LuaScript, raise_first_error

__all__ = ["GroupInfo", "L2Streams", "RawEntry", "StreamHead"]
RANGE_PAGE = 1000
REMOVE_IDLE_CONSUMERS = LuaScript.beside(__file__, "remove_idle_consumers.lua")


@dataclass(frozen=True, slots=True)
class GroupInfo:
    """What XINFO GROUPS says about the `l2builder` group of one stream."""

    lag: int | None
    last_delivered: str


@dataclass(frozen=True, slots=True)
class StreamHead:
    """What XINFO STREAM says about the oldest retained entry and about deletions."""

    first: RawEntry | None
    max_deleted_id: str
    last_generated_id: str


class L2Streams:
    def __init__(self, redis: RedisClient, keys: Keys, consumer: str, url: str, timeout: float) -> None:
        """`redis` serves the occasional commands; reads and acks open their own connections to `url`, whose
        `timeout` must be longer than any BLOCK of `read_new`."""
        self.redis, self.keys, self.consumer = redis, keys, consumer
        self._symbol_of: dict[bytes, str] = {}
        self._reads = open_wire(url, timeout, f"l2builder:{consumer}:read")
        self._acks = open_wire(url, timeout, f"l2builder:{consumer}:ack")
        self._activity = ActivityReads(keys.activity("l2"))
        self._was_ready: set[str] = set()
        """The streams `read_new` was given last time: one new among them is read at once."""

    def close(self) -> None:
        self._reads.close()
        self._acks.close()

    def _key(self, symbol: str) -> str:
        key = self.keys.l2_stream(symbol)
        self._symbol_of.setdefault(key.encode(), symbol)
        return key

    async def symbols(self) -> tuple[set[str], list[bytes]]:
        """The symbols ingest publishes (DESIGN.md: `<p>:symbols`), and the members that are no symbol name
        (SYMBOL_PATTERN): those never become a key, a log field or a document."""
        valid, invalid = set(), []
        for member in cast(set[bytes], await self.redis.smembers(self.keys.symbols)):
            name = member.decode(errors="replace")
            if SYMBOL_PATTERN.fullmatch(name):
                valid.add(name)
            else:
                invalid.append(member)
        return valid, invalid

    async def ensure_group(self, symbol: str, start: str | None) -> None:
        """Create the group (and the stream) unless it exists, delivering what comes after `start`.

        `start` is the stored position (None: the beginning), so a group recreated after a Redis data
        loss does not hand out again everything the books already contain.
        """
        try:
            await self.redis.xgroup_create(self._key(symbol), L2BUILDER_GROUP, id=start or "0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read_new(self, ready: Collection[str], count: int, block_ms: int) -> list[tuple[str, list[RawEntry]]]:
        """Entries never delivered to the group, as (symbol, entries), from those of the `ready` streams
        that the activity stream named (all of them when a full read is due: services.core.activity).

        One call: an XREADGROUP per slot group of the streams to read, then the read of new signals, which
        blocks `block_ms` only when there is nothing to read. Those signals name the streams of the next
        call. A failed call has every stream read in full next time."""
        activity = self._activity
        new = [symbol for symbol in ready if symbol not in self._was_ready]
        if new or len(self._was_ready) != len(ready):
            activity.wake(new)  # just made ready: entries signalled before are waiting
            self._was_ready = set(ready)
        plan = activity.plan(ready, time.monotonic())
        keys = [self._key(symbol) for symbol in plan.symbols]
        reads: list[Command] = [("XREADGROUP", "GROUP", L2BUILDER_GROUP, self.consumer, "COUNT", count, "STREAMS",
                                 *[keys[index] for index in group], *[">"] * len(group))
                                for group in self._reads.slot_groups(keys)]
        signal = activity.signal_read(None if reads else block_ms)
        learning = activity.learning
        try:
            replies = await _call(self._reads, [signal, *reads] if learning else [*reads, signal])
        except RedisError:
            activity.read_failed()
            raise
        signal_reply, read_replies = (replies[0], replies[1:]) if learning else (replies[-1], replies[:-1])
        batch = [(self._symbol_of[key], entries) for reply in read_replies for key, entries in stream_pairs(reply)]
        activity.read_done(plan, time.monotonic(),
                           [symbol for symbol, entries in batch if len(entries) >= count])
        activity.signals(signal_reply)
        return batch

    async def read_range(self, symbol: str, after: str | None, until: str, count: int) -> list[RawEntry]:
        """Up to `count` entries with `after` < id <= `until` (`until` may be `+` or `(id` for exclusive)."""
        low = f"({after}" if after else "-"
        return cast(list[RawEntry], await self.redis.xrange(self._key(symbol), min=low, max=until, count=count))

    async def last_delivered(self, symbol: str) -> str | None:
        """The id up to which the group has handed out entries, None when the group (or the stream) does
        not exist."""
        try:
            groups = await self.redis.xinfo_groups(self._key(symbol))
        except ResponseError as exc:
            if "no such key" in str(exc):
                return None
            raise
        for group in groups:
            if group["name"] == L2BUILDER_GROUP.encode():
                return str(group["last-delivered-id"].decode())
        return None

    async def head(self, symbol: str) -> StreamHead:
        info = await self.redis.xinfo_stream(self._key(symbol))
        max_deleted = info.get("max-deleted-entry-id", b"0-0")
        return StreamHead(info.get("first-entry"), max_deleted.decode(), info["last-generated-id"].decode())

    async def ack_covered(self, symbol: str, upto: str) -> int:
        """Acknowledge entries up to `upto` still pending under any consumer: a stored book covers them
        (an owner died between its write and its XACK). Returns how many were acknowledged."""
        key, total = self._key(symbol), 0
        while True:
            pending = await self.redis.xpending_range(key, L2BUILDER_GROUP, min="-", max=upto, count=RANGE_PAGE)
            if pending:
                total += await self.redis.xack(key, L2BUILDER_GROUP, *[item["message_id"] for item in pending])
            if len(pending) < RANGE_PAGE:
                return total

    async def groups(self, symbols: list[str]) -> dict[str, GroupInfo | None]:
        """Per stream, its group (None when the stream or the group does not exist); a stream whose reply
        was another error is left out."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for symbol in symbols:
                pipe.xinfo_groups(self._key(symbol))
            replies = await pipe.execute(raise_on_error=False)
        found: dict[str, GroupInfo | None] = {}
        for symbol, groups in zip(symbols, replies, strict=True):
            if isinstance(groups, Exception):
                if isinstance(groups, ResponseError) and "no such key" in str(groups):
                    found[symbol] = None
                continue
            found[symbol] = None
            for group in groups:
                if group["name"] == L2BUILDER_GROUP.encode():
                    found[symbol] = GroupInfo(group.get("lag"), group["last-delivered-id"].decode())
        return found

    async def remove_idle_consumers(self, symbols: list[str], idle: float) -> int:
        """Forget consumers idle for `idle` seconds that hold nothing, so the group lists live readers."""
        removed = await REMOVE_IDLE_CONSUMERS.run_each(self.redis, [
            ([self._key(symbol)], [int(idle * 1000), self.consumer, L2BUILDER_GROUP]) for symbol in symbols])
        raise_first_error(removed)
        return sum(removed)

    async def ack(self, ids: dict[str, list[str]]) -> None:
        """XACK every id, one command per stream, in one round trip."""
        commands = [("XACK", self._key(symbol), L2BUILDER_GROUP, *stream_ids)
                    for symbol, stream_ids in ids.items() if stream_ids]
        if commands:
            await _call(self._acks, commands)

    async def request_resync(self, symbol: str, reason: str, instance: str) -> None:
        fields = {"op": "resubscribe", "symbol": symbol, "reason": reason, "requested_by": instance}
        await self.redis.xadd(self.keys.control, fields, maxlen=CONTROL_MAXLEN, approximate=True)  # type: ignore[arg-type]

    async def forget_consumer(self, symbols: list[str]) -> None:
        """Remove this instance from the groups it used, so `XINFO CONSUMERS` lists only live readers."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for symbol in symbols:
                pipe.xgroup_delconsumer(self._key(symbol), L2BUILDER_GROUP, self.consumer)
            await pipe.execute(raise_on_error=False)


async def _call(wire: Wire, commands: Sequence[Command]) -> list[Any]:
    """`wire.call`, with the first error reply raised, as redis-py raises it."""
    replies = await wire.call(commands)
    raise_first_error(replies)
    return replies
