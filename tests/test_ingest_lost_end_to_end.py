"""A lost ingest seen end to end: real `bookstream ingest`, `top10` and `l2builder` against the hostile venue.

When the venue goes silent (its TCP connection up, nothing sent, pings unanswered) or ingest is killed with
SIGKILL, both the MongoDB book and the top-10 key must say `stale` within HEALTH_STALE_AFTER (a documented
bound, so it is asserted at its value), and both must come back `live` and equal to the venue's truth once
a working ingest session delivers again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
import redis

from services.core.bookdoc import book_levels
from services.core.keys import Keys
from testkit.harness import MongoServer, ServiceProcess, wait_until
from testkit.l2feeds import Books
from tests.conftest import RunService
from tests.ingest.test_hostile_venue import l2_frame, start_ingest
from tests.top10.feed import cached
from tests.venue import Venue

HEALTH_STALE_AFTER = 10.0
"""The setting's default, which the services below run with."""
SYMBOL = "XBTUSD"
LOST_REASONS = ("ingest_lost", "gap")


class Truth:
    """The venue's book of SYMBOL: what its partial and its orderBook10 snapshot say when subscribed."""

    def __init__(self) -> None:
        self.rows: dict[int, tuple[str, int, float]] = {1: ("Sell", 10, 101.0), 2: ("Buy", 20, 100.0),
                                                         3: ("Buy", 5, 99.5), 4: ("Sell", 8, 101.5)}

    def on_subscribe(self, topic: str) -> list[str]:
        if topic == f"orderBookL2:{SYMBOL}":
            rows = [(ident, side, size, price) for ident, (side, size, price) in sorted(self.rows.items())]
            return [l2_frame(SYMBOL, "partial", rows)]
        if topic == f"orderBook10:{SYMBOL}":
            bids, asks = self.top10()
            stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            return [orjson.dumps({"table": "orderBook10", "action": "update", "data": [
                {"symbol": SYMBOL, "bids": bids, "asks": asks, "timestamp": stamp}]}).decode()]
        return []

    def book(self) -> dict[str, list[list[Any]]]:
        """The levels l2builder's document must hold: [price, size, id], best first."""
        bids = sorted(([price, size, ident] for ident, (side, size, price) in self.rows.items() if side == "Buy"),
                      key=lambda level: -level[0])
        asks = sorted(([price, size, ident] for ident, (side, size, price) in self.rows.items() if side == "Sell"),
                      key=lambda level: level[0])
        return {"bids": bids, "asks": asks}

    def top10(self) -> tuple[list[list[float]], list[list[float]]]:
        book = self.book()
        return ([[price, size] for price, size, _ in book["bids"][:10]],
                [[price, size] for price, size, _ in book["asks"][:10]])


@pytest.fixture
def venue() -> Iterator[Venue]:
    server = Venue().start()
    yield server
    server.stop()


def test_a_silent_venue_or_a_killed_ingest_turns_book_and_top10_stale_in_time_and_live_again(
        venue: Venue, mongo_server: MongoServer, run_service: RunService, service_env: dict[str, str],
        redis_url: str, key_prefix: str, mongo_database: str) -> None:
    truth = Truth()
    venue.on_subscribe = truth.on_subscribe
    env = service_env | {"MONGO_CONNECTION_STRING": mongo_server.url}
    run_service("l2builder", env=env | {"INSTANCE_NAME": "builder-e2e"}, name="l2builder")
    run_service("top10", env=env | {"INSTANCE_NAME": "top10-e2e"}, name="top10")
    ingest = start_ingest(run_service, env, venue, SYMBOL, INSTANCE_NAME="ingest-e2e")
    books, client, keys = Books(mongo_server.url, mongo_database), redis.Redis.from_url(redis_url), Keys(key_prefix)

    def book() -> dict[str, Any]:
        return books.get(SYMBOL) or {}

    def top10() -> dict[str, Any]:
        return cached(client, keys, SYMBOL)

    def stale_in_time(since: float, what: str) -> None:
        """Both stale, for a lost ingest's reason, within HEALTH_STALE_AFTER of `since`."""
        wait_until(lambda: book().get("status") == "stale" == top10().get("status"),
                   since + HEALTH_STALE_AFTER - time.monotonic(), f"book and top10 stale after {what}")
        assert book()["reason"].startswith(LOST_REASONS), book()["reason"]
        assert top10()["reason"].startswith(LOST_REASONS), top10()["reason"]

    def live_and_true(what: str) -> None:
        bids, asks = truth.top10()
        wait_until(lambda: (book().get("status"), top10().get("status")) == ("live", "live")
                   and book_levels(book()) == truth.book()
                   and (top10().get("bids"), top10().get("asks")) == (bids, asks), 15, f"both live and true {what}")

    try:
        live_and_true("at start")

        silent_since = time.monotonic()
        venue.silent = True
        stale_in_time(silent_since, "the venue went silent")
        assert venue.pings >= 1

        truth.rows[2] = ("Buy", 25, 100.0)
        venue.silent = False
        venue.drop()  # the silent connection's subscriptions went unanswered: a new one subscribes afresh
        live_and_true("once the venue speaks again")

        killed_at = time.monotonic()
        ingest.kill()
        stale_in_time(killed_at, "kill -9 of ingest")
        assert book()["reason"].startswith("ingest_lost") and top10()["reason"].startswith("ingest_lost")

        truth.rows[3] = ("Buy", 6, 99.5)
        del truth.rows[4]
        replacement: ServiceProcess = start_ingest(run_service, env, venue, SYMBOL, INSTANCE_NAME="ingest-e2e-2")
        live_and_true("with a new ingest")
        assert replacement.alive()
    finally:
        client.close()
