"""An l2builder driven method by method, for tests that must interleave its steps with their own."""

from __future__ import annotations

import asyncio

from services.l2builder.owned import Owned
from services.l2builder.streams import RawEntry
from services.l2builder.worker import L2Builder

READS = 5
"""Reads a delivery may take: the activity stream names a stream in one read, which reads it in the next."""


async def own_live_book(builder: L2Builder, symbol: str) -> Owned:
    """Take `symbol`, restore it, and apply what the group delivers, until its book is live and read."""
    builder.restorer.take(await builder.ownership.acquire([symbol]))
    owned = builder.owned[symbol]
    assert owned.task is not None
    await asyncio.wait_for(owned.task, 10)
    assert owned.ready
    for stream_symbol, entries in await read_delivered(builder, symbol):
        builder._apply(stream_symbol, entries)
    assert owned.state is not None and owned.state.live
    return owned


async def read_delivered(builder: L2Builder, symbol: str) -> list[tuple[str, list[RawEntry]]]:
    """What the group delivers of `symbol`'s stream, read as the service reads (services.core.activity)."""
    for _ in range(READS):
        delivered = await builder.streams.read_new([symbol], 100, 100)
        if delivered:
            return delivered
    raise AssertionError(f"nothing delivered from {symbol}'s stream in {READS} reads")
