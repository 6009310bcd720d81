"""The whole path: `bookstream exchange --sim` -> `bookstream ingest` -> two `bookstream top10` instances.

Once the simulated market stops changing, every key must hold the last orderBook10 frame of its symbol (the
newest entry of its ob10 stream) and agree with the exchange's own book (its REST truth endpoint).
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from typing import Any, cast

import orjson
import redis

from services.core.entries import decode_entry
from services.core.keys import TOP10_GROUP, Keys
from testkit.harness import ServiceProcess, base_env, free_port, redis_client, wait_until
from tests.top10.feed import cached

RunService = Callable[..., ServiceProcess]
SYMBOLS = ("XBTUSD", "ETHUSD", "SOLUSDT", "DOGEUSDT")


def truth_top10(port: int, symbol: str) -> tuple[list[list[float]], list[list[float]]]:
    """The best 10 bid and ask levels `[price, size]` of the exchange's book, from its REST endpoint."""
    url = f"http://127.0.0.1:{port}/api/v1/orderBook/L2?symbol={symbol}&depth=0"
    with urllib.request.urlopen(url, timeout=5) as reply:
        rows: list[dict[str, Any]] = json.loads(reply.read())
    bids = sorted(([row["price"], row["size"]] for row in rows if row["side"] == "Buy"), reverse=True)
    asks = sorted([row["price"], row["size"]] for row in rows if row["side"] == "Sell")
    return bids[:10], asks[:10]


def last_ob10_frame(client: redis.Redis | redis.RedisCluster, keys: Keys,
                    symbol: str) -> tuple[str, dict[str, Any]] | None:
    """The stream id and the orderBook10 row of the newest frame in `symbol`'s ob10 stream."""
    # An undecoded client: ids and fields come back as bytes, never None for entries that exist.
    newest_first = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrevrange(keys.ob10_stream(symbol), count=20))
    for entry_id, fields in newest_first:
        entry = decode_entry(entry_id, fields)
        if not entry.is_gap:
            row: dict[str, Any] = orjson.loads(entry.frame)["data"][-1]
            return entry.stream_id, row
    return None


def test_keys_equal_the_last_frame_and_the_exchange_book(run_service: RunService, redis_target: str,
                                                         key_prefix: str) -> None:
    redis_url = redis_target  # one server, then a cluster
    port = free_port()
    env = base_env(REDIS_URL=redis_url, KEY_PREFIX=key_prefix, CLAIM_IDLE="2", LOG_LEVEL="INFO")
    exchange = run_service("exchange", "--sim", "--host", "127.0.0.1", "--port", str(port), "--symbols",
                           ",".join(SYMBOLS), "--rate", "400", "--seed", "11", "--max-frames", "1500", env=env)
    top10 = [run_service("top10", env={**env, "INSTANCE_NAME": name}, name=name) for name in ("east", "west")]
    run_service("ingest", env={**env, "BITMEX_WS_URL": f"ws://127.0.0.1:{port}/realtime",
                               "SYMBOLS": ",".join(SYMBOLS)})
    exchange.wait_log("max_frames_reached", timeout=30)
    client = redis_client(redis_url)
    keys = Keys(key_prefix)

    def settled() -> bool:
        for symbol in SYMBOLS:
            last = last_ob10_frame(client, keys, symbol)
            value = cached(client, keys, symbol)
            if last is None or value.get("stream_id") != last[0]:
                return False
            [group] = client.xinfo_groups(keys.ob10_stream(symbol))
            if group["pending"] or group["lag"]:
                return False
        return True

    wait_until(settled, 20, "every key at its stream's last orderBook10 frame")
    for symbol in SYMBOLS:
        last = last_ob10_frame(client, keys, symbol)
        assert last is not None
        stream_id, row = last
        value = cached(client, keys, symbol)
        assert (value["bids"], value["asks"], value["timestamp"]) == (row["bids"], row["asks"], row["timestamp"])
        assert (value["bids"], value["asks"]) == truth_top10(port, symbol), symbol
        assert value["stream_id"] == stream_id
    applied = sum(instance.metric("bookstream_top10_writes_total", 'result="applied"') for instance in top10)
    assert applied >= len(SYMBOLS)
    assert all(instance.metric("bookstream_top10_malformed_entries_total") == 0 for instance in top10)
    assert client.xinfo_groups(keys.ob10_stream(SYMBOLS[0]))[0]["name"] == TOP10_GROUP.encode()
