"""MongoDB documents: version order, round trips through restore, and the monotonic filtered upsert."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from typing import Any

import pymongo
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.book import L2Book
from services.l2builder.store import UTC, BookStore, book_document, restore_state, version_key
from services.l2builder.symbol_state import StaleKind, Status, SymbolState
from tests.l2builder.test_symbol_state import PARTIAL, entry, frame, live_state, row

IDS = st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


@given(a=st.tuples(st.integers(0, 2**63), IDS), b=st.tuples(st.integers(0, 2**63), IDS))
def test_versions_sort_as_epoch_then_stream_id(a: tuple[int, tuple[int, int]], b: tuple[int, tuple[int, int]]) -> None:
    key_a = version_key(a[0], f"{a[1][0]}-{a[1][1]}")
    key_b = version_key(b[0], f"{b[1][0]}-{b[1][1]}")
    assert (key_a < key_b) == (a < b) and (key_a == key_b) == (a == b)


def test_the_document_has_every_field_of_the_contract() -> None:
    state = live_state()
    document = book_document(state, 7, NOW)
    assert document == {
        "bids": [[100.0, 20, 2], [99.5, 5, 3]], "asks": [[101.0, 10, 1]], "timestamp": None,
        "received_at": dt.datetime.fromtimestamp(1_700_000_000.000001, UTC), "updated_at": NOW,
        "stream_id": "1000-1", "session": "s1", "seq": 1, "epoch": 7, "status": "live", "reason": None,
        "version": version_key(7, "1000-1"),
    }
    state.feed(entry(2, "gap", reason="disconnect"), now=0)
    stale = book_document(state, 7, NOW)
    assert (stale["status"], stale["reason"], stale["bids"], stale["asks"]) == ("stale", "gap: disconnect", [], [])


def stored(document: dict[str, Any]) -> dict[str, Any]:
    """What MongoDB gives back: `_id` added, datetimes without zone (pymongo's default)."""
    back = {"_id": "XBTUSD", **document}
    for name in ("received_at", "updated_at"):
        back[name] = back[name].replace(tzinfo=None)
    return back


def test_a_live_document_restores_the_same_book_and_position() -> None:
    state = live_state()
    state.feed(entry(2, "insert", frame("insert", [row(4, "Sell", 7, 102.0)])), now=0)
    restored = restore_state("XBTUSD", stored(book_document(state, 3, NOW)), 5.0, now=0)
    assert restored.live and restored.book.to_document() == state.book.to_document()
    assert (restored.stream_id, restored.session, restored.seq, restored.received_us) == \
        (state.stream_id, state.session, state.seq, state.received_us)
    assert not restored.dirty


@pytest.mark.parametrize("as_stored", [lambda at: at.replace(tzinfo=None), lambda at: at,
                                       lambda at: str(at.replace(tzinfo=None)), lambda at: "not a time"],
                         ids=["naive", "aware", "text", "garbage"])
def test_the_receive_time_restores_from_every_form_a_server_returns(as_stored: Callable[[dt.datetime], object]) -> None:
    state = live_state()
    document = stored(book_document(state, 3, NOW))
    document["received_at"] = as_stored(dt.datetime.fromtimestamp(1_700_000_000.123, UTC))
    restored = restore_state("XBTUSD", document, 5.0, now=0)
    assert restored.received_us == (None if document["received_at"] == "not a time" else 1_700_000_000_123_000)
    assert restored.live


def test_stale_and_broken_documents_restore_stale() -> None:
    state = live_state()
    state.feed(entry(2, "gap", reason="disconnect"), now=0)
    stale = restore_state("XBTUSD", stored(book_document(state, 3, NOW)), 5.0, now=0)
    assert stale.status is Status.STALE and stale.stale_kind is StaleKind.RESTORED
    assert stale.reason == "gap: disconnect" and stale.stream_id == "1000-2"
    broken = stored(book_document(live_state(), 3, NOW))
    broken["bids"] = [[100.0, 20, 2], [100.5, 5, 3]]  # not best first
    invalid = restore_state("XBTUSD", broken, 5.0, now=0)
    assert invalid.stale_kind is StaleKind.INVALID_DOCUMENT and invalid.resync_due(0)
    assert invalid.stream_id == "1000-1"  # keeps its position: never re-apply from the start
    assert restore_state("XBTUSD", None, 5.0, now=0).stream_id is None


@pytest.mark.parametrize(("stream_id", "seq"), [("garbage", 1), (17, 1), ("1000-1", -3), ("1000-1", "7")])
def test_an_unusable_stored_position_restores_stale_from_the_start(stream_id: object, seq: object) -> None:
    broken = stored(book_document(live_state(), 3, NOW))
    broken["stream_id"], broken["seq"] = stream_id, seq
    restored = restore_state("XBTUSD", broken, 5.0, now=0)
    assert restored.stale_kind is StaleKind.INVALID_DOCUMENT and restored.resync_due(0)
    assert "stored position is invalid" in str(restored.reason)
    assert (restored.stream_id, restored.seq) == (None, 0)


def test_writes_are_monotonic_idempotent_and_report_newer_owners(mongo_url: str, mongo_database: str) -> None:
    def document(epoch: int, number: int) -> dict[str, Any]:
        state = SymbolState("XBTUSD", 5.0)
        state.feed(entry(number, "partial", PARTIAL, seq=number), now=0)
        return book_document(state, epoch, NOW)

    async def scenario() -> None:
        store = BookStore(mongo_url, mongo_database)
        try:
            first = await store.write({"XBTUSD": document(2, 5), "ETHUSD": document(1, 1)})
            assert sorted(first.written) == ["ETHUSD", "XBTUSD"]
            again = await store.write({"XBTUSD": document(2, 5)})  # a retry of a write that landed
            assert again.written == ["XBTUSD"] and not again.superseded
            zombie = await store.write({"XBTUSD": document(1, 9), "ETHUSD": document(1, 2)})
            assert zombie.written == ["ETHUSD"]
            assert zombie.superseded == {"XBTUSD": version_key(2, "1000-5")}
            newer = await store.write({"XBTUSD": document(3, 1)})  # a new owner replays from its restore
            assert newer.written == ["XBTUSD"]
        finally:
            await store.close()

    asyncio.run(scenario())
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_url)
    collection = client[mongo_database]["orderbooks"]
    assert collection.find_one({"_id": "XBTUSD"}, {"epoch": 1, "seq": 1}) == {"_id": "XBTUSD", "epoch": 3, "seq": 1}
    assert collection.find_one({"_id": "ETHUSD"}, {"seq": 1}) == {"_id": "ETHUSD", "seq": 2}
    assert L2Book.from_document("ETHUSD", collection.find_one({"_id": "ETHUSD"}) or {}).depth == (2, 1)


