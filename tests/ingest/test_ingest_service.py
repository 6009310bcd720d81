"""`bookstream ingest` through the real command line, against the real exchange server and a real Redis."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import orjson
import redis

from services.core.capture import iter_capture
from services.core.keys import Keys
from testkit.harness import RedisServer, free_port, redis_client, wait_until
from tests.conftest import RunService
from tests.ingest.streams import (
    health_detail,
    l2,
    read_stream,
    rebuild,
    sessions_of,
    start_exchange,
    start_ingest,
    wait_settled,
)

SIM_SYMBOLS = "XBTUSD,ETHUSD,XBTUSDT"


def capture_l2_frames(path: Path) -> list[tuple[str, str]]:
    """`(symbol, text)` of the capture's orderBookL2 frames that a subscriber receives: from each partial on."""
    frames, started = [], set()
    for _, text in iter_capture(path):
        if not text.startswith('{"table":"orderBookL2"'):
            continue
        message = orjson.loads(text)
        symbol = message["data"][0]["symbol"] if message["data"] else message["filter"]["symbol"]
        if message["action"] == "partial":
            started.add(symbol)
        if symbol in started:
            frames.append((symbol, text))
    return frames


def test_a_replayed_capture_lands_byte_for_byte_and_is_recorded_as_received(
        run_service: RunService, service_env: dict[str, str], redis_target: str, key_prefix: str,
        captures_dir: Path, tmp_path: Path) -> None:
    redis_url = redis_target
    capture = captures_dir / "2021-04-17.capture"
    expected = capture_l2_frames(capture)
    symbols = list(dict.fromkeys(symbol for symbol, _ in expected))
    exchange = start_exchange(run_service, service_env, "--replay", str(capture), "--max")
    record = tmp_path / "ingest.capture"
    # NOSUCH comes last, in a request of its own: the venue rejects it and the ten others are not disturbed.
    ingest = start_ingest(run_service, service_env, exchange, ",".join([*symbols, "NOSUCH"]), "--record", str(record))
    wait_settled(exchange, ingest)

    for symbol in symbols:
        [session] = sessions_of(l2(redis_url, key_prefix, symbol))
        assert [entry.frame for entry in session] == [text for sym, text in expected if sym == symbol]
        assert session[0].action == "partial" and all(entry.table == "orderBookL2" for entry in session)
    client = redis_client(redis_url)
    assert client.smembers(Keys(key_prefix).symbols) == {symbol.encode() for symbol in symbols}
    client.close()

    detail = health_detail(ingest)
    assert detail["status"] == 200 and detail["healthy"]
    assert set(detail["connection"]["rejected_topics"]) == {"orderBookL2:NOSUCH", "orderBook10:NOSUCH"}
    assert len(detail["connection"]["topics"]["subscribed"]) == 2 * len(symbols)
    assert ingest.metric("bookstream_ingest_rejected_topics_total") == 2
    assert "event=topic_rejected" in ingest.logs()

    ingest.terminate()
    recorded = [text for _, text in iter_capture(record)]
    assert orjson.loads(recorded[0])["info"].startswith("Welcome")
    tables = [text for text in recorded if text.startswith('{"table"')]
    assert [text for text in tables if text.startswith('{"table":"orderBookL2"')] == [text for _, text in expected]
    # The capture has no orderBook10: the replay derives it from the book, and ingest records it as received.
    derived = {orjson.loads(text)["data"][0]["symbol"] for text in tables if text.startswith('{"table":"orderBook10"')}
    assert derived == set(symbols) and len(tables) > len(expected)
    replies = [orjson.loads(text) for text in recorded[1:] if not text.startswith('{"table"')]
    assert sum(1 for reply in replies if reply.get("success")) == 2 * len(symbols)
    assert sum(1 for reply in replies if reply.get("status") == 400) == 2


def test_other_tables_are_published_only_when_asked_for(
        run_service: RunService, service_env: dict[str, str], redis_url: str, key_prefix: str,
        captures_dir: Path) -> None:
    capture = captures_dir / "2021-04-17.capture"
    trades = [text for _, text in iter_capture(capture) if text.startswith('{"table":"trade"')
              and orjson.loads(text)["data"][0]["symbol"] == "LTCUSD"]
    exchange = start_exchange(run_service, service_env, "--replay", str(capture), "--max")
    ingest = start_ingest(run_service, service_env, exchange, "LTCUSD,DOGEUSDT", "--extra-tables", "trade")
    wait_settled(exchange, ingest)
    [session] = sessions_of(read_stream(redis_url, Keys(key_prefix).table_stream("trade", "LTCUSD")))
    assert [entry.frame for entry in session] == trades
    assert ingest.metric("bookstream_ingest_frames_total", 'table="quote"') == 0
    client = redis.Redis.from_url(redis_url)
    assert not client.keys(f"{key_prefix}:quote:*")
    client.close()


