"""The whole pipeline on the simulator: exchange -> ingest -> two l2builders -> MongoDB, with a malformed
entry that forces a resync through ingest. Every final book equals the exchange's own."""

from __future__ import annotations

import json
import urllib.request
from typing import Any, cast

from services.core.bookdoc import book_levels
from services.core.keys import Keys
from testkit.harness import free_port, redis_client, wait_until
from testkit.l2feeds import Books, Levels, log_values
from tests.conftest import RunService

SYMBOLS = ("XBTUSD", "ETHUSD", "SOLUSD", "XRPUSD")


def exchange_book(port: int, symbol: str) -> Levels:
    url = f"http://127.0.0.1:{port}/api/v1/orderBook/L2?symbol={symbol}&depth=0"
    with urllib.request.urlopen(url, timeout=5) as reply:
        rows: list[dict[str, Any]] = json.load(reply)
    bids = sorted(([row["price"], row["size"], row["id"]] for row in rows if row["side"] == "Buy"),
                  key=lambda level: -level[0])
    asks = sorted(([row["price"], row["size"], row["id"]] for row in rows if row["side"] == "Sell"),
                  key=lambda level: level[0])
    return {"bids": bids, "asks": asks}


def test_simulated_market_with_a_forced_resync_ends_equal_to_the_exchange(
        run_service: RunService, service_env: dict[str, str], redis_target: str, mongo_url: str, key_prefix: str,
        mongo_database: str) -> None:
    port = free_port()
    run_service("exchange", "--sim", "--host", "127.0.0.1", "--port", str(port), "--symbols", ",".join(SYMBOLS),
                "--rate", "500", "--seed", "11", "--max-frames", "2500", env=service_env, name="exchange")
    env = {**service_env, "BITMEX_WS_URL": f"ws://127.0.0.1:{port}/realtime", "SYMBOLS": ",".join(SYMBOLS),
           "RESUBSCRIBE_INTERVAL": "1", "LEASE_TTL": "2"}
    run_service("ingest", env=env, name="ingest")
    builders = [run_service("l2builder", env={**env, "INSTANCE_NAME": name}, name=name) for name in ("one", "two")]
    books, keys = Books(mongo_url, mongo_database), Keys(key_prefix)
    client = redis_client(redis_target)  # one server, then a cluster (service_env follows redis_target)

    def all_live() -> bool:
        documents = books.all()
        return len(documents) == len(SYMBOLS) and all(doc["status"] == "live" for doc in documents.values())

    wait_until(all_live, 20, "every book live")
    client.xadd(keys.l2_stream("XBTUSD"), {"table": "orderBookL2", "action": "update", "frame": "{"})

    def resync_requested() -> bool:
        requests = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(keys.control))
        return any(fields.get(b"symbol") == b"XBTUSD" and fields.get(b"requested_by") in (b"one", b"two")
                   for _, fields in requests)

    wait_until(resync_requested, 10, "l2builder asking ingest for a fresh XBTUSD partial")

    def equal_to_the_exchange() -> bool:
        return all_live() and books.levels() == {symbol: exchange_book(port, symbol) for symbol in SYMBOLS}

    wait_until(equal_to_the_exchange, 40, "every book live and equal to the exchange's", interval=0.25)
    stale = [symbol for builder in builders for symbol in log_values(builder, "book_stale", "symbol")]
    assert "XBTUSD" in stale
    assert any(builder.metric("bookstream_l2builder_resync_requests_total") for builder in builders)
    assert all(len(book_levels(books.all()[symbol])["bids"]) > 10 for symbol in SYMBOLS)
