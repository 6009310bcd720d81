"""Review findings (wt-review): failing tests that demonstrate a book stored `live` while l2builder knows it stale."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pymongo
import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.core.keys import Keys
from services.core.liveness import SessionTracker
from services.l2builder.owned import Owned, OwnedBooks
from services.l2builder.ownership import Lease, Ownership
from services.l2builder.store import TOMBSTONES_MIN, BookStore
from services.l2builder.streams import L2Streams
from services.l2builder.symbol_state import StaleKind
from services.l2builder.upkeep import Upkeep
from tests.l2builder.test_store import deep_state, flush

DEAD_REDIS = "redis://127.0.0.1:1/0"
"""Nothing listens there: the epoch advance of `stale_in_place` fails as in a Redis blip."""


@pytest.mark.parametrize("whole_because", ["unknown_whole_write", "compaction_due"])
def test_a_book_marked_stale_in_place_is_stored_stale_even_when_the_epoch_advance_fails(
        mongo_url: str, mongo_database: str, whole_because: str) -> None:
    state = deep_state()
    collection: Any = pymongo.MongoClient(mongo_url)[mongo_database]["orderbooks"]
    dead = aioredis.Redis.from_url(DEAD_REDIS, socket_connect_timeout=0.5)
    keys = Keys("review")
    now = time.monotonic()
    books = OwnedBooks(SessionTracker())
    owned = Owned(Lease("XBTUSD", 1, now, now + 600))
    owned.state = state
    books.owned["XBTUSD"] = owned
    upkeep = Upkeep(books, dead, keys, Ownership(dead, keys, "me", 10.0),
                    L2Streams(dead, keys, "me", DEAD_REDIS, 1.0), "me")

    async def scenario() -> tuple[str, list[str]]:
        store = BookStore(mongo_url, mongo_database)
        try:
            # The live book is stored at (epoch 1, its stream id); the next write is whole either because
            # that write's acknowledgement was lost, or because its map is due for compaction.
            await flush(store, state, 1, lose_ack=whole_because == "unknown_whole_write")
            if whole_because == "compaction_due":
                assert state.written is not None
                state.written.tombstones = TOMBSTONES_MIN + 1
            # Ingest's session is lost: the book goes stale where it stands; Redis fails the epoch advance.
            with pytest.raises(RedisError):
                await upkeep.stale_in_place({"XBTUSD": (StaleKind.INGEST_LOST, "session gone", True)})
            assert not state.live and owned.lease.epoch == 1
            kind, result = await flush(store, state, owned.lease.epoch)
            return kind, result.written
        finally:
            await store.close()
            await dead.aclose()

    kind, written = asyncio.run(scenario())
    assert kind != "delta" and written == ["XBTUSD"]  # reported durable, entries acked...
    stored = collection.find_one({"_id": "XBTUSD"}) or {}
    assert stored.get("status") == "stale", f"l2builder holds the book stale, MongoDB serves it {stored.get('status')}"
