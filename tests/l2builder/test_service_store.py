"""What `bookstream l2builder` writes to MongoDB when the documents or the books are not what it expects:
documents written by someone else, a symbol whose writes keep failing, a book too large to store, a stale
book across a restart; and the dates it stores are real dates."""

from __future__ import annotations

import datetime as dt
from typing import Any

import bson

from services.core.bookdoc import book_levels
from services.l2builder.store import MAX_DOCUMENT_BYTES, stored_epoch_us
from testkit.harness import MongoServer, wait_until
from testkit.l2feeds import Books, Feed, Frame, log_values, make_frame, wait_settled
from tests.conftest import RunService

PARTIAL_LEVELS = {"bids": [[100.0, 20, 2], [99.5, 5, 3]], "asks": [[101.0, 10, 1]]}


def partial(symbol: str, size: int = 10) -> Frame:
    return make_frame(symbol, "partial", [(1, "Sell", size, 101.0), (2, "Buy", 20, 100.0), (3, "Buy", 5, 99.5)])


def update(symbol: str, size: int) -> Frame:
    return make_frame(symbol, "update", [(2, "Buy", size, 100.0)])


def sides(document: dict[str, Any] | None) -> dict[str, Any]:
    assert document is not None
    return book_levels(document)


def test_foreign_documents_are_taken_over_and_dates_are_dates(
        run_service: RunService, service_env: dict[str, str], redis_url: str, key_prefix: str,
        mongo_database: str, mongo_server: MongoServer) -> None:
    env = {**service_env, "MONGO_CONNECTION_STRING": mongo_server.url}
    feed, books = Feed(redis_url, key_prefix), Books(mongo_server.url, mongo_database)
    foreign: dict[str, dict[str, Any]] = {"MISSING": {}, "INT": {"version": 5}, "NULL": {"version": None},
                                          "OBJECT": {"version": {"by": "someone"}}}
    # Claiming to be live with a wrong book: the owner must trust neither its levels nor its position.
    books.collection.insert_many([{"_id": symbol, "status": "live", "bids": [[1.0, 1, 99]], "asks": [],
                                   "stream_id": "1-0", "seq": 40, **fields} for symbol, fields in foreign.items()])
    feed.frames([partial(symbol) for symbol in foreign])
    builder = run_service("l2builder", env=env, name="builder")
    wait_settled(feed, books)

    for symbol, document in books.all().items():
        assert (document["status"], document["reason"], sides(document)) == ("live", None, PARTIAL_LEVELS), symbol
        assert isinstance(document["version"], str) and document["epoch"] == 1, symbol
    assert set(log_values(builder, "restored", "symbol")) == set(foreign)
    assert "write_failed" not in builder.logs()

    # Dates are BSON dates whether the write inserted or replaced a foreign document ...
    for symbol, document in books.all().items():
        for name in ("updated_at", "received_at"):
            assert type(document[name]) is dt.datetime, (symbol, name, document[name])
    # ... and after a delta `updated_at` is one too ($currentDate); `received_at` is text on nx-27017 (a $set
    # date), `received_us` the same instant as an integer.
    feed.frames([update(symbol, 7) for symbol in foreign])
    wait_settled(feed, books)
    for symbol, document in books.all().items():
        assert sides(document)["bids"][0] == [100.0, 7, 2], symbol
        assert type(document["updated_at"]) is dt.datetime, (symbol, document["updated_at"])
        assert abs(document["updated_at"] - dt.datetime.now(dt.UTC).replace(tzinfo=None)) < dt.timedelta(minutes=5)
        received_us = document["received_us"]
        assert isinstance(received_us, int) and stored_epoch_us(document["received_at"]) == received_us // 1000 * 1000


