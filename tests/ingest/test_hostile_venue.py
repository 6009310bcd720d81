"""ingest against a hostile venue (tests/venue.py) and a Redis that loses or refuses things, through the CLI.

Each test ends with every stream either exact or carrying a gap marker where something went missing, and
ingest itself recovered (or, where it cannot, saying so: /healthz, the log, the exit code).
"""

from __future__ import annotations

import urllib.parse
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis

from services.core.bookdoc import book_levels
from services.core.keys import INGEST_ALIVE_TTL_MS, Keys
from services.core.liveness import IngestLiveness
from testkit.harness import MongoServer, RedisServer, ServiceProcess, free_port, wait_until
from testkit.l2feeds import Books
from tests.conftest import RunService
from tests.ingest.streams import health_detail, l2, read_stream, sessions_of
from tests.status.test_status_stack import status_json
from tests.venue import Venue

Row = tuple[int, str, int, float]


def l2_frame(symbol: str, action: str, rows: list[Row], with_filter: bool = True) -> str:
    data = [{"symbol": symbol, "id": ident, "side": side, "size": size, "price": price}
            for ident, side, size, price in rows]
    message: dict[str, Any] = {"table": "orderBookL2", "action": action, "data": data}
    if with_filter:
        message["filter"] = {"symbol": symbol}
    return orjson.dumps(message).decode()


def ob10_frame(symbol: str) -> str:
    return orjson.dumps({"table": "orderBook10", "action": "update", "data": [
        {"symbol": symbol, "bids": [[100.0, 20]], "asks": [[101.0, 10]],
         "timestamp": "2026-01-01T00:00:00.000Z"}]}).decode()


BOOK: list[Row] = [(1, "Sell", 10, 101.0), (2, "Buy", 20, 100.0), (3, "Buy", 5, 99.5)]


def partial_on_subscribe(venue: Venue, symbols: tuple[str, ...]) -> None:
    """Each subscription of a symbol's L2 topic is answered with its partial, as BitMEX does."""
    topics = {f"orderBookL2:{symbol}": symbol for symbol in symbols}
    venue.on_subscribe = lambda topic: [l2_frame(topics[topic], "partial", BOOK)] if topic in topics else []


@pytest.fixture
def venue() -> Iterator[Venue]:
    server = Venue().start()
    yield server
    server.stop()


def start_ingest(run_service: RunService, env: dict[str, str], venue: Venue, symbols: str,
                 healthy: bool = True, **settings: str) -> ServiceProcess:
    """ingest on `venue`; with `healthy`, returned once its session has every topic answered."""
    ingest = run_service("ingest", env=env | {"BITMEX_WS_URL": venue.url, "SYMBOLS": symbols, **settings},
                         name="ingest", healthy=healthy)
    if healthy:
        def settled() -> bool:
            connection = health_detail(ingest).get("connection", {})
            return "session" in connection and not connection["topics"]["pending"]

        wait_until(settled, 10, "ingest connected, every topic answered")
    return ingest


def actions(entries: list[Any]) -> list[str]:
    return [f"gap:{entry.reason}" if entry.is_gap else entry.action for entry in entries]


