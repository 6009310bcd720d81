"""The test harness itself: real servers answer, and the health server serves both endpoints."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import pymongo
import redis
from prometheus_client import CollectorRegistry, Counter

from services.runtime.health import HealthCheck, HealthServer
from tests.harness import RedisServer


def test_redis_server_answers(redis_url: str, key_prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.xadd(f"{key_prefix}:s", {"a": "1"})
    assert client.xlen(f"{key_prefix}:s") == 1
    client.delete(f"{key_prefix}:s")


def test_private_redis_keeps_streams_across_restart(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.xadd("s", {"a": "1"})
    redis_server.restart()
    assert redis.Redis.from_url(redis_server.url).xlen("s") == 1


def test_mongo_protocol_server_answers(mongo_url: str, mongo_database: str) -> None:
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(mongo_url, serverSelectionTimeoutMS=5000)
    collection = client[mongo_database]["orderbooks"]
    collection.update_one({"_id": "XBTUSD"}, {"$set": {"status": "live"}}, upsert=True)
    assert collection.find_one({"_id": "XBTUSD"}) == {"_id": "XBTUSD", "status": "live"}
    client.drop_database(mongo_database)
    client.close()


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=3) as reply:
            return int(reply.status), reply.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


async def fetch(check: HealthCheck, registry: CollectorRegistry, *paths: str) -> list[tuple[int, bytes]]:
    """GET each path from a HealthServer running `check`, in order."""
    server = HealthServer("127.0.0.1", 0, check, registry)
    await server.start()
    try:
        return [await asyncio.to_thread(http_get, f"http://127.0.0.1:{server.port}{path}") for path in paths]
    finally:
        await server.close()


def test_health_server_serves_healthz_and_metrics() -> None:
    registry = CollectorRegistry()
    Counter("bookstream_probe", "probe counter", registry=registry).inc(3)
    ok, metrics, missing = asyncio.run(fetch(lambda: (True, {}), registry, "/healthz", "/metrics", "/nope"))
    assert ok[0] == 200
    assert b"bookstream_probe_total 3.0" in metrics[1]
    assert missing[0] == 404
    (failing,) = asyncio.run(fetch(lambda: (False, {"why": "probe"}), registry, "/healthz"))
    assert failing[0] == 503 and b'"why":"probe"' in failing[1]


def test_a_health_check_that_raises_reports_unhealthy() -> None:
    def broken_check() -> tuple[bool, dict[str, object]]:
        raise RuntimeError("probe exploded")

    ((status, body),) = asyncio.run(fetch(broken_check, CollectorRegistry(), "/healthz"))
    assert status == 503 and b"probe exploded" in body
