"""A book turning stale where it stands, against a flush running meanwhile (real Redis and MongoDB server).

The builder is driven method by method, so the flush can be made to run exactly while the stale mark
waits for Redis to move the lease to a new epoch: the moment a flush used to store the book live under the
new epoch, leaving the stale document that followed at the same version, refused. The book now waits for
the new epoch (`Owned.epoch_pending`) and the flusher leaves it until then.
"""

from __future__ import annotations

import asyncio

from services.l2builder.symbol_state import StaleKind
from services.l2builder.worker import L2Builder
from services.runtime.config import load_settings
from testkit.l2feeds import Books, Feed, make_frame
from tests.l2builder.driven import own_live_book

DETAIL = "session session-1 has had no liveness key for 3.0 s"


def test_a_flush_during_the_epoch_move_never_leaves_the_book_live(
        service_env: dict[str, str], redis_url: str, key_prefix: str, mongo_url: str, mongo_database: str) -> None:
    feed = Feed(redis_url, key_prefix)
    feed.frames([make_frame("XBTUSD", "partial", [(1, "Sell", 10, 101.0), (2, "Buy", 20, 100.0)])])
    books = Books(mongo_url, mongo_database)

    async def scenario() -> int:
        builder = L2Builder(load_settings(environ=service_env))
        builder.open()
        try:
            owned = await own_live_book(builder, "XBTUSD")
            assert owned.state is not None
            await builder.flusher.flush()
            epoch = owned.lease.epoch
            mark = {"XBTUSD": (StaleKind.INGEST_LOST, DETAIL, True)}
            marking = asyncio.create_task(builder.upkeep.stale_in_place(mark))
            await asyncio.sleep(0)  # the mark now waits for Redis to move the epoch
            assert not marking.done() and owned.lease.epoch == epoch
            assert not owned.state.live, "stale in memory before anything is awaited"
            await builder.flusher.flush()  # left alone: under the old epoch it has the live document's version
            assert owned.epoch_pending and not builder.books.settled("XBTUSD", owned)
            assert await marking == ["XBTUSD"] and owned.lease.epoch == epoch + 1
            await builder.flusher.flush()
            return epoch
        finally:
            await builder.close()

    epoch = asyncio.run(scenario())
    document = books.get("XBTUSD")
    assert document is not None
    assert (document["status"], document["reason"], document["epoch"]) == ("stale", f"ingest_lost: {DETAIL}", epoch + 1)
    assert (document["bids"], document["asks"]) == ([[100.0, 20, 2]], [[101.0, 10, 1]]), "last levels kept"