def test_a_malformed_l2_frame_becomes_a_gap_marker_between_its_neighbours(
        venue: Venue, run_service: RunService, service_env: dict[str, str], redis_url: str, key_prefix: str) -> None:
    partial_on_subscribe(venue, ("XBTUSD", "ETHUSD"))
    ingest = start_ingest(run_service, service_env, venue, "XBTUSD,ETHUSD")
    wait_until(lambda: len(l2(redis_url, key_prefix, "ETHUSD")) == 1 == len(l2(redis_url, key_prefix, "XBTUSD")),
               10, "both partials")
    float_size = l2_frame("XBTUSD", "update", [(2, "Buy", 20, 100.0)]).replace('"size":20', '"size":20.5')
    lowercase_side = l2_frame("ETHUSD", "update", [(2, "Buy", 21, 100.0)]).replace('"Buy"', '"buy"')
    unknown_action = l2_frame("ETHUSD", "upsert", [(2, "Buy", 22, 100.0)])
    cut_short = l2_frame("XBTUSD", "update", [(2, "Buy", 23, 100.0)], with_filter=False)[:60]
    venue.send(l2_frame("XBTUSD", "update", [(2, "Buy", 30, 100.0)]),  # A
               float_size,  # B: XBTUSD's, by its filter and rows
               l2_frame("XBTUSD", "update", [(2, "Buy", 31, 100.0)]),  # C
               lowercase_side,  # ETHUSD's
               l2_frame("ETHUSD", "update", [(2, "Buy", 32, 100.0)]),
               cut_short,  # names a symbol in its visible part only: it may have held others, every stream
               ob10_frame("XBTUSD")[:40],  # the other book table: a gap on each ob10 stream, none on L2
               unknown_action, b"\xff\xfe not text",  # right after a gap: nothing more to say there
               l2_frame("ETHUSD", "update", [(2, "Buy", 33, 100.0)]))
    wait_until(lambda: len(l2(redis_url, key_prefix, "ETHUSD")) == 5, 10, "ETHUSD's last update")

    [xbt] = sessions_of(l2(redis_url, key_prefix, "XBTUSD"))
    assert actions(xbt) == ["partial", "update", "gap:malformed", "update", "gap:malformed"]
    assert [orjson.loads(entry.frame)["data"][0]["size"] for entry in (xbt[1], xbt[3])] == [30, 31]
    [eth] = sessions_of(l2(redis_url, key_prefix, "ETHUSD"))
    assert actions(eth) == ["partial", "gap:malformed", "update", "gap:malformed", "update"]
    for symbol in ("XBTUSD", "ETHUSD"):
        [ob10] = sessions_of(read_stream(redis_url, Keys(key_prefix).ob10_stream(symbol)))
        assert actions(ob10) == ["gap:malformed"], "one mark, whatever came after"
    assert ingest.metric("bookstream_ingest_malformed_frames_total") == 6
    assert ingest.metric("bookstream_ingest_gap_markers_total", 'reason="malformed"') == 6
    logged = [line for line in ingest.logs().splitlines() if "event=malformed_frame" in line]
    assert len(logged) == 5, "rate-limited to a burst of five lines"
    assert "symbols=XBTUSD" in logged[0] and "gap_markers=1" in logged[0]
    assert "gap_markers=0" in logged[-1]


def test_a_malformed_frame_makes_the_mongodb_book_stale_until_a_fresh_partial(
        venue: Venue, mongo_server: MongoServer, run_service: RunService, service_env: dict[str, str],
        key_prefix: str, mongo_database: str) -> None:
    truth = {ident: (side, size, price) for ident, side, size, price in BOOK}

    def book_rows() -> list[Row]:
        return [(ident, side, size, price) for ident, (side, size, price) in sorted(truth.items())]

    subscriptions = []

    def on_subscribe(topic: str) -> list[str]:
        subscriptions.append(topic)
        # The first partial comes by itself; the resync's partial only once the test has seen the stale book.
        return [l2_frame("XBTUSD", "partial", book_rows())] if topic == "orderBookL2:XBTUSD" and len(
            [t for t in subscriptions if t == topic]) == 1 else []

    venue.on_subscribe = on_subscribe
    env = service_env | {"MONGO_CONNECTION_STRING": mongo_server.url, "RESUBSCRIBE_INTERVAL": "1"}
    start_ingest(run_service, env, venue, "XBTUSD")
    run_service("l2builder", env=env | {"INSTANCE_NAME": "builder-hostile"}, name="l2builder")
    books = Books(mongo_server.url, mongo_database)

    def expected() -> dict[str, list[list[Any]]]:
        bids = sorted(([price, size, ident] for ident, (side, size, price) in truth.items() if side == "Buy"),
                      key=lambda level: -level[0])
        asks = sorted(([price, size, ident] for ident, (side, size, price) in truth.items() if side == "Sell"),
                      key=lambda level: level[0])
        return {"bids": bids, "asks": asks}

    def document() -> dict[str, Any]:
        return books.get("XBTUSD") or {}

    wait_until(lambda: document().get("status") == "live", 20, "the book live from the first partial")
    assert book_levels(document()) == expected()

    truth[2] = ("Buy", 30, 100.0)  # A
    truth[3] = ("Buy", 7, 99.5)  # B happened at the venue, but reaches ingest broken
    truth[1] = ("Sell", 11, 101.0)  # C
    venue.send(l2_frame("XBTUSD", "update", [(2, "Buy", 30, 100.0)]),
               l2_frame("XBTUSD", "update", [(3, "Buy", 7, 99.5)]).replace('"size":7', '"size":7.0'),
               l2_frame("XBTUSD", "update", [(1, "Sell", 11, 101.0)]))
    wait_until(lambda: document().get("status") == "stale", 10, "the book stale after the malformed frame")
    assert "malformed" in document()["reason"]
    assert document()["status"] == "stale", "never live without B"

    wait_until(lambda: venue.subscribed("orderBookL2:XBTUSD") == 2, 15, "the resync's subscribe")
    venue.send(l2_frame("XBTUSD", "partial", book_rows()))
    wait_until(lambda: document().get("status") == "live", 15, "the book live again after the fresh partial")
    assert book_levels(document()) == expected()