def test_streams_rebuild_the_exchange_books_exactly_and_stop_leaves_a_gap(
        run_service: RunService, service_env: dict[str, str], redis_target: str, key_prefix: str) -> None:
    redis_url = redis_target
    exchange = start_exchange(run_service, service_env, "--sim", "--symbols", SIM_SYMBOLS, "--rate", "500",
                              "--seed", "11", "--max-frames", "1500")
    ingest = start_ingest(run_service, service_env, exchange, SIM_SYMBOLS)
    wait_settled(exchange, ingest)
    keys = Keys(key_prefix)
    for symbol in SIM_SYMBOLS.split(","):
        [session] = sessions_of(l2(redis_url, key_prefix, symbol))
        assert session[0].action == "partial"
        assert rebuild(session) == exchange.truth(symbol)
        ob10 = sessions_of(read_stream(redis_url, keys.ob10_stream(symbol)))[0]
        last = orjson.loads(ob10[-1].frame)["data"][0]
        truth = exchange.truth(symbol)
        bids = sorted(((price, size) for (side, _), (size, price) in truth.items() if side == "Buy"), reverse=True)
        assert [tuple(level) for level in last["bids"]] == bids[:10]
    frames = ingest.metric("bookstream_ingest_frames_total")
    published = ingest.metric("bookstream_ingest_entries_published_total", 'kind="frame"')
    assert frames == published > 1500
    assert ingest.metric("bookstream_ingest_publish_latency_seconds_count") == published

    assert ingest.terminate() == 0
    for symbol in SIM_SYMBOLS.split(","):
        [session] = sessions_of(l2(redis_url, key_prefix, symbol))
        assert (session[-1].action, session[-1].reason) == ("gap", "stop")


def test_a_dropped_connection_leaves_gap_markers_then_a_new_session(
        run_service: RunService, service_env: dict[str, str], redis_url: str, key_prefix: str) -> None:
    exchange = start_exchange(run_service, service_env, "--sim", "--symbols", SIM_SYMBOLS, "--rate", "400",
                              "--seed", "12", "--max-frames", "2000")
    ingest = start_ingest(run_service, service_env, exchange, SIM_SYMBOLS)
    wait_until(lambda: len(l2(redis_url, key_prefix, "XBTUSD")) > 100, 20, "XBTUSD frames")
    first = health_detail(ingest)["connection"]["session"]
    exchange.fault("drop")
    wait_until(lambda: health_detail(ingest)["connection"].get("session") not in (None, first), 20, "a new session")
    wait_settled(exchange, ingest)

    for symbol in SIM_SYMBOLS.split(","):
        runs = sessions_of(l2(redis_url, key_prefix, symbol))
        assert [run[0].session for run in runs] == [first, health_detail(ingest)["connection"]["session"]]
        before, after = runs
        assert (before[-1].action, before[-1].reason) == ("gap", "closed")
        assert sum(entry.is_gap for entry in before) == 1
        assert after[0].action == "partial"
        assert rebuild(after) == exchange.truth(symbol)
        ob10_before = sessions_of(read_stream(redis_url, Keys(key_prefix).ob10_stream(symbol)))[0]
        assert (ob10_before[0].session, ob10_before[-1].action, ob10_before[-1].reason) == (first, "gap", "closed")
    assert ingest.metric("bookstream_ingest_reconnects_total", 'reason="closed"') == 1
    assert ingest.metric("bookstream_ingest_gap_markers_total", 'reason="closed"') == 6, "an l2 and an ob10 each"


def test_a_run_of_429s_is_waited_out_as_retry_after_says(
        run_service: RunService, service_env: dict[str, str], redis_url: str, key_prefix: str) -> None:
    exchange = start_exchange(run_service, service_env, "--sim", "--symbols", "XBTUSD", "--rate", "100",
                              "--seed", "13", "--reject", "2", "--retry-after", "1")
    started = time.monotonic()
    ingest = start_ingest(run_service, service_env, exchange, "XBTUSD")
    wait_until(lambda: len(l2(redis_url, key_prefix, "XBTUSD")) > 5, 20, "frames after the 429s")
    assert time.monotonic() - started >= 2.0
    assert ingest.metric("bookstream_ingest_reconnects_total", 'reason="rate_limited"') == 2
    assert ingest.metric("bookstream_ingest_connections_total") == 1
    logs = ingest.logs()
    assert logs.count("event=connect_rate_limited status=429 retry_after=1.0") == 2
    [session] = sessions_of(l2(redis_url, key_prefix, "XBTUSD"))
    assert session[0].action == "partial"


