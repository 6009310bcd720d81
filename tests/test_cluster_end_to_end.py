"""The whole pipeline on a Redis Cluster: `bookstream exchange --sim` -> `ingest` -> two `top10` and two
`l2builder` instances, with symbols spread over every primary.

The first test runs on the session's shared cluster and kills one l2builder with `kill -9` mid-run; the
second runs on a cluster of its own and kills a primary, then promotes its replica, while every service keeps
running. Both end with every top10 key equal to the exchange's top 10 and the last orderBook10 frame, every
MongoDB book equal to the exchange's (its REST truth endpoint) and live, and `bookstream status` clean; the
failover test also checks that no fencing epoch was handed out twice.
"""

from __future__ import annotations

import json
import subprocess
import threading
import urllib.request
from collections import defaultdict
from typing import Any, cast

import orjson
import redis

from services.core.bookdoc import book_levels
from services.core.keys import TOP10_GROUP, Keys
from services.core.slots import key_slot
from services.exchange.market import symbol_names
from testkit.harness import (
    RedisClusterServers,
    ServiceProcess,
    bookstream_argv,
    free_port,
    redis_client,
    wait_until,
)
from testkit.l2feeds import Books, Levels, log_values
from tests.conftest import RunService
from tests.top10.test_end_to_end import last_ob10_frame

Client = redis.Redis | redis.RedisCluster


def exchange_rows(port: int, symbol: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/orderBook/L2?symbol={symbol}&depth=0"
    with urllib.request.urlopen(url, timeout=5) as reply:
        rows: list[dict[str, Any]] = json.load(reply)
    return rows


def exchange_book(rows: list[dict[str, Any]]) -> Levels:
    """The exchange's full book as l2builder stores it: `[price, size, id]` levels, best first."""
    bids = sorted(([row["price"], row["size"], row["id"]] for row in rows if row["side"] == "Buy"),
                  key=lambda level: -level[0])
    asks = sorted(([row["price"], row["size"], row["id"]] for row in rows if row["side"] == "Sell"),
                  key=lambda level: level[0])
    return {"bids": bids, "asks": asks}


def top10_of(book: Levels) -> tuple[list[list[Any]], list[list[Any]]]:
    return ([level[:2] for level in book["bids"][:10]], [level[:2] for level in book["asks"][:10]])


def primary_of(client: redis.Redis, key: str) -> str:
    """The address of the primary serving `key`, from the cluster's slot map."""
    slots: list[list[Any]] = client.cluster("SLOTS")
    slot = key_slot(key)
    host, port, *_ = next(primary for first, last, primary, *_ in slots if first <= slot <= last)
    return f"{host.decode()}:{port}"


def spread(seed_url: str, keys: Keys, symbols: list[str]) -> dict[str, set[str]]:
    """The symbols each primary serves (by their l2 stream's slot)."""
    client = redis.Redis.from_url(seed_url)
    try:
        served: dict[str, set[str]] = defaultdict(set)
        for symbol in symbols:
            served[primary_of(client, keys.l2_stream(symbol))].add(symbol)
        return served
    finally:
        client.close()


def last_l2_id(client: Client, keys: Keys, symbol: str) -> str | None:
    newest = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrevrange(keys.l2_stream(symbol), count=1))
    return newest[0][0].decode() if newest else None


def top10_key(client: Client, keys: Keys, symbol: str) -> dict[str, Any]:
    raw = cast(dict[bytes, bytes], client.hgetall(keys.top10(symbol)))
    value: dict[str, Any] = {key.decode(): item.decode() for key, item in raw.items()}
    for side in ("bids", "asks"):
        if side in value:
            value[side] = orjson.loads(value[side])
    return value


def undrained(client: Client, stream: str, group: str) -> str | None:
    """What group `group` has left to do on `stream` (entries not delivered or not acknowledged), None when
    nothing. Delivery is judged by the last delivered id, not by the group's `lag`: Redis's count of entries
    read is an estimate that a failover can leave off (lost writes, replayed reads)."""
    groups: list[dict[str, Any]] = client.xinfo_groups(stream)
    found = [entry for entry in groups if entry["name"] == group.encode()]
    if not found:
        return "no group"
    newest = cast(list[tuple[bytes, Any]], client.xrevrange(stream, count=1))
    delivered = found[0]["last-delivered-id"]
    if found[0]["pending"] or (newest and newest[0][0] != delivered):
        return f"pending={found[0]['pending']} last_delivered={delivered!r} newest={newest[0][0]!r}"
    return None