def test_a_book_bson_cannot_hold_is_set_aside_and_the_others_are_written(mongo_url: str, mongo_database: str) -> None:
    def document(number: int) -> dict[str, Any]:
        state = SymbolState("XBTUSD", 5.0)
        state.feed(entry(number, "partial", PARTIAL, seq=number), now=0)
        return book_document(state, 1, NOW)

    huge = {**document(1), "bids": [[1.0, 1, 2**70]]}  # an id beyond 64 bits: pymongo refuses the whole batch
    too_large = {**document(1), "reason": "x" * (17 * 1024 * 1024)}

    async def scenario() -> None:
        store = BookStore(mongo_url, mongo_database)
        try:
            result = await store.write({"XBTUSD": huge, "ETHUSD": document(2), "SOLUSD": too_large})
            assert result.written == ["ETHUSD"] and not result.failed and not result.superseded
            assert sorted(result.unwritable) == ["SOLUSD", "XBTUSD"]
            assert "BSON" in result.unwritable["XBTUSD"] and "limit" in result.unwritable["SOLUSD"]
        finally:
            await store.close()

    asyncio.run(scenario())
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_url)
    assert [doc["_id"] for doc in client[mongo_database]["orderbooks"].find({}, {"_id": 1})] == ["ETHUSD"]
