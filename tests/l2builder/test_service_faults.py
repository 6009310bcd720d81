"""Bad input and lost history through the CLI: each hits one book, which goes stale, asks for a partial
through the control stream, and is live again after it; every other book is untouched."""

from __future__ import annotations

import itertools
from typing import cast

from services.core.bookdoc import book_levels
from services.core.entries import encode_entry
from testkit.harness import wait_until
from testkit.l2feeds import TABLE, Books, Feed, Frame, log_values, make_frame, wait_settled
from tests.conftest import RunService

INSTANCE = "builder-faults"
RESUBSCRIBE_INTERVAL = 2.0
"""Long against l2builder's tick, so that asking on every tick would show in the control stream's ids."""


def partial(symbol: str, size: int = 10) -> Frame:
    return make_frame(symbol, "partial", [(1, "Sell", size, 101.0), (2, "Buy", 20, 100.0), (3, "Buy", 5, 99.5)])


def update(symbol: str, size: int) -> Frame:
    return make_frame(symbol, "update", [(2, "Buy", size, 100.0)])


def requested(feed: Feed) -> dict[str, list[dict[str, str]]]:
    found: dict[str, list[dict[str, str]]] = {}
    for request in feed.control_requests():
        found.setdefault(request["symbol"], []).append(request)
    return found


def requested_at(feed: Feed) -> dict[str, list[float]]:
    """When Redis appended each symbol's resync requests (seconds, from the control stream's ids): times
    taken by the server, so a slow test process cannot stretch or squeeze them."""
    found: dict[str, list[float]] = {}
    entries = cast(list[tuple[str, dict[str, str]]], feed.client.xrange(feed.keys.control))
    for stream_id, fields in entries:
        milliseconds = int(stream_id.split("-")[0])
        found.setdefault(fields["symbol"], []).append(milliseconds / 1000)
    return found


