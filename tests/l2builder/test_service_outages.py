"""MongoDB and Redis restarted under a running `bookstream l2builder`: it keeps its books, stops
acknowledging, reports itself unhealthy, and catches up when the server is back, without a restart."""

from __future__ import annotations

from pathlib import Path

import orjson
import redis

from testkit.harness import MongoServer, RedisServer, wait_until
from testkit.l2feeds import Books, Feed, capture_frames, log_values, make_frame, reconstruct, wait_settled
from tests.conftest import RunService

CAPTURE = "2021-04-17.capture"


def test_mongodb_restart_mid_run(
        captures_dir: Path, run_service: RunService, service_env: dict[str, str], redis_url: str,
        key_prefix: str, mongo_database: str, mongo_server: MongoServer) -> None:
    frames = capture_frames(captures_dir / CAPTURE)
    expected, applied = reconstruct(frames)
    feed, books = Feed(redis_url, key_prefix), Books(mongo_server.url, mongo_database)
    env = {**service_env, "MONGO_CONNECTION_STRING": mongo_server.url, "HEALTH_STALE_AFTER": "1"}
    feed.frames(frames[:100])
    builder = run_service("l2builder", env=env, name="builder")
    publisher = feed.paced(frames[100:], seconds=5)

    wait_until(lambda: publisher.published > 0 and len(books.all()) > 0, 30, "books written while publishing")
    mongo_server.stop()
    wait_until(lambda: builder.health()[0] == 503, 10, "/healthz failing while MongoDB is down")
    pending_while_down = sum(feed.pending(symbol) for symbol in feed.last_id)
    mongo_server.start()
    publisher.finish()
    wait_settled(feed, books, timeout=40)

    assert pending_while_down > 0  # nothing was acknowledged while nothing could be written
    assert builder.alive() and builder.health()[0] == 200
    assert books.levels() == expected
    assert {doc["status"] for doc in books.all().values()} == {"live"}
    assert builder.metric("bookstream_l2builder_frames_applied_total") == sum(applied)  # kept in memory
    assert builder.metric("bookstream_l2builder_flush_errors_total") >= 1
    assert list(log_values(builder, "mongo_unavailable", "error")) and "event=mongo_recovered" in builder.logs()


def test_redis_restarts_mid_run(
        captures_dir: Path, run_service: RunService, service_env: dict[str, str], mongo_url: str,
        key_prefix: str, mongo_database: str, redis_server: RedisServer) -> None:
    frames = capture_frames(captures_dir / CAPTURE)
    expected, applied = reconstruct(frames)
    feed, books = Feed(redis_server.url, key_prefix), Books(mongo_url, mongo_database)
    # An instance trusts a lease for 3/4 of LEASE_TTL after its renewal: 7.5 s here, ample for the short outage.
    env = {**service_env, "REDIS_URL": redis_server.url, "HEALTH_STALE_AFTER": "0.6", "LEASE_TTL": "10"}
    third = len(frames) // 3
    feed.frames(frames[:third])
    builder = run_service("l2builder", env=env, name="builder")

    # Shorter than the lease: the books stay in memory and nothing is applied twice.
    wait_until(lambda: builder.metric("bookstream_l2builder_frames_applied_total") > 0, 30, "frames being applied")
    redis_server.stop()
    wait_until(lambda: builder.health()[0] == 503, 10, "/healthz failing while Redis is down")
    redis_server.start()
    feed.frames(frames[third:2 * third])
    wait_settled(feed, books)
    assert builder.metric("bookstream_l2builder_frames_applied_total") == sum(applied[:2 * third])
    assert "lease_lost" not in builder.logs()

    # Longer than the lease: the symbols are dropped at once, then taken again and restored from MongoDB.
    redis_server.stop()
    wait_until(lambda: set(log_values(builder, "lease_lost", "symbol")) == set(feed.last_id), 30,
               "every lease given up while Redis is down")
    redis_server.start()
    feed.frames(frames[2 * third:])
    wait_settled(feed, books)
    assert builder.alive() and builder.health()[0] == 200
    assert set(log_values(builder, "lease_lost", "symbol")) == set(feed.last_id)
    assert books.levels() == expected
    documents = books.all()
    assert {doc["status"] for doc in documents.values()} == {"live"}
    later = {frame.symbol for frame in frames[2 * third:]}
    assert {symbol: documents[symbol]["epoch"] for symbol in later} == dict.fromkeys(later, 2)
    assert "event=redis_recovered" in builder.logs()


def test_health_fails_when_only_the_reads_fail(
        run_service: RunService, service_env: dict[str, str], redis_url: str, key_prefix: str) -> None:
    """The reads have connections of their own: the ownership loop reaching Redis must not hide that they fail."""
    admin = redis.Redis.from_url(redis_url)
    user = f"{key_prefix}-noread"
    admin.acl_setuser(user, enabled=True, passwords=["+pw"], keys=[f"{key_prefix}:*"],
                      commands=["+@all", "-xreadgroup"])
    feed = Feed(redis_url, key_prefix)
    feed.frames([make_frame(symbol, "partial", [(1, "Sell", 10, 101.0), (2, "Buy", 20, 100.0)])
                 for symbol in ("XBTUSD", "ETHUSD")])
    netloc = redis_url.split("//", 1)[1].rpartition("@")[2]
    env = {**service_env, "REDIS_URL": f"redis://{user}:pw@{netloc}", "HEALTH_STALE_AFTER": "1",
           "INSTANCE_NAME": "blind"}
    try:
        builder = run_service("l2builder", env=env, name="blind", healthy=False)
        builder.wait_log("event=restored")
        wait_until(lambda: builder.health()[0] == 503, 15, "/healthz to fail while every read is refused")
        _, body = builder.health()
        assert "NOPERM" in orjson.loads(body)["last_error"]
        assert builder.metric("bookstream_l2builder_redis_errors_total", 'operation="read"') > 0
        assert set(feed.lease_holders().values()) == {env["INSTANCE_NAME"]}  # the ownership loop works
    finally:
        admin.acl_deluser(user)