class Pipeline:
    """The services of one run, and the checks of its end state."""

    def __init__(self, run_service: RunService, env: dict[str, str], cluster_url: str, symbols: list[str],
                 books: Books, keys: Keys, frames: int, rate: int) -> None:
        self.port = free_port()
        self.symbols, self.books, self.keys = symbols, books, keys
        self.client = redis_client(cluster_url)
        self.exchange = run_service("exchange", "--sim", "--host", "127.0.0.1", "--port", str(self.port),
                                    "--symbols", ",".join(symbols), "--rate", str(rate), "--seed", "5",
                                    "--max-frames", str(frames), env=env, name="exchange")
        self.env = {**env, "BITMEX_WS_URL": f"ws://127.0.0.1:{self.port}/realtime", "SYMBOLS": ",".join(symbols),
                    "RESUBSCRIBE_INTERVAL": "1", "LEASE_TTL": "2", "CONSUMER_EXPIRY": "2", "CLAIM_IDLE": "2"}
        self.ingest = run_service("ingest", env=self.env, name="ingest")
        self.top10 = [run_service("top10", env={**self.env, "INSTANCE_NAME": name}, name=name)
                      for name in ("top10-a", "top10-b")]
        self.builders = {name: run_service("l2builder", env={**self.env, "INSTANCE_NAME": name}, name=name)
                         for name in ("builder-a", "builder-b")}

    def services(self) -> list[ServiceProcess]:
        return [self.exchange, self.ingest, *self.top10, *self.builders.values()]

    def all_live(self) -> bool:
        documents = self.books.all()
        return len(documents) == len(self.symbols) and all(doc["status"] == "live" for doc in documents.values())

    def wait_finished(self, timeout: float = 40) -> None:
        self.exchange.wait_log("max_frames_reached", timeout=timeout)

    def mismatches(self) -> list[str]:
        """What still differs from the exchange: empty once every key and book is exact."""
        wrong = []
        documents = self.books.all()
        for symbol in self.symbols:
            truth = exchange_book(exchange_rows(self.port, symbol))
            last = last_ob10_frame(self.client, self.keys, symbol)
            value = top10_key(self.client, self.keys, symbol)
            if last is None or value.get("stream_id") != last[0] or (value["bids"], value["asks"]) != (
                    last[1]["bids"], last[1]["asks"]) or (value["bids"], value["asks"]) != top10_of(truth):
                wrong.append(f"{symbol}: top10 key")
            elif left := undrained(self.client, self.keys.ob10_stream(symbol), TOP10_GROUP):
                wrong.append(f"{symbol}: ob10 group {left}")
            document = documents.get(symbol)
            if document is None or document["stream_id"] != last_l2_id(self.client, self.keys, symbol):
                wrong.append(f"{symbol}: book not at its stream's end")
            elif book_levels(document) != truth:
                wrong.append(f"{symbol}: book {document['status']} differs from the exchange's")
            elif document["status"] != "live":
                wrong.append(f"{symbol}: book {document['status']}: {document.get('reason')}")
        return wrong

    def wait_exact(self, timeout: float = 40) -> None:
        last: list[str] = []

        def exact() -> bool:
            last[:] = self.mismatches()
            return not last

        try:
            wait_until(exact, timeout, "every top10 key and book equal to the exchange's", interval=0.5)
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {last[:10]}") from None