def test_one_symbols_failing_writes_never_hold_up_the_others(
        run_service: RunService, service_env: dict[str, str], redis_url: str, key_prefix: str,
        mongo_database: str, mongo_server: MongoServer) -> None:
    """A unique index someone else created makes every write of FAIL fail (E11000 on `session`, not on
    `_id`): FAIL is retried alone with its own backoff while the others are written flush after flush."""
    env = {**service_env, "MONGO_CONNECTION_STRING": mongo_server.url, "FLUSH_INTERVAL": "0.05"}
    books = Books(mongo_server.url, mongo_database)
    books.collection.create_index("session", unique=True)
    books.collection.insert_one({"_id": "SQUATTER", "session": "squatted"})
    healthy = {symbol: Feed(redis_url, key_prefix, session=f"session-{symbol}") for symbol in ("A", "B", "C")}
    failing = Feed(redis_url, key_prefix, session="squatted")
    failing.frames([partial("FAIL")])
    for symbol, feed in healthy.items():
        feed.frames([partial(symbol)])
    builder = run_service("l2builder", env=env, name="builder")

    rounds = 20
    for number in range(1, rounds + 1):
        for symbol, feed in healthy.items():
            feed.frames([update(symbol, number)])
        wait_until(lambda: all((books.get(symbol) or {}).get("stream_id") == feed.last_id[symbol]
                               for symbol, feed in healthy.items()), 20, f"round {number} written")
        if number == 1:
            wait_until(lambda: "symbol=FAIL" in builder.logs(), 10, "the first failed write of FAIL")
    for symbol, feed in healthy.items():
        wait_settled(feed, books)
        assert (books.get(symbol) or {})["bids"][0] == [100.0, rounds, 2]

    failures = [int(value) for value in log_values(builder, "write_failed", "failures")]
    assert set(log_values(builder, "write_failed", "symbol")) == {"FAIL"}
    assert failures == list(range(1, len(failures) + 1))  # each retry backs off further
    # Each round took at least one flush that wrote the others; FAIL was tried in far fewer of them.
    assert 1 <= len(failures) < rounds
    assert books.get("FAIL") is None and failing.pending("FAIL") == 1
    assert builder.health()[0] == 200

    books.collection.drop_index("session_1")
    wait_settled(failing, books)  # retried after its backoff, without a restart
    assert (books.get("FAIL") or {})["status"] == "live"


def test_a_book_too_large_to_store_is_stale_with_its_metadata_and_blocks_nothing(
        run_service: RunService, service_env: dict[str, str], redis_url: str, key_prefix: str,
        mongo_database: str, mongo_server: MongoServer) -> None:
    env = {**service_env, "MONGO_CONNECTION_STRING": mongo_server.url}
    feed, books = Feed(redis_url, key_prefix), Books(mongo_server.url, mongo_database)
    per_side = 210_000
    rows: list[tuple[int, str, int | None, float | None]] = []
    for index in range(per_side):
        rows.append((2 * index, "Buy", 2**40 + index, 50_000.0 - index * 0.5))
        rows.append((2 * index + 1, "Sell", 2**40 + index, 50_000.5 + index * 0.5))
    levels = {"bids": [[price, size, ident] for ident, side, size, price in rows if side == "Buy"],
              "asks": [[price, size, ident] for ident, side, size, price in rows if side == "Sell"]}
    # Truly over what a real MongoDB stores (16 MiB), whatever limit the service is configured with.
    assert len(bson.encode(levels)) > 16 * 1024 * 1024 >= MAX_DOCUMENT_BYTES
    feed.frames([partial("SMALL"), make_frame("BIG", "partial", rows)])
    builder = run_service("l2builder", env=env, name="builder")
    wait_settled(feed, books, timeout=60)

    big = books.get("BIG")
    assert big is not None
    assert (big["status"], sides(big)) == ("stale", {"bids": [], "asks": []})
    assert big["reason"].startswith("too_large: ") and "over the 16000000-byte limit" in big["reason"]
    assert big["stream_id"] == feed.last_id["BIG"] and isinstance(big["version"], str)
    assert type(big["updated_at"]) is dt.datetime
    assert builder.metric("bookstream_l2builder_stale_total", 'kind="too_large"') == 1
    assert list(log_values(builder, "book_unstorable", "symbol")) == ["BIG"]

    feed.frames([update("SMALL", 3)])  # the others are written as ever
    wait_settled(feed, books)
    assert (books.get("SMALL") or {})["bids"][0] == [100.0, 3, 2]
    feed.frames([partial("BIG", size=4)])  # a book that fits again is live again
    wait_settled(feed, books)
    assert (books.get("BIG") or {})["status"] == "live" and sides(books.get("BIG"))["asks"] == [[101.0, 4, 1]]


def test_a_stale_book_keeps_its_last_levels_across_owners(
        run_service: RunService, service_env: dict[str, str], redis_url: str, key_prefix: str,
        mongo_database: str, mongo_server: MongoServer) -> None:
    env = {**service_env, "MONGO_CONNECTION_STRING": mongo_server.url}
    feed, books = Feed(redis_url, key_prefix), Books(mongo_server.url, mongo_database)
    feed.frames([partial("XBTUSD")])
    first = run_service("l2builder", env=env, name="first")
    wait_settled(feed, books)
    feed.gap("XBTUSD", "disconnect")
    feed.frames([update("XBTUSD", 55)])  # after the gap: not applied, the book waits for a partial
    wait_settled(feed, books)
    document = books.get("XBTUSD")
    assert document is not None and (document["status"], document["reason"]) == ("stale", "gap: disconnect")
    assert sides(document) == PARTIAL_LEVELS
    assert first.terminate() == 0

    run_service("l2builder", env=env, name="second")
    wait_until(lambda: (books.get("XBTUSD") or {}).get("epoch") == 2, 20, "the new owner's first write")
    document = books.get("XBTUSD")
    assert document is not None and (document["status"], document["reason"]) == ("stale", "gap: disconnect")
    assert sides(document) == PARTIAL_LEVELS