def test_the_liveness_key_lives_while_connected_and_expires_after_kill_9(
        venue: Venue, run_service: RunService, service_env: dict[str, str], redis_url: str, key_prefix: str) -> None:
    partial_on_subscribe(venue, ("XBTUSD",))
    ingest = start_ingest(run_service, service_env, venue, "XBTUSD", INSTANCE_NAME="ingest-alive")
    session = health_detail(ingest)["connection"]["session"]
    key = Keys(key_prefix).ingest_alive(session)
    client = redis.Redis.from_url(redis_url)
    wait_until(lambda: said_by(client.get(key)) == "ingest-alive", 20, "the liveness key")
    assert 0 < int(client.pttl(key)) <= INGEST_ALIVE_TTL_MS
    assert health_detail(ingest)["liveness"]["key"] == key
    # Renewal, seen as the key's TTL going back up, never as a key that merely has yet to expire.
    last, renewals = INGEST_ALIVE_TTL_MS, 0

    def renewed_twice() -> bool:
        nonlocal last, renewals
        ttl = int(client.pttl(key))
        assert ttl > 0, "the liveness key expired while ingest was connected"
        if ttl > last + 100:
            renewals += 1
        last = ttl
        return renewals >= 2

    wait_until(renewed_twice, 30, "two renewals of the liveness key")

    ingest.kill()
    wait_until(lambda: not client.exists(key), INGEST_ALIVE_TTL_MS / 1000 + 3, "the key expiring after kill -9")
    client.close()


def test_a_silent_venue_stops_the_liveness_renewal(
        venue: Venue, run_service: RunService, service_env: dict[str, str], redis_url: str, key_prefix: str) -> None:
    partial_on_subscribe(venue, ("XBTUSD",))
    ingest = start_ingest(run_service, service_env, venue, "XBTUSD")
    session = health_detail(ingest)["connection"]["session"]
    key = Keys(key_prefix).ingest_alive(session)
    client = redis.Redis.from_url(redis_url)
    wait_until(lambda: bool(client.exists(key)), 20, "the liveness key")
    venue.silent = True  # no data, no pong; the TCP connection stays up
    wait_until(lambda: not client.exists(key), 25, "the liveness key of the silent session expiring")
    assert venue.pings >= 1
    assert f"event=liveness_withheld session={session} why=venue_silent" in ingest.logs()
    ingest.wait_log("event=heartbeat_timeout")
    first = sessions_of(l2(redis_url, key_prefix, "XBTUSD"))[0]
    assert (first[0].session, actions(first)[-1]) == (session, "gap:heartbeat_timeout")
    client.close()


def test_after_flushall_the_symbols_come_back_and_each_book_stream_gets_a_fresh_partial(
        redis_server: RedisServer, venue: Venue, run_service: RunService, service_env: dict[str, str],
        key_prefix: str) -> None:
    symbols = ("XBTUSD", "ETHUSD")
    partial_on_subscribe(venue, symbols)
    l2_partials = venue.on_subscribe
    venue.on_subscribe = lambda topic: [ob10_frame("XBTUSD")] if topic == "orderBook10:XBTUSD" else l2_partials(topic)
    ingest = start_ingest(run_service, service_env | {"REDIS_URL": redis_server.url}, venue, ",".join(symbols))
    keys = Keys(key_prefix)
    client = redis.Redis.from_url(redis_server.url)
    wait_until(lambda: client.smembers(keys.symbols) == {b"XBTUSD", b"ETHUSD"}, 10, "the symbols announced")
    venue.send(l2_frame("XBTUSD", "update", [(2, "Buy", 30, 100.0)]))
    wait_until(lambda: len(l2(redis_server.url, key_prefix, "XBTUSD")) == 2, 10, "the update")
    assert actions(read_stream(redis_server.url, keys.ob10_stream("XBTUSD"))) == ["update"]

    client.flushall()
    wait_until(lambda: client.smembers(keys.symbols) == {b"XBTUSD", b"ETHUSD"}, 10, "the symbols re-announced")
    wait_until(lambda: all("partial" in actions(l2(redis_server.url, key_prefix, symbol)) for symbol in symbols),
               10, "a fresh partial of each symbol")
    for symbol in symbols:
        assert actions(l2(redis_server.url, key_prefix, symbol)) == ["gap:resubscribe", "partial"]
    # The ob10 stream ingest had written is resubscribed too; ETHUSD's, never written, was not lost.
    wait_until(lambda: len(read_stream(redis_server.url, keys.ob10_stream("XBTUSD"))) == 2, 10, "a fresh snapshot")
    assert actions(read_stream(redis_server.url, keys.ob10_stream("XBTUSD"))) == ["gap:resubscribe", "update"]
    assert (venue.subscribed("orderBook10:XBTUSD"), venue.subscribed("orderBook10:ETHUSD")) == (2, 1)
    session = health_detail(ingest)["connection"]["session"]
    wait_until(lambda: bool(client.exists(keys.ingest_alive(session))), 20, "the liveness key back")
    assert ingest.metric("bookstream_ingest_redis_lost_total", 'what="stream"') >= 2
    assert ingest.metric("bookstream_ingest_redis_lost_total", 'what="symbols"') == 2
    assert "event=stream_lost" in ingest.logs() and "event=symbols_reannounced" in ingest.logs()
    client.close()


