"""Review findings (wt-review): MongoDB never serves `live` a book l2builder holds stale, and a whole write
refused as already stored keeps the tombstone count of the write that stored it (real Redis and MongoDB)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pymongo
import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.core.bookdoc import tombstones
from services.l2builder.flusher import FlushAction, flush_decisions
from services.l2builder.owned import Owned
from services.l2builder.ownership import Ownership
from services.l2builder.store import TOMBSTONES_MIN, BookStore
from services.l2builder.symbol_state import StaleKind
from services.l2builder.worker import L2Builder
from services.runtime.config import load_settings
from testkit.l2feeds import Feed, make_frame
from tests.l2builder.driven import own_live_book
from tests.l2builder.test_store import deep_state, flush
from tests.l2builder.test_symbol_state import entry, frame, row

DEAD_REDIS = "redis://127.0.0.1:1/0"
"""Nothing listens there: an epoch advance sent there fails as in a Redis blip."""
DETAIL = "session gone"


def whole_next(owned: Owned, because: str) -> None:
    """Make the next write of the owned book whole, as after a whole write of unknown outcome (which leaves
    nothing to build on) or with its level map due for compaction."""
    assert owned.state is not None
    if because == "unknown_whole_write":
        owned.state.written = None
    else:
        assert owned.state.written is not None
        owned.state.written.tombstones = TOMBSTONES_MIN + 1


def stored(mongo_url: str, mongo_database: str) -> dict[str, Any]:
    collection: Any = pymongo.MongoClient(mongo_url)[mongo_database]["orderbooks"]
    return collection.find_one({"_id": "XBTUSD"}) or {}


@pytest.mark.parametrize("whole_because", ["unknown_whole_write", "compaction_due"])
def test_a_book_marked_stale_in_place_is_stored_stale_even_when_the_epoch_advance_fails(
        service_env: dict[str, str], redis_url: str, key_prefix: str, mongo_url: str, mongo_database: str,
        whole_because: str) -> None:
    Feed(redis_url, key_prefix).frames([make_frame("XBTUSD", "partial", [(1, "Sell", 10, 101.0),
                                                                         (2, "Buy", 20, 100.0)])])

    async def scenario() -> int:
        builder = L2Builder(load_settings(environ=service_env))
        builder.open()
        dead = aioredis.Redis.from_url(DEAD_REDIS, socket_connect_timeout=0.5)
        try:
            owned = await own_live_book(builder, "XBTUSD")
            await builder.flusher.flush()
            epoch = owned.lease.epoch
            whole_next(owned, whole_because)
            ownership = builder.upkeep.ownership
            builder.upkeep.ownership = Ownership(dead, builder.keys, builder.instance, ownership.ttl)
            with pytest.raises(RedisError):  # ingest's session is lost, and Redis fails the epoch advance
                await builder.upkeep.stale_in_place({"XBTUSD": (StaleKind.INGEST_LOST, DETAIL, True)})
            builder.upkeep.ownership = ownership
            assert owned.state is not None and not owned.state.live and owned.lease.epoch == epoch
            await builder.flusher.flush()
            assert not builder.books.settled("XBTUSD", owned), "acknowledged while MongoDB holds it live"
            assert owned.epoch_pending
            assert stored(mongo_url, mongo_database)["status"] == "live"  # until the epoch moves
            await builder.upkeep.renew(time.monotonic())  # the next pass of the ownership loop: Redis is back
            assert owned.lease.epoch == epoch + 1 and not owned.epoch_pending
            await builder.flusher.flush()
            assert builder.books.settled("XBTUSD", owned)
            return epoch
        finally:
            await dead.aclose()
            await builder.close()

    epoch = asyncio.run(scenario())
    document = stored(mongo_url, mongo_database)
    assert (document["status"], document["reason"], document["epoch"]) == ("stale", f"ingest_lost: {DETAIL}", epoch + 1)
    assert (document["bids"], document["asks"]) == ([[100.0, 20, 2]], [[101.0, 10, 1]]), "last levels kept"


def test_the_same_version_stored_with_another_status_is_never_acknowledged(
        service_env: dict[str, str], redis_url: str, key_prefix: str, mongo_url: str, mongo_database: str) -> None:
    """A book changed under the same epoch without a new entry and without asking for a new one (no path
    does so today): its whole write is refused, is not taken for written, and waits for a new epoch."""
    Feed(redis_url, key_prefix).frames([make_frame("XBTUSD", "partial", [(1, "Sell", 10, 101.0)])])

    async def scenario() -> int:
        builder = L2Builder(load_settings(environ=service_env))
        builder.open()
        try:
            owned = await own_live_book(builder, "XBTUSD")
            await builder.flusher.flush()
            epoch = owned.lease.epoch
            whole_next(owned, "unknown_whole_write")
            assert owned.state is not None
            owned.state.mark_stale(StaleKind.INGEST_LOST, DETAIL, time.monotonic(), keep_levels=True)
            await builder.flusher.flush()
            assert not builder.books.settled("XBTUSD", owned), "acknowledged while MongoDB holds it live"
            assert owned.epoch_pending
            await builder.upkeep.renew(time.monotonic())
            await builder.flusher.flush()
            assert owned.lease.epoch == epoch + 1 and builder.books.settled("XBTUSD", owned)
            return epoch
        finally:
            await builder.close()

    epoch = asyncio.run(scenario())
    document = stored(mongo_url, mongo_database)
    assert (document["status"], document["epoch"]) == ("stale", epoch + 1)


def test_a_whole_write_at_the_same_version_is_told_apart_by_its_status(mongo_url: str, mongo_database: str) -> None:
    state = deep_state()

    async def scenario() -> None:
        store = BookStore(mongo_url, mongo_database)
        try:
            await flush(store, state, 1)
            state.written = None
            state.mark_stale(StaleKind.INGEST_LOST, DETAIL, 0.0, keep_levels=True)
            kind, result = await flush(store, state, 1)
            assert kind == "no_base" and result.written == [] and "XBTUSD" in result.same_version
            assert flush_decisions(["XBTUSD"], result)["XBTUSD"].action is FlushAction.NEW_EPOCH
            kind, result = await flush(store, state, 2)
            assert result.written == ["XBTUSD"]
        finally:
            await store.close()

    asyncio.run(scenario())
    assert stored(mongo_url, mongo_database)["status"] == "stale"


def test_a_whole_write_refused_as_already_stored_keeps_the_tombstones_of_the_write_that_stored_it(
        mongo_url: str, mongo_database: str) -> None:
    """A delta removing levels lands but its acknowledgement is lost; compaction is then due with no new
    entry, so the whole write has the delta's version and is refused (11000) as already stored: the map
    still holds the delta's nulls, and the state must not take it for compacted."""
    state = deep_state()

    async def scenario() -> tuple[str, str]:
        store = BookStore(mongo_url, mongo_database)
        try:
            await flush(store, state, 1)
            removals = frame("delete", [row(1000 + i, "Buy") for i in range(5)])
            state.feed(entry(2, "delete", removals), now=0)
            kind, _ = await flush(store, state, 1, lose_ack=True)
            assert kind == "delta" and tombstones(stored(mongo_url, mongo_database)) == 5
            assert state.written is not None
            state.written.tombstones = TOMBSTONES_MIN + 1  # as after many removals: compaction is due
            compaction, result = await flush(store, state, 1)
            assert result.stored_before == ["XBTUSD"] and tombstones(stored(mongo_url, mongo_database)) == 5
            assert state.written is not None and state.written.tombstones == TOMBSTONES_MIN + 1
            state.feed(entry(3, "update", frame("update", [row(2000, "Sell", 99)])), now=0)
            after, _ = await flush(store, state, 1)
            return compaction, after
        finally:
            await store.close()

    assert asyncio.run(scenario()) == ("compaction", "compaction")
    assert tombstones(stored(mongo_url, mongo_database)) == 0
