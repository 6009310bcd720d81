"""`bookstream top10` under faults: a dead ingest, a clock in the future, Redis losing its data, hostile names.

Each test ends with every key either equal to the newest snapshot and `live`, or `stale` with the reason,
never wrong and `live`; and the service recovers without a restart.
"""

from __future__ import annotations

import json
import time

import redis

from services.core.entries import encode_gap
from services.core.keys import SESSION_LOST_AFTER, Keys
from testkit.harness import RedisServer, base_env, wait_until
from tests.top10.feed import (
    SESSION,
    ChannelListener,
    Heartbeat,
    RunService,
    add,
    add_raw,
    cached,
    holds,
    snapshot,
    snapshot_at,
    start,
    wait_for_all,
)

HEALTH_STALE_AFTER = 10.0
"""The default, which the liveness bound must meet: a lost session's keys are stale within it."""
YEAR_2099_US = 4_070_908_800_000_000


def now_us() -> int:
    return time.time_ns() // 1000


def test_keys_of_a_lost_session_turn_stale_and_live_again_with_a_live_sessions_snapshot(
        run_service: RunService, top10_env: dict[str, str], redis_url: str, keys: Keys, heartbeat: Heartbeat) -> None:
    client = redis.Redis.from_url(redis_url)
    listener = ChannelListener(client, keys.top10("LOSTUSD"))
    heartbeat.start("doomed")
    [quiet] = add(client, keys, snapshot("QUIETUSD", 1))
    [lost] = add(client, keys, snapshot("LOSTUSD", 1), session="doomed")
    # Two instances watch the same keys: the key is marked (and announced) once.
    watchers = [start(run_service, top10_env, name) for name in ("watcher-a", "watcher-b")]
    wait_for_all(client, keys, [quiet, lost])
    assert cached(client, keys, "LOSTUSD")["status"] == "live"

    last_renewal = heartbeat.stop("doomed")  # ingest killed with SIGKILL: its liveness key just expires
    wait_until(lambda: cached(client, keys, "LOSTUSD").get("status") == "stale",
               last_renewal + HEALTH_STALE_AFTER - time.monotonic(), "the key stale within HEALTH_STALE_AFTER")
    value = cached(client, keys, "LOSTUSD")
    lost_reason = value["reason"]
    assert lost_reason.startswith("ingest_lost: session doomed has had no liveness key for ")
    assert value["session"] == "doomed"
    assert holds(client, keys, lost), "the data stays, only its status changes"
    # Quiet for longer than the grace, but its ingest session is alive: not a fault.
    assert time.monotonic() - last_renewal >= SESSION_LOST_AFTER
    quiet_value = cached(client, keys, "QUIETUSD")
    assert (quiet_value["status"], quiet_value["reason"]) == ("live", "")
    for watcher in watchers:
        watcher.wait_log("event=session_lost session=doomed", timeout=20)
    wait_until(lambda: sum(watcher.metric("bookstream_top10_stale_marks_total", 'reason="ingest_lost"')
                           for watcher in watchers) == 1, 20, "one mark in all")
    assert sum(watcher.metric("bookstream_top10_sessions_lost_total") for watcher in watchers) == 2

    # A late snapshot of the lost session (a backlog, say) is the newest there is, but not trusted as live.
    [late] = add(client, keys, snapshot("LOSTUSD", 2), session="doomed")
    wait_for_all(client, keys, [late])
    assert cached(client, keys, "LOSTUSD")["status"] == "stale"
    # ingest reconnects: a new session, alive, and its first snapshot makes the key live again.
    heartbeat.start("reborn")
    [back] = add(client, keys, snapshot("LOSTUSD", 3), session="reborn")
    wait_for_all(client, keys, [back])
    value = cached(client, keys, "LOSTUSD")
    assert (value["status"], value["reason"], value["session"]) == ("live", "", "reborn")
    # The channel told subscribers each change, the stale mark once (a second mark would come before `back`).
    messages = listener.collect(4)
    assert [(message["status"], message.get("stream_id")) for message in messages] == [
        ("live", lost.stream_id), ("stale", None), ("stale", late.stream_id), ("live", back.stream_id)]
    assert messages[1] == {"symbol": "LOSTUSD", "status": "stale", "reason": lost_reason, "session": "doomed"}
    listener.close()
    assert all(watcher.health()[0] == 200 for watcher in watchers)