def test_malformed_frames_are_counted_logged_and_left_as_gap_markers(
        run_service: RunService, service_env: dict[str, str], redis_url: str, key_prefix: str) -> None:
    exchange = start_exchange(run_service, service_env, "--sim", "--symbols", SIM_SYMBOLS, "--rate", "500",
                              "--seed", "14", "--max-frames", "1200", "--malformed-every", "100")
    ingest = start_ingest(run_service, service_env, exchange, SIM_SYMBOLS)
    wait_settled(exchange, ingest)
    injected = exchange.process.metric("bookstream_exchange_faults_injected_total", 'kind="malformed"')
    assert injected >= 5
    assert ingest.metric("bookstream_ingest_malformed_frames_total") == injected
    # None of the exchange's broken frames shows which symbol it was for: each marks every book stream it
    # may belong to (L2 and orderBook10 for one that does not even show its table), unless that stream's
    # latest entry is a gap already.
    logged = ingest.logs().count("event=malformed_frame")
    assert 1 <= logged < injected, "the log is rate-limited, the count is not"
    keys = Keys(key_prefix)
    gaps = 0
    for symbol in SIM_SYMBOLS.split(","):
        for stream, table in ((keys.l2_stream(symbol), "orderBookL2"), (keys.ob10_stream(symbol), "orderBook10")):
            [session] = sessions_of(read_stream(redis_url, stream))
            marks = [index for index, entry in enumerate(session) if entry.is_gap and entry.reason == "malformed"]
            assert 1 <= len(marks) <= injected
            assert all(not session[index - 1].is_gap for index in marks)
            assert all(orjson.loads(entry.frame)["table"] == table for entry in session if not entry.is_gap)
            gaps += len(marks)
    assert ingest.metric("bookstream_ingest_gap_markers_total", 'reason="malformed"') == gaps


def test_redis_down_mid_run_is_buffered_and_recovered_without_a_restart(
        redis_server: RedisServer, run_service: RunService, service_env: dict[str, str], key_prefix: str) -> None:
    # redis_server comes first so that it is torn down last, after ingest has stopped cleanly.
    env = service_env | {"REDIS_URL": redis_server.url}
    exchange = start_exchange(run_service, env, "--sim", "--symbols", SIM_SYMBOLS, "--rate", "400",
                              "--seed", "15", "--max-frames", "2400")
    ingest = start_ingest(run_service, env, exchange, SIM_SYMBOLS)
    wait_until(lambda: len(l2(redis_server.url, key_prefix, "XBTUSD")) > 50, 20, "XBTUSD frames")
    first = health_detail(ingest)["connection"]["session"]
    redis_server.stop()
    wait_until(lambda: health_detail(ingest)["status"] == 503, 10, "/healthz failing while Redis is down")
    assert any("redis unavailable" in problem for problem in health_detail(ingest)["problems"])
    wait_until(lambda: health_detail(ingest)["buffer"]["entries"] > 100, 10, "frames buffering")
    # The websocket drops too while Redis is down: the frames buffered from it must still land.
    exchange.fault("drop")
    wait_until(lambda: health_detail(ingest)["connection"].get("session") not in (None, first), 20, "a new session")
    redis_server.start()
    wait_settled(exchange, ingest, timeout=40)
    assert health_detail(ingest)["status"] == 200 and ingest.alive()

    for symbol in SIM_SYMBOLS.split(","):
        before, after = sessions_of(l2(redis_server.url, key_prefix, symbol))
        assert (before[0].session, before[-1].action, before[-1].reason) == (first, "gap", "closed")
        assert after[0].action == "partial"
        assert rebuild(after) == exchange.truth(symbol)
    assert ingest.metric("bookstream_ingest_dropped_entries_total") == 0