def test_symbols_nobody_subscribed_are_counted_and_never_published(
        venue: Venue, run_service: RunService, service_env: dict[str, str], redis_url: str, key_prefix: str) -> None:
    partial_on_subscribe(venue, ("XBTUSD",))
    ingest = start_ingest(run_service, service_env, venue, "XBTUSD")
    strangers = [f"FOO{n:03d}" for n in range(100)]
    venue.send(*(l2_frame(symbol, "partial", BOOK) for symbol in strangers), *(ob10_frame(s) for s in strangers))
    mixed = orjson.loads(l2_frame("XBTUSD", "update", [(2, "Buy", 31, 100.0)], with_filter=False))
    mixed["data"].append({**mixed["data"][0], "symbol": "BAR"})
    venue.send(orjson.dumps(mixed), l2_frame("XBTUSD", "update", [(2, "Buy", 32, 100.0)]))
    wait_until(lambda: len(l2(redis_url, key_prefix, "XBTUSD")) == 3, 10, "XBTUSD's updates")

    [run] = sessions_of(l2(redis_url, key_prefix, "XBTUSD"))
    assert [orjson.loads(entry.frame)["data"] for entry in run[1:2]] == [mixed["data"][:1]]
    client = redis.Redis.from_url(redis_url)
    assert sorted(key.decode() for key in client.scan_iter(f"{key_prefix}:*")
                  if b"{" in key) == sorted([f"{key_prefix}:l2:{{XBTUSD}}"])
    assert client.smembers(Keys(key_prefix).symbols) == {b"XBTUSD"}
    client.close()
    assert ingest.metric("bookstream_ingest_unsubscribed_frames_total") == 201
    assert 1 <= ingest.logs().count("event=unsubscribed_symbol") <= 5


def test_retry_after_is_capped_by_retry_after_max(
        venue: Venue, run_service: RunService, service_env: dict[str, str], redis_url: str, key_prefix: str) -> None:
    venue.http_429 = (1, "1000000000000")
    partial_on_subscribe(venue, ("XBTUSD",))
    ingest = start_ingest(run_service, service_env, venue, "XBTUSD", healthy=False, RETRY_AFTER_MAX="1")
    venue.wait_connections(1, timeout=15)
    logs = ingest.logs()
    assert "event=connect_rate_limited status=429 retry_after=1000000000000.0 retry_after_max=1.0" in logs
    # The same cap holds for a rate-limit error frame in a session.
    venue.send(orjson.dumps({"status": 429, "error": "Rate limit exceeded", "meta": {"retryAfter": 10 ** 12},
                             "request": {"op": "subscribe"}}))
    venue.drop()
    venue.wait_connections(2, timeout=15)
    assert "event=session_rate_limited retry_after=1000000000000.0 retry_after_max=1.0" in ingest.logs()


def test_a_fence_refused_by_the_acl_is_said_once_at_start_up(
        venue: Venue, run_service: RunService, service_env: dict[str, str], redis_url: str) -> None:
    admin = redis.Redis.from_url(redis_url)
    user, password = f"ingest-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    admin.acl_setuser(user, enabled=True, passwords=[f"+{password}"], keys=["*"], channels=["*"],
                      commands=["+@all", "-client|kill"])
    try:
        parts = urllib.parse.urlsplit(redis_url)
        url = parts._replace(netloc=f"{user}:{password}@{parts.hostname}:{parts.port}").geturl()
        partial_on_subscribe(venue, ("XBTUSD",))
        ingest = start_ingest(run_service, service_env | {"REDIS_URL": url}, venue, "XBTUSD")
        wait_until(lambda: health_detail(ingest)["exactly_once_fence"] == "refused", 10, "the fence refused")
        assert ingest.logs().count("event=exactly_once_fence_refused") == 1
        assert password not in ingest.logs()
        assert ingest.terminate() == 0  # before the user goes: that closes its connections
    finally:
        admin.acl_deluser(user)
        admin.close()