def test_a_gap_marker_makes_the_key_stale_until_the_next_snapshot(
        run_service: RunService, top10_env: dict[str, str], redis_url: str, keys: Keys, heartbeat: Heartbeat) -> None:
    client = redis.Redis.from_url(redis_url)
    listener = ChannelListener(client, keys.top10("XBTUSD"))
    heartbeat.start(SESSION)
    top10 = start(run_service, top10_env, "gapwatch")
    [first] = add(client, keys, snapshot("XBTUSD", 1))
    wait_for_all(client, keys, [first])
    # ingest could not parse an orderBook10 frame: frames may be missing from here on.
    gap = add_raw(client, keys, "XBTUSD", encode_gap("orderBook10", SESSION, 2, now_us(), "malformed"))
    wait_until(lambda: cached(client, keys, "XBTUSD").get("status") == "stale", 10, "the key stale")
    value = cached(client, keys, "XBTUSD")
    assert (value["reason"], value["gap_id"]) == ("gap: malformed", gap)
    assert holds(client, keys, first), "the data stays, only its status changes"
    wait_until(lambda: top10.metric("bookstream_top10_stale_marks_total", 'reason="gap"') == 1, 5, "the mark counted")
    [fresh] = add(client, keys, snapshot("XBTUSD", 3), seq=3)
    wait_for_all(client, keys, [fresh])
    assert (cached(client, keys, "XBTUSD")["status"], cached(client, keys, "XBTUSD")["reason"]) == ("live", "")
    messages = listener.collect(3)
    assert [(message["status"], message["reason"], message.get("stream_id")) for message in messages] == [
        ("live", "", first.stream_id), ("stale", "gap: malformed", gap), ("live", "", fresh.stream_id)]
    assert top10.metric("bookstream_top10_skipped_entries_total", 'reason="gap"') == 1
    listener.close()


def test_a_snapshot_stamped_in_2099_never_pins_the_key_even_across_a_restart(
        run_service: RunService, top10_env: dict[str, str], redis_url: str, keys: Keys, heartbeat: Heartbeat) -> None:
    client = redis.Redis.from_url(redis_url)
    top10 = start(run_service, top10_env, "timekeeper")
    [future] = add(client, keys, snapshot_at("XBTUSD", YEAR_2099_US, mid=9999))
    wait_until(lambda: cached(client, keys, "XBTUSD").get("stream_id") == future.stream_id, 10, "the 2099 frame")
    stored = cached(client, keys, "XBTUSD")
    assert int(stored["ts_us"]) < YEAR_2099_US and stored["timestamp"] == future.timestamp, \
        "ordered by its receive time, shown with the venue's timestamp"
    # Counted once the script's reply is read, which may be after the key is visible here.
    wait_until(lambda: top10.metric("bookstream_top10_future_timestamps_total") == 1, 20, "the 2099 frame counted")
    top10.wait_log("event=future_timestamp")
    real = add(client, keys, snapshot_at("XBTUSD", now_us(), mid=1000))
    wait_for_all(client, keys, real)

    # A key pinned in 2099 by an older version, before this one starts: the script does not trust it.
    assert top10.terminate() == 0
    client.hset(keys.top10("XBTUSD"), mapping={"ts_us": str(YEAR_2099_US), "stream_id": "9999999999999-0",
                                                "timestamp": "2099-01-01T00:00:00.000Z"})
    while_down = add(client, keys, snapshot_at("XBTUSD", now_us(), mid=1100))
    top10 = start(run_service, top10_env, "timekeeper")
    wait_for_all(client, keys, while_down)
    [again] = add(client, keys, snapshot_at("XBTUSD", YEAR_2099_US + 1000, mid=9999))
    # Stamped after the 2099 frame arrived: real snapshots sent within the network latency of a forged one lose
    # to it, as if it were a real snapshot at its arrival time.
    wait_until(lambda: cached(client, keys, "XBTUSD").get("stream_id") == again.stream_id, 10, "the 2099 frame")
    newest = add(client, keys, snapshot_at("XBTUSD", now_us(), mid=1200))
    wait_for_all(client, keys, newest)
    assert cached(client, keys, "XBTUSD")["status"] == "live"
    wait_until(lambda: top10.metric("bookstream_top10_future_timestamps_total") == 1, 20,
               "the new process counting the 2099 frame")


