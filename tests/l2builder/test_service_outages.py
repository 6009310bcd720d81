"""MongoDB and Redis restarted under a running `bookstream l2builder`: it keeps its books, stops
acknowledging, reports itself unhealthy, and catches up when the server is back, without a restart."""

from __future__ import annotations

from pathlib import Path

from testkit.harness import MongoServer, RedisServer, wait_until
from testkit.l2feeds import Books, Feed, capture_frames, log_values, reconstruct, wait_settled
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