def test_healthz_fails_with_every_topic_rejected_and_is_degraded_with_some(
        venue: Venue, run_service: RunService, service_env: dict[str, str]) -> None:
    venue.rejected_topics = {"orderBookL2:xbtusd", "orderBook10:xbtusd"}
    ingest = start_ingest(run_service, service_env, venue, "xbtusd", healthy=False)
    wait_until(lambda: health_detail(ingest)["status"] == 503, 10, "/healthz failing")
    assert health_detail(ingest)["problems"] == ["no topic subscribed: the venue rejected all 2"]
    wait_until(lambda: rejected_problems(service_env) == [("error", 2)], 15, "status: an error, nothing subscribed")
    ingest.terminate()

    partial_on_subscribe(venue, ("XBTUSD",))
    ingest = start_ingest(run_service, service_env, venue, "XBTUSD,xbtusd")
    wait_until(lambda: "degraded" in health_detail(ingest), 10, "the degraded detail")
    detail = health_detail(ingest)
    assert (detail["status"], detail["healthy"], detail["problems"]) == (200, True, [])
    assert detail["degraded"] == ["orderBook10:xbtusd", "orderBookL2:xbtusd"]
    # `bookstream status` learns it from the session's liveness key, without asking ingest.
    wait_until(lambda: rejected_problems(service_env) == [("warning", 2)], 15, "status: a warning, degraded")


def said_by(value: bytes | str | None) -> str | None:
    """The instance a liveness key names, None without a key."""
    return None if value is None else IngestLiveness.decode(value).instance


def rejected_problems(env: dict[str, str]) -> list[tuple[str, int]]:
    """The `topics_rejected` problems of `bookstream status --json`: (severity, topics named)."""
    document = status_json(env)
    return [(problem["severity"], problem["detail"].count(":xbtusd")) for problem in document["problems"]
            if problem["kind"] == "topics_rejected"]


def test_a_failed_connect_names_the_url_masked(run_service: RunService, service_env: dict[str, str]) -> None:
    url = f"ws://trader:hunter2@127.0.0.1:{free_port()}/realtime"
    ingest = run_service("ingest", env=service_env | {"BITMEX_WS_URL": url}, healthy=False)
    ingest.wait_log("event=connect_failed")
    assert 'event=connect_failed url="ws://trader:***@127.0.0.1:' in ingest.logs()
    assert health_detail(ingest)["connection"]["url"].startswith("ws://trader:***@")
    assert "hunter2" not in ingest.logs() and b"hunter2" not in ingest.health()[1]


def test_entries_lost_at_stop_are_an_error_and_exit_code_3(
        redis_server: RedisServer, venue: Venue, run_service: RunService, service_env: dict[str, str],
        key_prefix: str) -> None:
    partial_on_subscribe(venue, ("XBTUSD",))
    ingest = start_ingest(run_service, service_env | {"REDIS_URL": redis_server.url}, venue, "XBTUSD")
    wait_until(lambda: len(l2(redis_server.url, key_prefix, "XBTUSD")) == 1, 10, "the partial")
    redis_server.kill()
    venue.send(*(l2_frame("XBTUSD", "update", [(2, "Buy", size, 100.0)]) for size in range(1, 11)))
    wait_until(lambda: health_detail(ingest)["buffer"]["entries"] == 10, 10, "the updates buffered")
    assert ingest.terminate() == 3
    # The ten updates and the stop's gap markers, on the l2 and the ob10 stream.
    assert "level=error service=ingest event=stopped_with_loss entries=12 exit_code=3" in ingest.logs()


def test_an_evicting_redis_is_warned_about(
        redis_server: RedisServer, venue: Venue, run_service: RunService, service_env: dict[str, str]) -> None:
    redis.Redis.from_url(redis_server.url).config_set("maxmemory-policy", "allkeys-lru")
    partial_on_subscribe(venue, ("XBTUSD",))
    ingest = start_ingest(run_service, service_env | {"REDIS_URL": redis_server.url}, venue, "XBTUSD")
    wait_until(lambda: "redis_policy_warning" in health_detail(ingest), 10, "the policy warning")
    assert "allkeys-lru" in health_detail(ingest)["redis_policy_warning"]
    assert health_detail(ingest)["status"] == 200
    assert ingest.logs().count("event=redis_evicting policy=allkeys-lru") == 1