def test_after_flushall_the_groups_come_back_and_the_keys_equal_the_last_snapshots(
        run_service: RunService, redis_server: RedisServer, key_prefix: str, keys: Keys) -> None:
    client = redis.Redis.from_url(redis_server.url)
    ingest = Heartbeat(client, keys, SESSION)
    try:
        env = base_env(REDIS_URL=redis_server.url, KEY_PREFIX=key_prefix, CLAIM_IDLE="1")
        before = add(client, keys, snapshot("XBTUSD", 1), snapshot("ETHUSD", 1))
        top10 = start(run_service, env, "survivor")
        wait_for_all(client, keys, before)
        client.flushall()
        # ingest writes on; whether it announces its symbols again is not top10's concern.
        after = add(client, keys, snapshot("XBTUSD", 2, mid=1500), snapshot("ETHUSD", 2, mid=500), register=False)
        wait_for_all(client, keys, after)
        more = add(client, keys, snapshot("XBTUSD", 3, mid=1600), register=False)
        wait_for_all(client, keys, more)
        assert [cached(client, keys, symbol)["status"] for symbol in ("XBTUSD", "ETHUSD")] == ["live", "live"]
        assert top10.metric("bookstream_top10_redis_lost_total", 'what="group"') == 2
        top10.wait_log("event=redis_state_lost what=group action=recreated")
        assert top10.alive() and top10.health()[0] == 200
    finally:
        ingest.close()


def test_names_read_from_redis_are_validated_before_use(
        run_service: RunService, top10_env: dict[str, str], redis_url: str, keys: Keys, heartbeat: Heartbeat) -> None:
    client = redis.Redis.from_url(redis_url)
    hostile = ["BAD\x1b[31mRED", "A" * 40, "white space", "new\nline"]
    client.sadd(keys.symbols, *hostile)
    [good] = add(client, keys, snapshot("XBTUSD", 1))
    top10 = start(run_service, top10_env, "validator")
    wait_for_all(client, keys, [good])
    wait_until(lambda: top10.metric("bookstream_top10_invalid_names_total", 'source="symbol_set"') == len(hostile),
               10, "every bad name counted")
    # Rate-limited: one line for the burst, and the raw control characters never reach the log.
    assert top10.logs().count("event=invalid_name") == 1
    assert "\x1b" not in top10.logs() and "new\nline" not in top10.logs()
    assert sorted(key.decode() for key in client.scan_iter(f"{keys.prefix}:ob10:*")) == [keys.ob10_stream("XBTUSD")]
    # A session that cannot name a liveness key: the entry is malformed, the key keeps the good snapshot.
    base = {"table": "orderBook10", "action": "update", "seq": "2", "recv_us": str(now_us())}
    add_raw(client, keys, "XBTUSD", {**base, "session": "no such\x1bsession", "frame": snapshot("XBTUSD", 2).frame()})
    wait_until(lambda: top10.metric("bookstream_top10_malformed_entries_total") == 1, 10, "the entry rejected")
    assert holds(client, keys, good)
    # A session field planted in a key is not looked up as a liveness key.
    client.hset(keys.top10("XBTUSD"), "session", "planted key*")
    wait_until(lambda: top10.metric("bookstream_top10_invalid_names_total", 'source="key_session"') >= 1, 10,
               "the planted session counted")
    assert client.exists(keys.ingest_alive("planted key*")) == 0
    assert top10.metric("bookstream_top10_invalid_names_total", 'source="symbol_set"') == len(hostile), \
        "each bad member is counted once, not once a second"
    assert top10.alive() and top10.health()[0] == 200


def test_an_evicting_redis_is_reported_in_the_log_and_healthz(
        run_service: RunService, redis_server: RedisServer, key_prefix: str) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.config_set("maxmemory-policy", "allkeys-lru")
    top10 = start(run_service, base_env(REDIS_URL=redis_server.url, KEY_PREFIX=key_prefix), "observer")
    top10.wait_log("event=redis_evicting policy=allkeys-lru")
    status, body = top10.health()
    assert status == 200, "a warning, not a failure"
    assert json.loads(body)["redis_policy_warning"] == ("maxmemory-policy allkeys-lru may evict streams and keys; "
                                                        "bookstream needs noeviction")
