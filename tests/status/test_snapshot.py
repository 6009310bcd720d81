"""Snapshots of hand-made Redis keys and MongoDB documents on real servers, and the `bookstream status` command."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import orjson
import pymongo
import pytest
import redis
from rich.console import Console

from services.core.entries import StreamEntry, encode_entry, encode_gap
from services.core.keys import L2BUILDER_GROUP, TOP10_GROUP, Keys
from services.core.slots import cluster_node_urls, is_cluster_url, key_slot
from services.dev.state import DevState, write_state
from services.l2builder.store import book_document
from services.l2builder.symbol_state import SymbolState
from services.status.collect import Collector
from services.status.problems import Thresholds, analyze
from services.status.render import render_status
from testkit.harness import RedisClusterServers, RedisServer, base_env, bookstream_argv, free_port

Client = redis.Redis | redis.RedisCluster


@pytest.fixture
def client(request: pytest.FixtureRequest) -> Iterator[Client]:
    """A client of the test's Redis: its `redis_target` when it takes one, else the session's server."""
    url = str(request.getfixturevalue("redis_target" if "redis_target" in request.fixturenames else "redis_url"))
    connection: Client = (redis.RedisCluster.from_url(cluster_node_urls(url)[0], decode_responses=True)
                          if is_cluster_url(url) else redis.Redis.from_url(url, decode_responses=True))
    yield connection
    connection.close()


@pytest.fixture
def books(mongo_url: str, mongo_database: str) -> Iterator[pymongo.collection.Collection[dict[str, object]]]:
    mongo: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(mongo_url, tz_aware=True)
    yield mongo[mongo_database]["orderbooks"]
    mongo.drop_database(mongo_database)
    mongo.close()


def append(client: Client, stream: str, fields: dict[str, str]) -> None:
    # A comprehension takes redis-py's field type from context, where dict[str, str] is invariantly rejected.
    client.xadd(stream, {name: value for name, value in fields.items()})


def entry_ids(client: Client, stream: str) -> list[str]:
    return [str(entry_id) for entry_id, _fields in client.xrange(stream) or ()]


LEASE_MS = 600_000
"""Far longer than any test takes, so that the lease and the member are still there however slow the host."""


def make_system(client: Client, books: pymongo.collection.Collection[dict[str, object]], prefix: str) -> None:
    """XBTUSD healthy and owned; ETHUSD unowned with a stale book and a dead consumer; SOLUSD only in MongoDB."""
    keys = Keys(prefix)
    now = dt.datetime.now(dt.UTC)
    for sym in ("XBTUSD", "ETHUSD"):
        client.sadd(keys.symbols, sym)
        for seq in range(1, 6):
            append(client, keys.l2_stream(sym), encode_entry("{}", "orderBookL2", "update", "sess1", seq, 1))
            append(client, keys.ob10_stream(sym), encode_entry("{}", "orderBook10", "update", "sess1", seq, 1))
        client.xgroup_create(keys.l2_stream(sym), L2BUILDER_GROUP, id="0")
        client.xgroup_create(keys.ob10_stream(sym), TOP10_GROUP, id="0")
    append(client, keys.l2_stream("ETHUSD"), encode_gap("orderBookL2", "sess1", 6, 1, "disconnect"))

    client.xreadgroup(L2BUILDER_GROUP, "builder-a", {keys.l2_stream("XBTUSD"): ">"})
    client.xack(keys.l2_stream("XBTUSD"), L2BUILDER_GROUP, *entry_ids(client, keys.l2_stream("XBTUSD"))[:3])
    client.xreadgroup(TOP10_GROUP, "top10-a", {keys.ob10_stream("XBTUSD"): ">"}, count=5)
    client.xreadgroup(TOP10_GROUP, "top10-dead", {keys.ob10_stream("ETHUSD"): ">"}, count=2)
    client.set(keys.lease("XBTUSD"), "builder-a", px=LEASE_MS)
    client.set(keys.epoch("XBTUSD"), 7)
    client.set(keys.epoch("ETHUSD"), 2)
    seconds, micros = client.time()
    redis_now_ms = int(seconds) * 1000 + int(micros) // 1000
    client.zadd(keys.l2builder_members, {"builder-a": redis_now_ms + LEASE_MS, "builder-gone": redis_now_ms - 1000})
    last_ob10 = entry_ids(client, keys.ob10_stream("XBTUSD"))[-1]
    client.hset(keys.top10("XBTUSD"), mapping={
        "bids": "[[60000.5,100],[60000,300]]", "asks": "[[60001,200]]", "timestamp": "2026-01-01T00:00:00.000Z",
        "ts_us": "1", "stream_id": last_ob10, "recv_us": "1", "updated_us": str(redis_now_ms * 1000 - 2_000_000)})

    last_l2 = entry_ids(client, keys.l2_stream("XBTUSD"))[-1]
    books.update_one({"_id": "XBTUSD"}, {"$set": {
        "bids": [[60000.5, 100, 1], [60000.0, 300, 2]], "asks": [[60001.0, 200, 3]], "status": "live",
        "reason": None, "updated_at": now - dt.timedelta(seconds=3), "stream_id": last_l2, "epoch": 7, "seq": 5,
        "session": "sess1", "version": "00000000000000000007-x"}}, upsert=True)
    books.update_one({"_id": "ETHUSD"}, {"$set": {"bids": [], "asks": [], "status": "stale",
                                                  "reason": "gap: disconnect", "updated_at": now}}, upsert=True)
    books.update_one({"_id": "SOLUSD"}, {"$set": {"bids": [[150.0, 1, 9]], "asks": [], "status": "live",
                                                  "updated_at": now}}, upsert=True)


def test_collect_reads_streams_groups_owners_keys_and_books(
        client: Client, books: pymongo.collection.Collection[dict[str, object]], redis_target: str, mongo_url: str,
        mongo_database: str, key_prefix: str) -> None:
    started = time.monotonic()
    make_system(client, books, key_prefix)
    collector = Collector(redis_target, mongo_url, mongo_database, key_prefix)
    try:
        raw = collector.collect()
        time.sleep(0.05)
        snap = analyze(collector.collect(), raw, Thresholds(dead_idle_s=0.0))
    finally:
        collector.close()
    # Ages are at least what make_system set and at most that plus the time this test took (and a second
    # of clock granularity): bounds of this run, whatever the host's speed.
    took = time.monotonic() - started + 1.0
    assert snap.redis.ok and snap.mongo.ok
    assert [node.ok for node in snap.redis.nodes] == ([True] * 3 if is_cluster_url(redis_target) else [])
    by_symbol = {status.symbol: status for status in snap.symbols}
    assert list(by_symbol) == ["ETHUSD", "SOLUSD", "XBTUSD"]

    xbt = by_symbol["XBTUSD"]
    assert xbt.l2 is not None and xbt.ob10 is not None
    assert (xbt.l2.length, xbt.l2.entries_added, xbt.l2.last_session) == (5, 5, "sess1")
    assert xbt.l2.last_age_s is not None and xbt.l2.last_age_s < took
    assert xbt.l2.rate_per_s == 0.0
    l2_group = xbt.l2.group(L2BUILDER_GROUP)
    assert l2_group is not None and (l2_group.lag, l2_group.pending, l2_group.entries_read) == (0, 2, 5)
    assert [(c.name, c.pending) for c in l2_group.consumers] == [("builder-a", 2)]
    assert (xbt.owner.instance, xbt.owner.epoch) == ("builder-a", 7)
    assert xbt.owner.ttl_s is not None and 0 < xbt.owner.ttl_s <= LEASE_MS / 1000
    assert xbt.top10 is not None and xbt.top10.best_bid == (60000.5, 100.0) and xbt.top10.best_ask == (60001.0, 200.0)
    assert xbt.top10.age_s is not None and 1.5 < xbt.top10.age_s < 2 + took
    assert xbt.book is not None
    assert (xbt.book.status, xbt.book.bid_depth, xbt.book.ask_depth, xbt.book.epoch) == ("live", 2, 1, 7)
    assert xbt.book.best_bid == (60000.5, 100.0) and xbt.book.version == "00000000000000000007-x"
    assert xbt.book.age_s is not None and 2.5 < xbt.book.age_s < 3 + took

    eth = by_symbol["ETHUSD"]
    assert eth.owner.instance is None and eth.owner.epoch == 2
    assert eth.book is not None and (eth.book.status, eth.book.reason) == ("stale", "gap: disconnect")
    eth_top10 = eth.ob10.group(TOP10_GROUP) if eth.ob10 else None
    assert eth_top10 is not None and (eth_top10.lag, eth_top10.pending) == (3, 2)

    sol = by_symbol["SOLUSD"]
    assert sol.l2 is None and sol.ob10 is None and sol.book is not None and sol.book.bid_depth == 1

    assert snap.instances.ingest == ("sess1",)  # the session that wrote the newest entries
    assert snap.instances.l2builder == ("builder-a",)
    assert set(snap.instances.top10) == {"top10-a", "top10-dead"}
    problems = {(p.kind, p.symbol) for p in snap.problems}
    assert problems == {("no_owner", "ETHUSD"), ("book_stale", "ETHUSD"), ("dead_consumer", "ETHUSD"),
                        ("dead_consumer", "XBTUSD"), ("top10_missing", "ETHUSD")}

    console = Console(record=True, width=200)
    console.print(render_status(snap))
    text = console.export_text()
    assert "XBTUSD" in text and "epoch 7" in text and "live" in text and "book_stale" in text


def test_a_layout_2_book_shows_its_whole_depth_and_best_levels(
        books: pymongo.collection.Collection[dict[str, object]], redis_url: str, mongo_url: str,
        mongo_database: str, key_prefix: str) -> None:
    """`bids`/`asks` hold only the best levels: the depths come from the stored counts of the whole book."""
    state = SymbolState("DEEP", 5.0)
    rows = [{"symbol": "DEEP", "id": 100 + i, "side": "Buy", "size": 1 + i, "price": 100.0 - i} for i in range(40)]
    rows += [{"symbol": "DEEP", "id": 200 + i, "side": "Sell", "size": 2, "price": 101.0 + i} for i in range(30)]
    partial = orjson.dumps({"table": "orderBookL2", "action": "partial", "data": rows}).decode()
    state.feed(StreamEntry("1-1", partial, "orderBookL2", "partial", "s1", 1, 1_700_000_000_000_000, ""), now=0)
    document = book_document(state, 1, dt.datetime.now(dt.UTC), top_levels=5)
    books.insert_one({"_id": "DEEP", **document})
    collector = Collector(redis_url, mongo_url, mongo_database, key_prefix)
    try:
        book = {status.symbol: status for status in collector.collect().symbols}["DEEP"].book
    finally:
        collector.close()
    assert book is not None and (book.bid_depth, book.ask_depth) == (40, 30) and len(document["bids"]) == 5
    assert (book.best_bid, book.best_ask, book.status) == ((100.0, 1), (101.0, 2), "live")


def test_unreachable_servers_are_reported_not_raised(key_prefix: str) -> None:
    collector = Collector(f"redis://:hunter2@127.0.0.1:{free_port()}/0", f"mongodb://u:hunter2@127.0.0.1:{free_port()}",
                          "bitmex", key_prefix)
    try:
        snap = analyze(collector.collect(), None, Thresholds())
    finally:
        collector.close()
    assert not snap.redis.ok and not snap.mongo.ok
    assert [p.kind for p in snap.problems] == ["redis_unreachable", "mongo_unreachable"]
    assert b"hunter2" not in snap.to_json()


def status(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*bookstream_argv(), "status", *args], capture_output=True, timeout=60, env=env)


def test_status_json_document(client: Client, books: pymongo.collection.Collection[dict[str, object]],
                              service_env: dict[str, str], key_prefix: str) -> None:
    make_system(client, books, key_prefix)
    result = status("--json", env=service_env)
    assert result.returncode == 1, result.stderr  # problems were found
    document = orjson.loads(result.stdout)
    assert document["schema"] == "bookstream.status/1" and document["source"] == "settings"
    assert document["key_prefix"] == key_prefix
    assert [s["symbol"] for s in document["symbols"]] == ["ETHUSD", "SOLUSD", "XBTUSD"]
    xbt = document["symbols"][2]
    assert xbt["owner"]["instance"] == "builder-a" and xbt["book"]["status"] == "live"
    assert [g["name"] for g in xbt["l2"]["groups"]] == [L2BUILDER_GROUP]
    assert {p["kind"] for p in document["problems"]} >= {"no_owner", "book_stale"}

    table = status(env=dict(service_env, COLUMNS="200"))
    assert table.returncode == 1
    assert b"epoch 7" in table.stdout and b"no_owner" in table.stdout


def test_status_masks_passwords_and_exits_1_when_redis_is_down(tmp_path: Path) -> None:
    env = base_env(REDIS_URL=f"redis://:hunter2@127.0.0.1:{free_port()}/0",
                   MONGO_CONNECTION_STRING=f"mongodb://user:hunter2@127.0.0.1:{free_port()}",
                   XDG_RUNTIME_DIR=str(tmp_path))
    result = status("--json", env=env)
    assert result.returncode == 1
    document = orjson.loads(result.stdout)
    assert document["redis"]["ok"] is False and document["mongo"]["ok"] is False
    assert document["redis"]["url"].startswith("redis://:***@")
    assert b"hunter2" not in result.stdout + result.stderr


def test_status_finds_the_stack_of_bookstream_dev(client: Client, redis_url: str, mongo_url: str,
                                                  mongo_database: str, key_prefix: str, tmp_path: Path) -> None:
    client.sadd(Keys(key_prefix).symbols, "XBTUSD")
    append(client, Keys(key_prefix).l2_stream("XBTUSD"), encode_entry("{}", "orderBookL2", "partial", "s", 1, 1))
    state = DevState(pid=os.getpid(), redis_url=redis_url, mongo_url=mongo_url, key_prefix=key_prefix,
                     mongo_database=mongo_database, data_dir=str(tmp_path))
    write_state(tmp_path / "bookstream" / "dev.json", state)
    env = base_env(XDG_RUNTIME_DIR=str(tmp_path))
    env.pop("MONGO_DATABASE", None)

    found = orjson.loads(status("--json", env=env).stdout)
    assert (found["source"], found["key_prefix"]) == ("dev", key_prefix)
    assert [s["symbol"] for s in found["symbols"]] == ["XBTUSD"]

    # Any location setting given means "that one", not the dev stack.
    chosen = orjson.loads(status("--json", "--key-prefix", "elsewhere", env=env).stdout)
    assert (chosen["source"], chosen["key_prefix"]) == ("settings", "elsewhere")

    # A state whose process is gone is ignored.
    gone = subprocess.Popen(["true"])
    gone.wait()
    write_state(tmp_path / "bookstream" / "dev.json", replace(state, pid=gone.pid))
    assert orjson.loads(status("--json", env=env).stdout)["source"] == "settings"


def redis_now_ms(client: Client) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def test_status_tells_a_quiet_market_from_a_lost_ingest(client: Client, service_env: dict[str, str],
                                                        key_prefix: str) -> None:
    keys = Keys(key_prefix)
    client.sadd(keys.symbols, "XBTUSD")
    quiet_since = redis_now_ms(client) - 60_000  # a minute without a change, far beyond HEALTH_STALE_AFTER
    client.xadd(keys.l2_stream("XBTUSD"), {name: value for name, value in encode_entry(
        "{}", "orderBookL2", "partial", "quiet1", 1, 1).items()}, id=f"{quiet_since}-0")
    client.set(keys.ingest_alive("quiet1"), "ingest-a", px=60_000)

    def lost() -> list[dict[str, object]]:
        document = orjson.loads(status("--json", env=service_env).stdout)
        return [p for p in document["problems"] if p["kind"] == "ingest_lost"]

    document = orjson.loads(status("--json", env=service_env).stdout)
    assert document["symbols"][0]["l2"]["last_session_alive"] is True
    assert "quiet1" in document["instances"]["ingest"]
    assert lost() == []  # idle, but its session is alive: a quiet market, not a fault

    client.delete(keys.ingest_alive("quiet1"))
    [problem] = lost()
    assert (problem["kind"], problem["severity"], problem["symbol"], problem["subject"]) == (
        "ingest_lost", "error", "XBTUSD", "l2")
    assert "quiet1" in str(problem["detail"])


def test_status_warns_of_an_evicting_redis(redis_server: RedisServer, mongo_url: str, key_prefix: str,
                                           tmp_path: Path) -> None:
    env = base_env(REDIS_URL=redis_server.url, MONGO_CONNECTION_STRING=mongo_url, KEY_PREFIX=key_prefix,
                   XDG_RUNTIME_DIR=str(tmp_path))
    admin = redis.Redis.from_url(redis_server.url)
    try:
        admin.config_set("maxmemory-policy", "allkeys-lru")
        result = status("--json", env=env)
        assert result.returncode == 1
        document = orjson.loads(result.stdout)
        assert document["redis"]["evicting_policy"] == "allkeys-lru"
        assert [p["kind"] for p in document["problems"]] == ["redis_evicting"]
        assert b"redis_evicting" in status(env=env).stdout

        admin.config_set("maxmemory-policy", "noeviction")
        result = status("--json", env=env)
        assert (result.returncode, orjson.loads(result.stdout)["redis"]["evicting_policy"]) == (0, None)
    finally:
        admin.close()


def test_status_prints_no_terminal_escape_and_no_name_that_is_not_a_symbol(
        client: Client, books: pymongo.collection.Collection[dict[str, object]], service_env: dict[str, str],
        key_prefix: str) -> None:
    keys = Keys(key_prefix)
    client.sadd(keys.symbols, "XBTUSD", "\x1b[31mEVIL")
    append(client, keys.l2_stream("XBTUSD"), encode_entry("{}", "orderBookL2", "partial", "s\x1b[2Jx", 1, 1))
    append(client, f"{key_prefix}:l2:{{bad\x1b]0;title\x07}}", encode_entry("{}", "orderBookL2", "partial", "s", 1, 1))
    books.insert_many([{"_id": "XBTUSD", "bids": [], "asks": [], "status": "stale", "reason": "gap\r\x1b[1A\x9bfake",
                        "updated_at": dt.datetime.now(dt.UTC)},
                       {"_id": "\x1b]8;;http://x\x07", "bids": [], "asks": [], "status": "live"}])

    table = status(env=dict(service_env, COLUMNS="250"))
    assert table.returncode == 1
    for raw in (b"\x1b", b"\x07", b"\r", "\x9b".encode()):
        assert raw not in table.stdout
    assert b"ingest sessions: s\\x1b[2Jx" in table.stdout and b"gap\\r\\x1b[1A\\x9bfake" in table.stdout
    assert b"EVIL" not in table.stdout and b"title" not in table.stdout

    document = orjson.loads(status("--json", env=service_env).stdout)
    assert [s["symbol"] for s in document["symbols"]] == ["XBTUSD"]
    assert document["ignored_names"] == 3
    assert "invalid_symbol" in {p["kind"] for p in document["problems"]}
    # JSON keeps the data exact, escaped the JSON way.
    assert document["symbols"][0]["book"]["reason"] == "gap\r\x1b[1A\x9bfake"


@pytest.mark.parametrize("mongo", [
    "mongodb://u:hunter2@127.0.0.1:{port},127.0.0.1:{port2}/?replicaSet=rs&authSource=admin",
    "mongodb+srv://u:hunter2@cluster0.does-not-exist.invalid/bitmex?retryWrites=true",
])
def test_status_accepts_the_mongodb_uris_of_real_deployments(mongo: str, tmp_path: Path) -> None:
    env = base_env(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0?password=hunter2",
                   MONGO_CONNECTION_STRING=mongo.format(port=free_port(), port2=free_port()),
                   XDG_RUNTIME_DIR=str(tmp_path))
    result = status("--json", env=env)
    assert result.returncode == 1, result.stderr  # unreachable servers, not a configuration error
    document = orjson.loads(result.stdout)
    assert document["mongo"]["ok"] is False and document["mongo"]["url"].startswith(mongo.split("@")[0][:-7])
    assert document["redis"]["url"].endswith("?password=***")
    table = status(env=env)
    assert b"hunter2" not in result.stdout + result.stderr + table.stdout + table.stderr
    assert b"Traceback" not in result.stderr + table.stderr


def test_on_a_cluster_every_primary_is_walked_and_a_dead_one_is_named(
        redis_cluster: RedisClusterServers, mongo_url: str, mongo_database: str, key_prefix: str) -> None:
    keys = Keys(key_prefix)
    symbols = [f"S{number}" for number in range(12)]
    primaries = redis_cluster.primaries()
    assert {redis_cluster.owner(key_slot(sym)).port for sym in symbols} == {node.port for node in primaries}
    writer = redis.RedisCluster.from_url(cluster_node_urls(redis_cluster.url)[0])
    for sym in symbols:  # streams only: the symbol set does not name them, the walk must find them
        append(writer, keys.l2_stream(sym), encode_entry("{}", "orderBookL2", "update", "sess1", 1, 1))
    writer.close()
    collector = Collector(redis_cluster.url, mongo_url, mongo_database, key_prefix)
    try:
        snap = analyze(collector.collect(), None, Thresholds())
        assert [status.symbol for status in snap.symbols] == sorted(symbols)
        assert all(status.l2 is not None and status.l2.length == 1 for status in snap.symbols)
        assert sorted(node.address for node in snap.redis.nodes) == sorted(f"127.0.0.1:{node.port}"
                                                                           for node in primaries)

        victim = redis_cluster.owner(key_slot("S0"))
        victim.kill()
        try:
            down = analyze(collector.collect(), None, Thresholds())
        finally:
            victim.start()
            redis_cluster.wait_ok()
    finally:
        collector.close()
    assert not down.redis.ok
    assert [node.address for node in down.redis.nodes if not node.ok] == [f"127.0.0.1:{victim.port}"]
    [detail] = [problem.detail for problem in down.problems if problem.kind == "redis_node_unreachable"]
    assert detail.startswith(f"cluster primary 127.0.0.1:{victim.port}: ")