def test_bad_input_makes_one_book_stale_until_the_resync(
        run_service: RunService, service_env: dict[str, str], redis_url: str, mongo_url: str, key_prefix: str,
        mongo_database: str) -> None:
    symbols = ["GAP", "MALFORMED", "UNDECODABLE", "INCONSISTENT", "HOLE", "SESSION", "HEALTHY"]
    feed, books = Feed(redis_url, key_prefix), Books(mongo_url, mongo_database)
    feed.frames([partial(symbol) for symbol in symbols])
    env = {**service_env, "INSTANCE_NAME": INSTANCE, "RESUBSCRIBE_INTERVAL": str(RESUBSCRIBE_INTERVAL)}
    builder = run_service("l2builder", env=env, name="builder")
    wait_settled(feed, books)
    assert {doc["status"] for doc in books.all().values()} == {"live"}

    feed.gap("GAP", "disconnect")
    feed.frames([Frame("MALFORMED", "update", '{"table":"orderBookL2","action":"update","data":[{', 0)])
    feed.raw("UNDECODABLE", {"table": TABLE, "action": "update", "frame": "{}"})  # no session, seq, recv_us
    feed.frames([make_frame("INCONSISTENT", "delete", [(42, "Buy", None, None)])])
    feed.skip_seq("HOLE")
    feed.frames([update("HOLE", 7)])
    feed.raw("SESSION", encode_entry(update("SESSION", 7).text, TABLE, "update", "session-2", 1, 0))
    # A delta after each fault must not be applied to the stale book.
    feed.frames([update(symbol, 99) for symbol in symbols if symbol != "SESSION"])
    wait_settled(feed, books)

    documents = books.all()
    reasons = {symbol: doc["reason"] for symbol, doc in documents.items() if doc["status"] == "stale"}
    assert set(reasons) == set(symbols) - {"HEALTHY"}
    assert reasons["GAP"] == "gap: disconnect"
    assert reasons["MALFORMED"].startswith("malformed: frame: invalid JSON")
    assert reasons["UNDECODABLE"].startswith("malformed: entry")
    assert reasons["INCONSISTENT"].startswith("inconsistency:") and "unknown id" in reasons["INCONSISTENT"]
    assert reasons["HOLE"].startswith("hole: entries missing from the stream: seq 2..2 of session session-1")
    assert reasons["SESSION"].startswith("session: new ingest session session-2")
    # A stale book keeps its last exact levels, without the deltas after the fault; a book that contradicted
    # a frame has none left to keep.
    last = {"bids": [[100.0, 20, 2], [99.5, 5, 3]], "asks": [[101.0, 10, 1]]}
    for symbol in reasons:
        expected = {"bids": [], "asks": []} if symbol == "INCONSISTENT" else last
        assert book_levels(documents[symbol]) == expected, symbol
    assert documents["HEALTHY"]["bids"][0] == [100.0, 99, 2]
    wait_until(lambda: builder.metric("bookstream_l2builder_books", 'status="stale"') == len(reasons), 20,
               "the books gauge counting the stale books")
    assert builder.metric("bookstream_l2builder_books", 'status="live"') == 1
    assert builder.metric("bookstream_l2builder_owned_symbols") == len(symbols)

    # Urgent causes ask at once; a gap or a new session only after the grace (RESUBSCRIBE_INTERVAL).
    wait_until(lambda: set(requested(feed)) == set(reasons), 30, "a resync request for every stale book")
    for symbol, requests in requested(feed).items():
        assert requests[0]["op"] == "resubscribe" and requests[0]["requested_by"] == INSTANCE
        assert requests[0]["reason"] == reasons[symbol]

    # The requests repeat while the book waits for its partial, at most once per RESUBSCRIBE_INTERVAL (half
    # of it here: Redis stamps a request when it arrives, which a busy host may delay).
    wait_until(lambda: all(len(times) >= 2 for times in requested_at(feed).values()), 30,
               "every stale book asking again")
    for symbol, times in requested_at(feed).items():
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        assert min(gaps) >= RESUBSCRIBE_INTERVAL / 2, (symbol, gaps)

    feed.frames([partial(symbol, size=33) for symbol in reasons])
    wait_settled(feed, books)
    documents = books.all()
    assert {doc["status"] for doc in documents.values()} == {"live"}
    assert all(documents[symbol]["asks"] == [[101.0, 33, 1]] for symbol in reasons)
    assert documents["SESSION"]["session"] == "session-2" or documents["SESSION"]["seq"] > 1
    count = sum(len(requests) for requests in requested(feed).values())
    # Live books ask no more. A gap on HEALTHY is asked about only after RESUBSCRIBE_INTERVAL of the
    # builder's own time, over which it would have asked about any of the others again.
    feed.gap("HEALTHY", "disconnect")
    wait_until(lambda: "HEALTHY" in requested(feed), 30, "the resync request for HEALTHY")
    assert sum(len(requests) for symbol, requests in requested(feed).items() if symbol != "HEALTHY") == count
    wait_until(lambda: builder.metric("bookstream_l2builder_resync_requests_total") == count + 1, 20,
               "the requests counted")
    for kind in ("gap", "malformed", "inconsistency", "hole", "session"):
        assert builder.metric("bookstream_l2builder_stale_total", f'kind="{kind}"') >= 1, kind
    assert set(log_values(builder, "book_live", "symbol")) >= set(reasons)
    wait_until(lambda: builder.metrics().count("bookstream_l2builder_lag_entries{") == len(symbols)
               and builder.metric("bookstream_l2builder_lag_entries") == 0, 20, "no lag behind any stream head")


