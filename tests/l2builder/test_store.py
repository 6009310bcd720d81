"""MongoDB documents: version order, round trips through restore, the monotonic filtered upsert, foreign
documents, sizes and real dates."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections.abc import Callable
from typing import Any

import bson
import pymongo
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymongo import monitoring

from services.core.book import L2Book
from services.core.bookdoc import book_levels, tombstones
from services.l2builder.store import (
    MAX_DOCUMENT_BYTES,
    TOMBSTONES_MIN,
    UTC,
    BookStore,
    WriteResult,
    book_document,
    document_bound,
    document_size,
    plan_write,
    restore_state,
    stored_epoch_us,
    version_key,
)
from services.l2builder.symbol_state import Outcome, StaleKind, Status, SymbolState
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
        "layout": 2, "bids": [[100.0, 20, 2], [99.5, 5, 3]], "asks": [[101.0, 10, 1]], "bid_depth": 2,
        "ask_depth": 1, "truncated": False, "timestamp": None, "received_us": 1_700_000_000_000_001,
        "received_at": dt.datetime.fromtimestamp(1_700_000_000.000001, UTC), "updated_at": NOW,
        "stream_id": "1000-1", "session": "s1", "seq": 1, "epoch": 7, "status": "live", "reason": None,
        "version": version_key(7, "1000-1"),
        "levels": {"2": ["Buy", 100.0, 20], "3": ["Buy", 99.5, 5], "1": ["Sell", 101.0, 10]},
    }
    cut = book_document(state, 7, NOW, top_levels=1)
    assert (cut["bids"], cut["truncated"], cut["bid_depth"], cut["levels"]) == \
        ([[100.0, 20, 2]], True, 2, document["levels"])
    state.feed(entry(2, "gap", reason="disconnect"), now=0)
    stale = book_document(state, 7, NOW)
    assert (stale["status"], stale["reason"]) == ("stale", "gap: disconnect")
    assert (stale["bids"], stale["asks"]) == (document["bids"], document["asks"])  # the last levels are kept


def test_a_stale_book_keeps_its_last_levels_until_the_next_partial_unless_they_cannot_be_stored() -> None:
    state = live_state()
    state.feed(entry(2, "gap", reason="disconnect"), now=0)
    # Deltas while stale are not applied, to the kept levels or anything else.
    state.feed(entry(3, "update", frame("update", [row(2, "Buy", 99)])), now=0)
    state.mark_stale(StaleKind.HOLE, "another fault while stale", now=0)
    kept = book_document(state, 7, NOW)
    assert (kept["bids"], kept["asks"], kept["reason"]) == ([[100.0, 20, 2], [99.5, 5, 3]], [[101.0, 10, 1]],
                                                            "hole: another fault while stale")
    state.mark_stale(StaleKind.TOO_LARGE, "17000000 bytes", now=0)
    emptied = book_document(state, 7, NOW)
    assert (emptied["status"], emptied["bids"], emptied["asks"]) == ("stale", [], [])
    state.feed(entry(4, "partial", frame("partial", [row(7, "Sell", 1, 105.0)])), now=0)
    assert state.live and book_document(state, 7, NOW)["asks"] == [[105.0, 1, 7]]
    state.feed(entry(5, "delete", frame("delete", [row(42, "Sell")])), now=0)  # an inconsistency
    assert book_document(state, 7, NOW)["asks"] == []  # the book contradicted a frame: nothing exact to keep


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
    assert restore_state("XBTUSD", document, 5.0, now=0).received_us == 1_700_000_000_000_001  # the exact integer
    del document["received_us"]  # as a layout-1 document
    restored = restore_state("XBTUSD", document, 5.0, now=0)
    assert restored.received_us == (None if document["received_at"] == "not a time" else 1_700_000_000_123_000)
    assert restored.live


def test_stale_and_broken_documents_restore_stale() -> None:
    state = live_state()
    state.feed(entry(2, "gap", reason="disconnect"), now=0)
    stale = restore_state("XBTUSD", stored(book_document(state, 3, NOW)), 5.0, now=0)
    assert stale.status is Status.STALE and stale.stale_kind is StaleKind.RESTORED
    assert stale.reason == "gap: disconnect" and stale.stream_id == "1000-2"
    rewritten = book_document(stale, 4, NOW)  # the new owner's first write keeps the stored last levels
    assert (rewritten["status"], rewritten["bids"]) == ("stale", [[100.0, 20, 2], [99.5, 5, 3]])
    broken = stored(book_document(live_state(), 3, NOW))
    broken["levels"]["9"], broken["bid_depth"] = ["Buy", 100.0, 1], 3  # a second id at a held price
    invalid = restore_state("XBTUSD", broken, 5.0, now=0)
    assert invalid.stale_kind is StaleKind.INVALID_DOCUMENT and invalid.resync_due(0)
    assert invalid.stream_id == "1000-1"  # keeps its position: never re-apply from the start
    assert restore_state("XBTUSD", None, 5.0, now=0).stream_id is None


@pytest.mark.parametrize("version", [None, 7, {"epoch": 3}, "absent"])
def test_a_foreign_document_restores_stale_from_the_start_of_the_stream(version: object) -> None:
    foreign = stored(book_document(live_state(), 3, NOW))
    if version == "absent":
        del foreign["version"]
    else:
        foreign["version"] = version
    restored = restore_state("XBTUSD", foreign, 5.0, now=0)
    assert restored.stale_kind is StaleKind.INVALID_DOCUMENT and restored.resync_due(0)
    assert "foreign document" in str(restored.reason)
    assert (restored.stream_id, restored.seq, restored.last_book) == (None, 0, None)


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
    assert L2Book.from_document("ETHUSD", book_levels(collection.find_one({"_id": "ETHUSD"}) or {})).depth == (2, 1)


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
            assert list(result.unwritable) == ["XBTUSD"] and "BSON" in result.unwritable["XBTUSD"]
            assert list(result.too_large) == ["SOLUSD"] and result.too_large["SOLUSD"] > 17 * 1024 * 1024
        finally:
            await store.close()

    asyncio.run(scenario())
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_url)
    assert [doc["_id"] for doc in client[mongo_database]["orderbooks"].find({}, {"_id": 1})] == ["ETHUSD"]


def test_foreign_documents_are_taken_over_and_newer_versions_are_not(mongo_url: str, mongo_database: str) -> None:
    """A `version` missing or of another type counts as older than any real one, on MongoDB and nx-27017."""
    foreign: dict[str, Any] = {"MISSING": {}, "INT": {"version": 5}, "NULL": {"version": None},
                               "OBJECT": {"version": {"epoch": 9}}, "NUMBERS": {"version": [1, 2]},
                               "STRINGS": {"version": ["~"]}, "DATE": {"version": NOW}, "EMPTY": {"version": ""},
                               "NEWER": {"version": "~"}, "OLDER": {"version": version_key(1, "5-0")}}
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_url)
    collection = client[mongo_database]["orderbooks"]
    collection.insert_many([{"_id": symbol, "owner": "someone else", **fields} for symbol, fields in foreign.items()])

    def document(symbol: str) -> dict[str, Any]:
        state = SymbolState(symbol, 5.0)
        state.feed(entry(7, "partial", PARTIAL.replace("XBTUSD", symbol), seq=1), now=0)
        return book_document(state, 2, NOW)

    async def scenario() -> None:
        store = BookStore(mongo_url, mongo_database)
        try:
            result = await store.write({symbol: document(symbol) for symbol in foreign})
            assert sorted(result.written) == sorted(set(foreign) - {"NEWER"})
            assert result.superseded == {"NEWER": "~"} and not result.failed
        finally:
            await store.close()

    asyncio.run(scenario())
    for symbol in set(foreign) - {"NEWER"}:
        taken = collection.find_one({"_id": symbol}) or {}
        assert taken["version"] == version_key(2, "1000-7") and taken["status"] == "live", symbol
        assert "owner" not in taken and taken["bids"] == [[100.0, 20, 2], [99.5, 5, 3]], symbol
    assert collection.find_one({"_id": "NEWER"}) == {"_id": "NEWER", "owner": "someone else", "version": "~"}


def test_dates_are_stored_as_dates_by_inserts_and_replacements(mongo_url: str, mongo_database: str) -> None:
    def document(number: int) -> dict[str, Any]:
        state = SymbolState("XBTUSD", 5.0)
        state.feed(entry(number, "partial", PARTIAL, seq=number), now=0)
        return book_document(state, 1, NOW + dt.timedelta(seconds=number))

    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_url)
    collection = client[mongo_database]["orderbooks"]

    async def write(number: int) -> None:
        store = BookStore(mongo_url, mongo_database)
        try:
            assert (await store.write({"XBTUSD": document(number)})).written == ["XBTUSD"]
        finally:
            await store.close()

    for number in (1, 2):  # the first write inserts, the second replaces
        asyncio.run(write(number))
        stored_document = collection.find_one({"_id": "XBTUSD"}) or {}
        assert type(stored_document["updated_at"]) is dt.datetime, stored_document["updated_at"]
        assert type(stored_document["received_at"]) is dt.datetime, stored_document["received_at"]
        assert stored_document["updated_at"] == (NOW + dt.timedelta(seconds=number)).replace(tzinfo=None)
        assert stored_document["seq"] == number


def test_the_size_bound_never_underestimates_and_books_over_the_limit_are_measured() -> None:
    state = live_state()
    rows = [row(100 + i, "Buy" if i % 2 else "Sell", 2**40 + i, (90.0 - i) if i % 2 else (110.0 + i))
            for i in range(2000)]
    state.feed(entry(2, "insert", frame("insert", rows)), now=0)
    document = book_document(state, 2**40, NOW, top_levels=1000)
    assert len(bson.encode(document)) <= document_size(document) <= MAX_DOCUMENT_BYTES
    assert document_size(document) <= document_bound(len(state.book), 1000)
    assert document_size(document, exact=True) == len(bson.encode(document))
    over = {**document, "bids": document["bids"] * 500}  # half a million levels
    assert document_size(over) == len(bson.encode(over)) > 16 * 1024 * 1024 >= MAX_DOCUMENT_BYTES


class Commands(monitoring.CommandListener):
    """The update commands sent to MongoDB, as sent."""

    def __init__(self) -> None:
        self.updates: list[dict[str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "update":
            self.updates.append(dict(event.command))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


COMMANDS = Commands()
monitoring.register(COMMANDS)


def comparable(document: dict[str, Any]) -> dict[str, Any]:
    """A stored document but for `_id`, its dates (their types are tested on their own) and tombstones."""
    kept = {name: value for name, value in document.items() if name not in ("_id", "updated_at", "received_at")}
    if isinstance(kept.get("levels"), dict):
        kept["levels"] = {ident: value for ident, value in kept["levels"].items() if value is not None}
    return kept


def deep_state(depth: int = 40) -> SymbolState:
    rows = [row(1000 + i, "Buy", 10 + i, 100.0 - i) for i in range(depth)]
    rows += [row(2000 + i, "Sell", 10 + i, 101.0 + i) for i in range(depth)]
    state = SymbolState("XBTUSD", 5.0)
    state.feed(entry(1, "partial", frame("partial", rows)), now=0)
    return state


def change(state: SymbolState, number: int, rng: random.Random) -> None:
    """One random update, delete or insert (below the worst bid or above the worst ask) of a level."""
    bids, asks = state.book.top(None)
    side, levels = rng.choice([("Buy", bids), ("Sell", asks)])
    action = rng.choice(["update", "delete", "insert"]) if len(levels) > 5 else "insert"
    if action == "insert":
        price = levels[-1][0] - 0.5 if side == "Buy" else levels[-1][0] + 0.5
        update = frame("insert", [row(10_000 + number, side, 7, price)])
    else:
        ident = rng.choice(levels)[2]
        update = frame(action, [row(ident, side, rng.randrange(1, 99) if action == "update" else None)])
    assert state.feed(entry(number, action, update), now=0) is Outcome.APPLIED


async def flush(store: BookStore, state: SymbolState, epoch: int, lose_ack: bool = False) -> tuple[str, WriteResult]:
    """What the flusher does for one book; `lose_ack` takes the outcome as unknown after the write landed."""
    ticket = state.take_flush()
    assert ticket is not None
    planned = plan_write(state, ticket, epoch, NOW, 10)
    result = await store.write({} if planned.document is None else {"XBTUSD": planned.document},
                               {} if planned.delta is None else {"XBTUSD": planned.delta})
    if "XBTUSD" in result.written and not lose_ack:
        state.flush_written(ticket, planned.version, planned.top, planned.tombstones,
                            stored_before="XBTUSD" in result.stored_before, fields=planned.fields)
    else:
        state.flush_failed(ticket, planned.version, lost="XBTUSD" in result.rebase, tombstones=planned.tombstones)
    return planned.kind, result


def test_many_deltas_store_what_a_whole_write_of_the_same_book_stores(mongo_url: str, mongo_database: str) -> None:
    rng = random.Random(7)
    state = deep_state()
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_url)
    collection = client[mongo_database]["orderbooks"]

    async def scenario() -> list[str]:
        store = BookStore(mongo_url, mongo_database)
        kinds = []
        try:
            for number in range(2, 200, 4):
                for step in range(4):
                    change(state, number + step, rng)
                kind, result = await flush(store, state, 3, lose_ack=number % 20 == 6)
                assert result.written == ["XBTUSD"], result
                kinds.append(kind)
        finally:
            await store.close()
        return kinds

    COMMANDS.updates.clear()
    kinds = asyncio.run(scenario())
    assert kinds[0] == "no_base" and kinds.count("delta") == len(kinds) - 1
    stored_document = collection.find_one({"_id": "XBTUSD"}) or {}
    assert comparable(stored_document) == comparable(book_document(state, 3, NOW, top_levels=10))
    assert L2Book.from_document("XBTUSD", book_levels(stored_document)).top(None) == state.book.top(None)
    # One operation per document and flush: a reader sees a whole flush or none of it.
    assert all(len(command["updates"]) == 1 for command in COMMANDS.updates) and len(COMMANDS.updates) == len(kinds)
    delta = COMMANDS.updates[-1]["updates"][0]
    assert not delta.get("upsert") and set(delta["u"]) == {"$set", "$currentDate"}
    assert len(bson.encode(delta)) < len(bson.encode(stored_document)) / 4
    # Fields the base holds already are not sent again: only those that changed (and after an unknown
    # outcome, all of them, which the final equality above covers).
    sent = set(delta["u"]["$set"])
    assert {"seq", "stream_id", "version"} <= sent and not sent & {"session", "status", "reason", "epoch"}


def test_a_delta_keeps_dates_real_on_every_server(mongo_url: str, mongo_database: str) -> None:
    state = deep_state()
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_url)
    collection = client[mongo_database]["orderbooks"]

    async def scenario() -> None:
        store = BookStore(mongo_url, mongo_database)
        try:
            assert (await flush(store, state, 1))[0] == "no_base"
            change(state, 2, random.Random(1))
            assert (await flush(store, state, 1))[0] == "delta"
        finally:
            await store.close()

    before = dt.datetime.now(UTC)
    asyncio.run(scenario())
    stored_document = collection.find_one({"_id": "XBTUSD"}) or {}
    assert stored_document["seq"] == 2
    assert type(stored_document["updated_at"]) is dt.datetime  # set by $currentDate: a date on both servers
    assert stored_document["updated_at"].replace(tzinfo=UTC) >= before - dt.timedelta(seconds=5)
    # received_at is a date on MongoDB and text on nx-27017; received_us is the same instant on both.
    assert isinstance(stored_document["received_us"], int) and stored_document["received_us"] == state.received_us
    received_us = stored_epoch_us(stored_document["received_at"])  # a BSON date holds milliseconds
    assert state.received_us is not None and received_us == state.received_us // 1000 * 1000


def test_a_delta_resolves_a_newer_owner_a_vanished_document_and_an_old_layout(mongo_url: str,
                                                                             mongo_database: str) -> None:
    state = deep_state()
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_url)
    collection = client[mongo_database]["orderbooks"]
    rng = random.Random(3)

    async def scenario() -> None:
        store = BookStore(mongo_url, mongo_database)
        try:
            await flush(store, state, 2)
            collection.delete_one({"_id": "XBTUSD"})
            change(state, 2, rng)
            kind, result = await flush(store, state, 2)
            assert (kind, result.rebase) == ("delta", {"XBTUSD": "no document"})
            kind, result = await flush(store, state, 2)  # written whole, at once
            assert (kind, result.written) == ("no_base", ["XBTUSD"])
            # An old l2builder wrote layout 1 in between at an older epoch: never patched, rewritten whole.
            collection.replace_one({"_id": "XBTUSD"}, {"bids": [[1.0, 1, 1]], "asks": [], "status": "live",
                                                       "version": version_key(1, "1000-9")})
            change(state, 3, rng)
            kind, result = await flush(store, state, 2)
            assert (kind, list(result.rebase)) == ("delta", ["XBTUSD"])
            assert (await flush(store, state, 2))[1].written == ["XBTUSD"]
            assert comparable(collection.find_one({"_id": "XBTUSD"}) or {}) == \
                comparable(book_document(state, 2, NOW, top_levels=10))
            # A newer owner took the book over: the delta is refused and says so.
            collection.update_one({"_id": "XBTUSD"}, {"$set": {"version": version_key(5, "1000-1")}})
            change(state, 4, rng)
            kind, result = await flush(store, state, 2)
            assert (kind, result.superseded) == ("delta", {"XBTUSD": version_key(5, "1000-1")})
        finally:
            await store.close()

    asyncio.run(scenario())


def test_an_old_layout_document_is_restored_exactly_and_rewritten_whole(mongo_url: str, mongo_database: str) -> None:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_url)
    collection = client[mongo_database]["orderbooks"]
    old = {"bids": [[100.0, 20, 2], [99.5, 5, 3]], "asks": [[101.0, 10, 1]], "timestamp": None,
           "received_at": NOW, "updated_at": NOW, "stream_id": "1000-1", "session": "s1", "seq": 1, "epoch": 1,
           "status": "live", "reason": None, "version": version_key(1, "1000-1")}
    collection.insert_one({"_id": "XBTUSD", **old})
    state = restore_state("XBTUSD", collection.find_one({"_id": "XBTUSD"}), 5.0, now=0)
    assert state.live and state.written is None and state.book.top(None) == live_state().book.top(None)
    state.feed(entry(2, "update", frame("update", [row(2, "Buy", 21)])), now=0)

    async def scenario() -> None:
        store = BookStore(mongo_url, mongo_database)
        try:
            assert await flush(store, state, 2) == ("no_base", WriteResult(written=["XBTUSD"]))
            state.feed(entry(3, "update", frame("update", [row(3, "Buy", 6)])), now=0)
            restored = restore_state("XBTUSD", collection.find_one({"_id": "XBTUSD"}), 5.0, now=0)
            assert restored.written is not None and restored.written.versions == [version_key(2, "1000-2")]
        finally:
            await store.close()

    asyncio.run(scenario())
    stored_document = collection.find_one({"_id": "XBTUSD"}) or {}
    assert stored_document["layout"] == 2 and stored_document["levels"]["2"] == ["Buy", 100.0, 21]


def test_many_changes_with_removals_go_as_one_delta_and_tombstones_are_compacted(mongo_url: str,
                                                                                  mongo_database: str) -> None:
    """nx-27017 ignores the `$unset` of an update with 64 fields or more: removals are tombstones (null) set
    like every other level, so a flush of many changes stays one delta; a whole write clears them."""
    state = deep_state(200)
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_url)
    collection = client[mongo_database]["orderbooks"]

    async def scenario() -> list[str]:
        store = BookStore(mongo_url, mongo_database)
        kinds = [(await flush(store, state, 1))[0]]
        try:
            rows = [row(1100 + i, "Buy", 3) for i in range(70)]
            state.feed(entry(2, "update", frame("update", rows)), now=0)
            state.feed(entry(3, "delete", frame("delete", [row(2000 + i, "Sell") for i in range(5)])), now=0)
            kind, result = await flush(store, state, 1)
            kinds.append(kind)
            stored_document = collection.find_one({"_id": "XBTUSD"}) or {}
            assert result.written == ["XBTUSD"] and tombstones(stored_document) == 5
            assert comparable({**stored_document, "levels": None}) == \
                comparable({**book_document(state, 1, NOW, top_levels=10), "levels": None})
            assert L2Book.from_document("XBTUSD", book_levels(stored_document)).top(None) == state.book.top(None)
            assert state.written is not None and state.written.tombstones == 5
            state.written.tombstones = TOMBSTONES_MIN + 1  # as after many removals
            state.feed(entry(4, "update", frame("update", [row(1100, "Buy", 4)])), now=0)
            kinds.append((await flush(store, state, 1))[0])
            assert tombstones(collection.find_one({"_id": "XBTUSD"}) or {}) == 0
            assert state.written is not None and state.written.tombstones == 0
        finally:
            await store.close()
        return kinds

    assert asyncio.run(scenario()) == ["no_base", "delta", "compaction"]