def status(env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    result = subprocess.run([*bookstream_argv(), "status", "--json"], capture_output=True, env=env, timeout=30)
    document: dict[str, Any] = orjson.loads(result.stdout)
    return result.returncode, document


def wait_status_clean(env: dict[str, str], symbols: list[str], primaries: int) -> dict[str, Any]:
    """`bookstream status` exiting 0 with every symbol listed and every primary reachable (after a kill, its
    dead members and consumers take a few seconds to be forgotten)."""
    latest: dict[str, Any] = {}

    def clean() -> bool:
        code, document = status(env)
        latest.update(document, code=code)
        return code == 0

    try:
        wait_until(clean, 30, "`bookstream status` reporting no problem", interval=1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {latest.get('problems')}") from None
    assert latest["problems"] == []
    assert sorted(entry["symbol"] for entry in latest["symbols"]) == sorted(symbols)
    assert all(entry["book"]["status"] == "live" for entry in latest["symbols"])
    assert len(latest["redis"]["nodes"]) == primaries
    assert all(node["ok"] for node in latest["redis"]["nodes"])
    return latest


def test_pipeline_on_a_cluster_survives_a_kill_9_of_an_l2builder(
        run_service: RunService, service_env: dict[str, str], redis_cluster_url: str, mongo_url: str,
        key_prefix: str, mongo_database: str) -> None:
    symbols, keys = symbol_names(60), Keys(key_prefix)
    seed = redis_cluster_url.replace("redis+cluster://", "redis://").split(",")[0]
    served = spread(seed, keys, symbols)
    assert len(served) == 3 and all(served.values()), {node: len(names) for node, names in served.items()}

    env = {**service_env, "REDIS_URL": redis_cluster_url}
    books = Books(mongo_url, mongo_database)
    pipeline = Pipeline(run_service, env, redis_cluster_url, symbols, books, keys, frames=4000, rate=250)
    wait_until(pipeline.all_live, 45, "every book live", interval=0.5)
    victim = pipeline.builders.pop("builder-b")
    assert "max_frames_reached" not in pipeline.exchange.logs(), "the market ended before the kill: raise frames"
    victim.kill()

    pipeline.wait_finished()
    pipeline.wait_exact()
    assert all(service.alive() for service in pipeline.services())
    # Nothing was lost in Redis, so ingest's count of what landed must never have run ahead of it.
    assert "stream_lost" not in pipeline.ingest.logs()
    # The survivor took over what the dead instance owned.
    survivor = pipeline.builders["builder-a"]
    assert set(log_values(survivor, "lease_acquired", "symbol")) == set(symbols)
    wait_status_clean(env, symbols, primaries=3)


class EpochSampler(threading.Thread):
    """Reads every document's fencing epoch over and over until stopped: each must only grow."""

    def __init__(self, books: Books) -> None:
        super().__init__(daemon=True)
        self.books = books
        self.seen: dict[str, list[int]] = defaultdict(list)
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(0.2):
            for symbol, document in self.books.all().items():
                epochs = self.seen[symbol]
                if not epochs or epochs[-1] != document["epoch"]:
                    epochs.append(document["epoch"])
            self.samples += 1

    def stop(self) -> dict[str, list[int]]:
        self._stop_event.set()
        self.join(10)
        return dict(self.seen)


ACQUISITIONS = ("lease_acquired", "lease_retaken", "restored")
"""The l2builder log events carrying an epoch the instance took (restored: the epoch raised above the
document's, when it was behind)."""


def epochs_taken(builder: ServiceProcess) -> set[tuple[str, int]]:
    return {(symbol, int(epoch)) for event in ACQUISITIONS
            for symbol, epoch in zip(log_values(builder, event, "symbol"), log_values(builder, event, "epoch"),
                                     strict=True)}


def test_pipeline_keeps_running_through_a_primary_failover(
        run_service: RunService, service_env: dict[str, str], private_cluster: RedisClusterServers,
        mongo_url: str, key_prefix: str, mongo_database: str) -> None:
    cluster = private_cluster
    symbols, keys = symbol_names(50), Keys(key_prefix)
    served = spread(cluster.nodes[0].url, keys, symbols)
    assert len(served) == 3 and all(served.values())
    env = {**service_env, "REDIS_URL": cluster.url}
    books = Books(mongo_url, mongo_database)
    pipeline = Pipeline(run_service, env, cluster.url, symbols, books, keys, frames=5000, rate=250)
    wait_until(pipeline.all_live, 45, "every book live", interval=0.5)
    sampler = EpochSampler(books)
    sampler.start()

    # The primary of the l2 activity stream: it serves symbols too (every primary does).
    victim = cluster.owner(key_slot(keys.activity("l2")))
    victim_symbols = served[f"127.0.0.1:{victim.port}"]
    assert "max_frames_reached" not in pipeline.exchange.logs(), "the market ended before the kill"
    cluster.wait_synced()  # what is lost is then the replication lag only, as in production
    victim.kill()
    cluster.take_over(victim)

    pipeline.wait_finished(timeout=60)
    pipeline.wait_exact(timeout=45)
    epochs = sampler.stop()
    assert all(service.alive() for service in pipeline.services())

    taken = {name: epochs_taken(builder) for name, builder in pipeline.builders.items()}
    assert not set.intersection(*taken.values()), "one (symbol, epoch) taken by two instances"
    for symbol, seen in epochs.items():
        assert seen == sorted(seen), f"{symbol}: document epochs went back: {seen}"
    assert set(epochs) == set(symbols) and victim_symbols
    wait_status_clean(env, symbols, primaries=3)