def test_restore_detects_trimmed_history_and_a_lost_epoch_counter(
        run_service: RunService, service_env: dict[str, str], redis_url: str, mongo_url: str, key_prefix: str,
        mongo_database: str) -> None:
    feed, books = Feed(redis_url, key_prefix), Books(mongo_url, mongo_database)
    env = {**service_env, "INSTANCE_NAME": INSTANCE}
    feed.frames([partial("TRIMMED"), update("TRIMMED", 1), partial("KEPT"), update("KEPT", 1)])
    first = run_service("l2builder", env=env, name="first")
    wait_settled(feed, books)
    assert first.terminate() == 0

    # While no builder runs: TRIMMED loses the entries right after its stored position, FRESH's stream
    # starts in the middle of a session, and the epoch counter of KEPT is lost (as after a Redis data loss).
    feed.frames([update("TRIMMED", size) for size in range(2, 7)])
    feed.client.xtrim(feed.keys.l2_stream("TRIMMED"), maxlen=2, approximate=False)
    feed.frames([partial("FRESH"), update("FRESH", 2), update("FRESH", 3)])
    feed.client.xtrim(feed.keys.l2_stream("FRESH"), maxlen=1, approximate=False)
    feed.frames([update("KEPT", 2)])
    feed.client.delete(feed.keys.epoch("KEPT"))

    second = run_service("l2builder", env=env, name="second")
    wait_settled(feed, books)
    documents = books.all()
    for symbol in ("TRIMMED", "FRESH"):
        assert documents[symbol]["status"] == "stale", symbol
        assert "trimmed from the stream" in documents[symbol]["reason"], symbol
    wait_until(lambda: set(requested(feed)) == {"TRIMMED", "FRESH"}, 30, "resync requests for trimmed books")
    assert documents["KEPT"]["status"] == "live" and documents["KEPT"]["bids"][0] == [100.0, 2, 2]
    assert documents["KEPT"]["epoch"] == 2  # raised past the stored epoch, so its writes still win
    assert list(log_values(second, "epoch_behind_document", "symbol")) == ["KEPT"]

    feed.frames([partial("TRIMMED", size=44), partial("FRESH", size=55)])
    wait_settled(feed, books)
    documents = books.all()
    assert {symbol: doc["status"] for symbol, doc in documents.items()} == dict.fromkeys(documents, "live")
    assert documents["TRIMMED"]["asks"] == [[101.0, 44, 1]] and documents["FRESH"]["asks"] == [[101.0, 55, 1]]


def test_entries_taken_by_another_consumer_are_refilled_from_the_stream(
        run_service: RunService, service_env: dict[str, str], redis_url: str, mongo_url: str, key_prefix: str,
        mongo_database: str) -> None:
    """A zombie reading through the group takes an entry: the owner sees a seq hole, re-reads it with XRANGE,
    stays live, and acknowledges the zombie's pending entry once its book covers it."""
    feed, books = Feed(redis_url, key_prefix), Books(mongo_url, mongo_database)
    feed.frames([partial("STOLEN")])
    builder = run_service("l2builder", env={**service_env, "INSTANCE_NAME": INSTANCE}, name="builder")
    wait_settled(feed, books)

    stream = feed.keys.l2_stream("STOLEN")
    feed.seq["STOLEN"] += 1
    fields = encode_entry(update("STOLEN", 11).text, TABLE, "update", feed.session, feed.seq["STOLEN"], 0)
    pipe = feed.client.pipeline(transaction=True)  # the zombie's read runs before the owner is woken up
    pipe.xadd(stream, fields)  # type: ignore[arg-type]
    pipe.xreadgroup("l2builder", "zombie", {stream: ">"}, count=10)
    added, taken = pipe.execute()
    assert [entry_id for _, entries in taken for entry_id, _ in entries] == [added]
    feed.frames([make_frame("STOLEN", "delete", [(3, "Buy", None, None)])])
    wait_settled(feed, books)

    document = books.get("STOLEN")
    assert document is not None and document["status"] == "live"
    assert document["bids"] == [[100.0, 11, 2]] and document["seq"] == 3
    assert builder.metric("bookstream_l2builder_holes_refilled_total") == 1
    assert "book_stale" not in builder.logs()
