"""What l2builder must not trust through the CLI: an ingest session whose liveness expired, a Redis that
lost its data mid-run, hostile names in the symbols set, an evicting Redis. Every book ends exact and
live or stale with the reason, never wrong and live, and the service recovers without a restart."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import orjson
import redis

from services.core.bookdoc import book_levels
from services.core.keys import SESSION_LOST_AFTER, Keys
from testkit.harness import RedisServer, wait_until
from testkit.l2feeds import Books, Feed, Frame, Liveness, log_values, make_frame, wait_settled
from tests.conftest import RunService

HEALTH_STALE_AFTER = 10.0


def partial(symbol: str, size: int = 10) -> Frame:
    return make_frame(symbol, "partial", [(1, "Sell", size, 101.0), (2, "Buy", 20, 100.0)])


def update(symbol: str, size: int) -> Frame:
    return make_frame(symbol, "update", [(2, "Buy", size, 100.0)])


def levels(size: int, bid: int = 20) -> dict[str, list[list[Any]]]:
    return {"bids": [[100.0, bid, 2]], "asks": [[101.0, size, 1]]}


def book(books: Books, symbol: str) -> dict[str, Any]:
    document = books.get(symbol)
    assert document is not None, f"no document for {symbol}"
    return document


def status(books: Books, symbol: str) -> tuple[str | None, str]:
    document = books.get(symbol) or {}
    return document.get("status"), document.get("reason") or ""


@contextlib.contextmanager
def revived(feed: Feed, books: Books, symbol: str, alive: Liveness) -> Iterator[None]:
    """A new ingest session, kept alive by `alive` meanwhile, sends a partial: the book of `symbol` is live
    again with its levels."""
    feed.new_session(alive.session)
    alive.start()
    try:
        feed.frames([partial(symbol, size=44)])
        wait_settled(feed, books)
        assert status(books, symbol) == ("live", "")
        assert book_levels(book(books, symbol)) == levels(44)
        yield
    finally:
        alive.stop()


def test_a_lost_ingest_session_makes_its_books_stale_until_a_partial_of_a_live_session(
        run_service: RunService, service_env: dict[str, str], redis_url: str, mongo_url: str, key_prefix: str,
        mongo_database: str) -> None:
    books = Books(mongo_url, mongo_database)
    lost, quiet = Feed(redis_url, key_prefix, "s-lost", alive=False), Feed(redis_url, key_prefix, "s-quiet",
                                                                             alive=False)
    lost_alive, quiet_alive = Liveness(redis_url, key_prefix, "s-lost"), Liveness(redis_url, key_prefix, "s-quiet")
    lost_alive.start()
    quiet_alive.start()
    try:
        lost.frames([partial("LOST"), update("LOST", 21)])
        quiet.frames([partial("QUIET")])
        builder = run_service("l2builder", env={**service_env, "INSTANCE_NAME": "builder-live"}, name="builder")
        wait_settled(lost, books)
        wait_settled(quiet, books)
        quiet_since = time.monotonic()
        assert status(books, "LOST") == status(books, "QUIET") == ("live", "")

        lost_alive.stop()  # ingest killed: no gap marker, its liveness key simply expires
        wait_until(lambda: status(books, "LOST")[0] == "stale", HEALTH_STALE_AFTER,
                   "the book of the lost session stale")
        document = book(books, "LOST")
        assert document["reason"].startswith("ingest_lost: session s-lost")
        assert book_levels(document) == levels(10, bid=21)  # last levels kept
        wait_until(lambda: any(request["symbol"] == "LOST" and request["reason"].startswith("ingest_lost")
                               for request in lost.control_requests()), 10, "a resync request for LOST")

        # The quiet book of a session whose key is renewed is no fault: it stays live.
        wait_until(lambda: time.monotonic() - quiet_since > 2 * SESSION_LOST_AFTER, 30, "time passing")
        assert status(books, "QUIET") == ("live", "")
        assert book(books, "QUIET")["stream_id"] == quiet.last_id["QUIET"]
        assert builder.metric("bookstream_l2builder_stale_total", 'kind="ingest_lost"') == 1

        # A new ingest session: its partial makes the book live again.
        with revived(lost, books, "LOST", Liveness(redis_url, key_prefix, "s-new")):
            assert set(log_values(builder, "book_stale", "kind")) == {"ingest_lost"}
    finally:
        quiet_alive.stop()


def test_a_late_partial_of_a_lost_session_leaves_the_book_stale(
        run_service: RunService, service_env: dict[str, str], redis_url: str, mongo_url: str, key_prefix: str,
        mongo_database: str) -> None:
    books = Books(mongo_url, mongo_database)
    feed = Feed(redis_url, key_prefix, "s-dead", alive=False)
    dead_alive = Liveness(redis_url, key_prefix, "s-dead")
    dead_alive.start()
    feed.frames([partial("LATE")])
    builder = run_service("l2builder", env={**service_env, "INSTANCE_NAME": "builder-late"}, name="builder")
    wait_settled(feed, books)
    assert status(books, "LATE") == ("live", "")
    dead_alive.stop()
    wait_until(lambda: status(books, "LATE")[0] == "stale", HEALTH_STALE_AFTER, "the book of the lost session stale")

    # A partial of the dead session, late (a backlog ingest wrote before it died): exact, but not live.
    feed.frames([partial("LATE", size=33)])
    wait_settled(feed, books)
    document = book(books, "LATE")
    assert (document["status"], document["session"]) == ("stale", "s-dead")
    assert document["reason"].startswith("ingest_lost: session s-dead has had no liveness key for ")
    assert book_levels(document) == levels(33)

    # A partial of a live session makes it live.
    with revived(feed, books, "LATE", Liveness(redis_url, key_prefix, "s-live")):
        assert builder.metric("bookstream_l2builder_stale_total", 'kind="ingest_lost"') == 2


def test_flushall_mid_run_makes_the_books_stale_then_live_again_with_fresh_partials(
        run_service: RunService, service_env: dict[str, str], mongo_url: str, key_prefix: str,
        mongo_database: str, redis_server: RedisServer) -> None:
    symbols = ["AAA", "BBB"]
    books = Books(mongo_url, mongo_database)
    feed = Feed(redis_server.url, key_prefix, "s-1", alive=False)
    alive = Liveness(redis_server.url, key_prefix, "s-1")  # ingest keeps renewing it across the loss
    alive.start()
    try:
        feed.frames([partial(symbol) for symbol in symbols] + [update(symbol, 21) for symbol in symbols])
        builder = run_service("l2builder", env={**service_env, "REDIS_URL": redis_server.url,
                                                "INSTANCE_NAME": "builder-flush"}, name="builder")
        wait_settled(feed, books)
        before = {symbol: book(books, symbol) for symbol in symbols}
        assert {doc["status"] for doc in before.values()} == {"live"}

        client = redis.Redis.from_url(redis_server.url)
        client.flushall()
        seen: dict[str, set[str]] = {symbol: set() for symbol in symbols}

        def observed_stale() -> bool:
            for symbol in symbols:
                document = book(books, symbol)
                # Never live with levels other than the exact ones (nothing was written since).
                assert document["status"] == "stale" or book_levels(document) == \
                    levels(10, bid=21), document
                if document["status"] == "stale":
                    seen[symbol].add(document["reason"])
            return all(seen.values())

        wait_until(observed_stale, 20, "every book stale after FLUSHALL")
        assert all(reason.startswith("redis_lost:") for reasons in seen.values() for reason in reasons), seen
        # The partials it asks for are what ingest answers with (after re-announcing its symbols).
        wait_until(lambda: {request["symbol"] for request in feed.control_requests()} >= set(symbols), 10,
                   "a resync request for every book")
        feed.frames([partial(symbol, size=55) for symbol in symbols])
        wait_settled(feed, books)

        after = {symbol: book(books, symbol) for symbol in symbols}
        for symbol in symbols:
            assert (after[symbol]["status"], after[symbol]["reason"]) == ("live", None)
            assert book_levels(after[symbol]) == levels(55)
            assert after[symbol]["epoch"] > before[symbol]["epoch"]
        assert builder.alive() and builder.health()[0] == 200
        assert builder.metric("bookstream_l2builder_redis_lost_total", 'what="epoch"') >= len(symbols)
        assert "event=lease_retaken" in builder.logs()
    finally:
        alive.stop()


def test_a_stream_lost_by_redis_makes_only_its_book_stale(
        run_service: RunService, service_env: dict[str, str], redis_url: str, mongo_url: str, key_prefix: str,
        mongo_database: str) -> None:
    """One stream evicted (or deleted) while its lease and epoch stay: the book is stale where it stands,
    under a new epoch so the stale document replaces the live one; the other book is untouched."""
    books = Books(mongo_url, mongo_database)
    feed = Feed(redis_url, key_prefix)
    feed.frames([partial("GONE"), partial("KEPT"), update("GONE", 21)])
    builder = run_service("l2builder", env={**service_env, "INSTANCE_NAME": "builder-gone"}, name="builder")
    wait_settled(feed, books)
    epoch = book(books, "GONE")["epoch"]

    feed.client.delete(feed.keys.l2_stream("GONE"))
    wait_until(lambda: status(books, "GONE")[0] == "stale", 10, "the book of the lost stream stale")
    assert status(books, "GONE")[1] == "redis_lost: its stream or consumer group vanished"
    assert book(books, "GONE")["epoch"] > epoch and status(books, "KEPT") == ("live", "")
    wait_until(lambda: any(request["symbol"] == "GONE" for request in feed.control_requests()), 10,
               "a resync request for GONE")

    feed.frames([partial("GONE", size=66), update("KEPT", 5)])
    wait_settled(feed, books)
    assert status(books, "GONE") == ("live", "") and status(books, "KEPT") == ("live", "")
    assert book_levels(book(books, "GONE")) == levels(66)
    assert book(books, "KEPT")["bids"] == [[100.0, 5, 2]]
    assert builder.metric("bookstream_l2builder_redis_lost_total", 'what="group"') >= 1


def test_hostile_symbol_names_are_ignored_and_counted(
        run_service: RunService, service_env: dict[str, str], redis_url: str, mongo_url: str, key_prefix: str,
        mongo_database: str) -> None:
    books = Books(mongo_url, mongo_database)
    feed = Feed(redis_url, key_prefix)
    hostile = ["EVIL\x1b[31mRED", "A" * 500, "SP ACE", "new\nline", "XBT{USD}"]
    feed.client.sadd(Keys(key_prefix).symbols, *hostile)
    feed.frames([partial("GOOD")])
    builder = run_service("l2builder", env={**service_env, "INSTANCE_NAME": "builder-names"}, name="builder")
    wait_settled(feed, books)
    wait_until(lambda: "event=invalid_symbols" in builder.logs(), 10, "the invalid names logged")

    status_code, body = builder.health()
    detail = orjson.loads(body)
    assert status_code == 200 and detail["symbols"] == ["GOOD"] and detail["invalid_symbols"] == len(hostile)
    assert builder.metric("bookstream_l2builder_invalid_symbols_total") == len(hostile)
    assert list(books.all()) == ["GOOD"]
    assert feed.client.keys(f"{key_prefix}:lease:*") == [f"{key_prefix}:lease:{{GOOD}}"]
    assert "\x1b" not in builder.logs() and "A" * 100 not in builder.logs()


def test_an_evicting_redis_is_reported_in_the_log_and_healthz(
        run_service: RunService, service_env: dict[str, str], key_prefix: str, redis_server: RedisServer) -> None:
    redis.Redis.from_url(redis_server.url).config_set("maxmemory-policy", "allkeys-lru")
    builder = run_service("l2builder", env={**service_env, "REDIS_URL": redis_server.url}, name="builder")
    wait_until(lambda: "event=redis_evicting" in builder.logs(), 10, "the eviction warning")
    assert list(log_values(builder, "redis_evicting", "policy")) == ["allkeys-lru"]
    status_code, body = builder.health()
    assert status_code == 200 and orjson.loads(body)["redis_policy_warning"] == (
        "maxmemory-policy allkeys-lru may evict streams and keys; bookstream needs noeviction")
