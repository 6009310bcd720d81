"""A symbol's phases against real Redis and MongoDB servers: a hand-off started and called off.

The builder is driven method by method, so entries can be delivered to this consumer exactly while the
symbol is handed off: the reader leaves them unapplied (they are the next owner's), and a hand-off called
off must catch them up from the stream rather than go straight back to reading past them.
"""

from __future__ import annotations

import asyncio

from services.l2builder.phase import Phase
from services.l2builder.worker import L2Builder
from services.runtime.config import load_settings
from testkit.l2feeds import Books, Feed, make_frame
from tests.l2builder.driven import own_live_book, read_delivered


def test_a_hand_off_called_off_catches_up_what_was_delivered_meanwhile(
        service_env: dict[str, str], redis_url: str, key_prefix: str, mongo_url: str, mongo_database: str) -> None:
    feed = Feed(redis_url, key_prefix)
    feed.frames([make_frame("XBTUSD", "partial", [(1, "Sell", 10, 101.0), (2, "Buy", 20, 100.0)])])
    books = Books(mongo_url, mongo_database)

    async def scenario() -> None:
        builder = L2Builder(load_settings(environ=service_env))
        builder.open()
        try:
            owned = await own_live_book(builder, "XBTUSD")
            assert owned.state is not None and owned.state.seq == 1

            feed.frames([make_frame("XBTUSD", "insert", [(3, "Buy", 5, 99.0)])])
            delivered = await read_delivered(builder, "XBTUSD")  # a read issued before the hand-off
            builder.restorer.rebalance("XBTUSD", owned, moving=True)
            assert owned.releasing and builder._read_ahead() is None, "a symbol handed off is no longer read"
            for symbol, entries in delivered:
                builder._apply(symbol, entries)
            assert owned.state.seq == 1, "left for the next owner"

            builder.restorer.rebalance("XBTUSD", owned, moving=False)
            assert owned.phase is Phase.CATCHING_UP and owned.task is not None
            await asyncio.wait_for(owned.task, 10)
            assert owned.ready and owned.state.live and owned.state.seq == 2
            await builder.flusher.flush()
        finally:
            await builder.close()

    asyncio.run(scenario())
    document = books.get("XBTUSD")
    assert document is not None and document["status"] == "live" and document["seq"] == 2
    assert (document["bids"], document["asks"]) == ([[100.0, 20, 2], [99.0, 5, 3]], [[101.0, 10, 1]])