def test_a_resubscribe_request_yields_a_fresh_partial_at_a_bounded_rate(
        run_service: RunService, service_env: dict[str, str], redis_url: str, key_prefix: str) -> None:
    exchange = start_exchange(run_service, service_env, "--sim", "--symbols", "XBTUSD,ETHUSD", "--rate", "200",
                              "--seed", "16")
    ingest = start_ingest(run_service, service_env, exchange, "XBTUSD,ETHUSD", RESUBSCRIBE_INTERVAL="1.5")
    wait_until(lambda: len(l2(redis_url, key_prefix, "XBTUSD")) > 20, 20, "XBTUSD frames")
    client = redis.Redis.from_url(redis_url)
    control = Keys(key_prefix).control

    def partials() -> list[int]:
        return [entry.recv_us for entry in l2(redis_url, key_prefix, "XBTUSD") if entry.action == "partial"]

    client.xadd(control, {"op": "resubscribe", "symbol": "XBTUSD", "reason": "test", "requested_by": "pytest"})
    wait_until(lambda: len(partials()) == 2, 10, "a second partial")
    client.xadd(control, {"op": "resubscribe", "symbol": "XBTUSD"})  # within the interval: deferred, not lost
    client.xadd(control, {"op": "resubscribe", "symbol": "NOSUCH"})
    wait_until(lambda: len(partials()) == 3, 10, "a third partial")
    client.close()

    [session] = sessions_of(l2(redis_url, key_prefix, "XBTUSD"))
    gaps = [index for index, entry in enumerate(session) if entry.is_gap]
    assert [session[index].reason for index in gaps] == ["resubscribe", "resubscribe"]
    assert [session[index + 1].action for index in gaps] == ["partial", "partial"]
    sent = [datetime.strptime(line.split()[0], "ts=%Y-%m-%dT%H:%M:%S.%fZ")
            for line in ingest.logs().splitlines() if "event=resubscribe_sent" in line]
    assert len(sent) == 2 and (sent[1] - sent[0]).total_seconds() >= 1.45
    assert len(sessions_of(l2(redis_url, key_prefix, "ETHUSD"))) == 1
    assert [entry.action for entry in l2(redis_url, key_prefix, "ETHUSD")].count("partial") == 1
    assert ingest.metric("bookstream_ingest_resubscribes_total", 'outcome="sent"') == 2
    assert ingest.metric("bookstream_ingest_resubscribes_total", 'outcome="deferred"') == 1
    assert ingest.metric("bookstream_ingest_resubscribes_total", 'outcome="ignored"') == 1


def test_silence_is_met_with_a_ping_then_a_reconnect(
        run_service: RunService, service_env: dict[str, str], redis_url: str, key_prefix: str) -> None:
    exchange = start_exchange(run_service, service_env, "--sim", "--symbols", "XBTUSD", "--rate", "100",
                              "--seed", "17")
    ingest = start_ingest(run_service, service_env, exchange, "XBTUSD")
    wait_until(lambda: len(l2(redis_url, key_prefix, "XBTUSD")) > 5, 20, "XBTUSD frames")
    exchange.fault("stall", seconds=30)  # holds back everything, the pong included
    ingest.wait_log("event=heartbeat_timeout", timeout=15)
    wait_until(lambda: len(sessions_of(l2(redis_url, key_prefix, "XBTUSD"))) == 2, 10, "a second session")
    assert ingest.metric("bookstream_ingest_pings_total") >= 1
    before, after = sessions_of(l2(redis_url, key_prefix, "XBTUSD"))
    assert (before[-1].action, before[-1].reason) == ("gap", "heartbeat_timeout")
    assert after[0].action == "partial"


def test_healthz_fails_when_disconnected_too_long_or_redis_is_unreachable(
        run_service: RunService, service_env: dict[str, str]) -> None:
    nowhere = f"ws://127.0.0.1:{free_port()}/realtime"
    ingest = run_service("ingest", env=service_env | {"BITMEX_WS_URL": nowhere, "HEALTH_STALE_AFTER": "1"},
                         healthy=False)
    wait_until(lambda: health_detail(ingest)["status"] == 503, 10, "/healthz failing")
    detail = health_detail(ingest)
    assert detail["problems"][0].startswith("websocket disconnected for")
    assert detail["connection"]["state"] in ("waiting", "connecting")
    assert detail["buffer"] == {"entries": 0, "capacity": 200000, "full": False}

    no_redis = f"redis://127.0.0.1:{free_port()}/0"
    ingest = run_service("ingest", env=service_env | {"BITMEX_WS_URL": nowhere, "REDIS_URL": no_redis}, healthy=False)
    wait_until(lambda: health_detail(ingest)["status"] == 503, 10, "/healthz failing")
    assert any(problem.startswith("redis unavailable") for problem in health_detail(ingest)["problems"])
