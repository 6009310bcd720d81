"""`bookstream top10` as a real process against a real Redis, fed with hand-made ob10 entries.

Hand-made entries make the hard cases exact: snapshots replayed out of order, malformed frames, entries
left pending by a consumer killed with SIGKILL, a Redis restart in the middle of a run.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable

import pytest
import redis

from services.core.keys import TOP10_GROUP, Keys
from testkit.harness import RedisServer, ServiceProcess, base_env, wait_until
from tests.top10.feed import (
    ChannelListener,
    Heartbeat,
    RunService,
    Snapshot,
    add,
    add_raw,
    cached,
    consumers,
    holds,
    newest_per_symbol,
    snapshot,
    start,
    unfinished,
    wait_for_all,
)


@pytest.fixture(autouse=True)
def healthy_ingest(heartbeat: Heartbeat) -> Heartbeat:
    """The session of the entries these tests write stays alive, as under a healthy ingest."""
    return heartbeat


def test_each_key_holds_its_symbols_last_snapshot_including_symbols_seen_later(
        run_service: RunService, top10_env: dict[str, str], redis_url: str, keys: Keys) -> None:
    client = redis.Redis.from_url(redis_url)
    early = add(client, keys, *(snapshot(symbol, ms, mid=1000 + ms) for ms in range(1, 40)
                                for symbol in ("XBTUSD", "ETHUSD")))
    top10 = start(run_service, top10_env, "solo")
    wait_for_all(client, keys, early[-2:])
    later = add(client, keys, snapshot("SOLUSD", 5), snapshot("XBTUSD", 100, mid=2000))
    wait_for_all(client, keys, [early[-1], *later])
    value = cached(client, keys, "XBTUSD")
    assert set(value) == {"bids", "asks", "timestamp", "ts_us", "stream_id", "recv_us", "updated_us", "status",
                          "reason", "session"}
    assert (value["session"], value["reason"]) == ("testsession", "")
    assert int(value["updated_us"]) >= int(value["recv_us"]) > 0
    wait_until(lambda: top10.metric("bookstream_top10_entries_total") == len(early) + len(later), 20, "counted")
    assert top10.metric("bookstream_top10_writes_total", 'result="applied"') >= 4
    assert top10.metric("bookstream_top10_streams") == 3
    assert consumers(client, keys, "SOLUSD") == {"solo": 0}
    assert top10.health()[0] == 200


def test_snapshots_replayed_out_of_order_never_win(
        run_service: RunService, top10_env: dict[str, str], redis_url: str, keys: Keys) -> None:
    client = redis.Redis.from_url(redis_url)
    top10 = start(run_service, top10_env, "orderly")
    [newest] = add(client, keys, snapshot("XBTUSD", 500, mid=5000))
    wait_for_all(client, keys, [newest])
    # Older exchange times arriving later, one batch at a time so none is coalesced away before the script.
    def processed(count: int) -> Callable[[], bool]:
        return lambda: top10.metric("bookstream_top10_entries_total") == count

    for count, ms in enumerate((100, 499, 300), start=2):
        add(client, keys, snapshot("XBTUSD", ms, mid=ms))
        wait_until(processed(count), 10, "the replay processed")
    wait_until(lambda: top10.metric("bookstream_top10_writes_total", 'result="older"') == 3, 10, "3 refusals")
    assert holds(client, keys, newest)
    # The same exchange time sent again later is a newer snapshot: the stream id breaks the tie.
    [tie] = add(client, keys, snapshot("XBTUSD", 500, mid=6000))
    wait_for_all(client, keys, [tie])
    # A burst mixing old and new in one batch: still the newest exchange time wins.
    burst = add(client, keys, *(snapshot("XBTUSD", ms, mid=ms) for ms in (700, 900, 600, 800)))
    wait_for_all(client, keys, [burst[1]])


def test_malformed_entries_are_counted_acknowledged_and_never_replace_a_good_value(
        run_service: RunService, top10_env: dict[str, str], redis_url: str, keys: Keys) -> None:
    client = redis.Redis.from_url(redis_url)
    # Bad names in the symbol set, and a stream name taken by a string, are skipped; the rest goes on.
    client.sadd(keys.symbols, "NOT}A{SYMBOL", "TAKEN")
    client.set(keys.ob10_stream("TAKEN"), "not a stream")
    top10 = start(run_service, top10_env, "sceptic")
    [good] = add(client, keys, snapshot("XBTUSD", 10))
    wait_for_all(client, keys, [good])
    newer = snapshot("XBTUSD", 20)
    crossed = newer.frame().replace(f"[{newer.bids[0][0]},", "[99999.0,", 1)
    base = {"table": "orderBook10", "action": "update", "session": "s", "seq": "2", "recv_us": "1"}
    add_raw(client, keys, "XBTUSD", {**base, "frame": "NOT-JSON " + "x" * 300})
    add_raw(client, keys, "XBTUSD", {**base, "frame": crossed})
    add_raw(client, keys, "XBTUSD", {**base, "frame": snapshot("ETHUSD", 30).frame()})
    add_raw(client, keys, "XBTUSD", {**base, "recv_us": "soon", "frame": newer.frame()})
    add_raw(client, keys, "XBTUSD", {"junk": "1"})
    wait_until(lambda: top10.metric("bookstream_top10_malformed_entries_total") == 5, 10, "5 malformed entries")
    wait_until(lambda: unfinished(client, keys, ["XBTUSD"]) == 0, 10, "every entry acknowledged")
    assert holds(client, keys, good)
    assert top10.metric("bookstream_top10_writes_total", 'result="applied"') == 1
    top10.wait_log("NOT-JSON xxxx")
    assert "crossed" in top10.logs() and "ETHUSD" in top10.logs()
    assert top10.logs().count("event=symbol_skipped") == 1 and "WRONGTYPE" in top10.logs()
    assert top10.metric("bookstream_top10_invalid_names_total", 'source="symbol_set"') == 1
    [line] = [line for line in top10.logs().splitlines() if "event=invalid_name" in line]
    assert "source=symbol_set" in line and "NOT}A{SYMBOL" in line
    assert top10.alive() and top10.health()[0] == 200


def test_a_subscriber_receives_each_update(
        run_service: RunService, top10_env: dict[str, str], redis_url: str, keys: Keys) -> None:
    client = redis.Redis.from_url(redis_url)
    listener = ChannelListener(client, keys.top10("XBTUSD"))
    start(run_service, top10_env, "announcer")
    sent = []
    for ms in (10, 20, 5, 30):
        [item] = add(client, keys, snapshot("XBTUSD", ms, mid=1000 + ms))
        sent.append(item)
        wait_until(lambda: unfinished(client, keys, ["XBTUSD"]) == 0 and bool(cached(client, keys, "XBTUSD")),
                   10, "the entry processed")
    expected = [item for item in sent if item.ts_us != snapshot("XBTUSD", 5).ts_us]
    assert listener.collect(len(expected)) == [
        {"symbol": "XBTUSD", "bids": item.bids, "asks": item.asks, "timestamp": item.timestamp,
         "stream_id": item.stream_id, "status": "live", "reason": ""} for item in expected]
    listener.close()


def test_three_instances_spread_the_work_and_agree_on_the_newest(
        run_service: RunService, top10_env: dict[str, str], redis_url: str, keys: Keys) -> None:
    client = redis.Redis.from_url(redis_url)
    symbols = [f"SYM{number:02d}" for number in range(12)]
    for symbol in symbols:
        client.sadd(keys.symbols, symbol)
    instances = [run_service("top10", env={**top10_env, "INSTANCE_NAME": name}, name=name, healthy=False)
                 for name in ("one", "two", "three")]
    for instance in instances:
        instance.wait_healthy()
    wait_until(lambda: len(consumers(client, keys, symbols[-1])) == 3, 10, "three members on every stream")
    rng = random.Random(6)
    sent: list[Snapshot] = []
    for _ in range(40):
        # Exchange times shuffled against arrival order, so which instance writes last does not decide.
        batch = [snapshot(symbol, rng.randrange(1, 10_000), mid=rng.randrange(500, 1500)) for symbol in symbols]
        sent.extend(add(client, keys, *batch))
        time.sleep(0.005)
    wait_for_all(client, keys, newest_per_symbol(sent))
    wait_until(lambda: sum(instance.metric("bookstream_top10_entries_total") for instance in instances)
               >= len(sent), 20, "every entry counted")
    processed = [instance.metric("bookstream_top10_entries_total") for instance in instances]
    assert all(count > 0 for count in processed), processed


def test_kill_9_with_entries_pending_leaves_nothing_unprocessed(
        run_service: RunService, top10_env: dict[str, str], redis_url: str, keys: Keys) -> None:
    client = redis.Redis.from_url(redis_url)
    [seed] = add(client, keys, snapshot("VICTIM", 1))
    doomed = start(run_service, top10_env, "doomed")
    wait_for_all(client, keys, [seed])
    victim = freeze_with_an_entry_delivered(client, keys, doomed)
    doomed.kill()
    more = add(client, keys, *(snapshot(symbol, ms) for ms in range(2, 30) for symbol in ("OTHER", "THIRD")))
    heir = start(run_service, top10_env, "heir")
    more += add(client, keys, snapshot("OTHER", 50), snapshot("THIRD", 50))
    wait_for_all(client, keys, [*victim, *newest_per_symbol(more)])
    assert heir.metric("bookstream_top10_claimed_entries_total") >= 1
    wait_until(lambda: heir.metric("bookstream_top10_entries_total", 'source="claimed"') >= 1, 20, "claims counted")
    wait_until(lambda: "doomed" not in consumers(client, keys, "VICTIM"), 15, "the dead consumer removed")
    assert heir.metric("bookstream_top10_consumers_removed_total") == 1
    heir.wait_log("consumer=doomed")


def freeze_with_an_entry_delivered(client: redis.Redis, keys: Keys, doomed: ServiceProcess) -> list[Snapshot]:
    """SIGSTOP `doomed`, XADD, and read the entry under its name: delivered to it, pending under its name, and
    never seen, like a crash between delivery and acknowledgement."""
    wait_until(lambda: consumers(client, keys, "VICTIM").get("doomed") == 0, 10, "doomed reading")
    os.kill(doomed.pid, signal.SIGSTOP)
    victim = add(client, keys, snapshot("VICTIM", 101, mid=2001))
    client.xreadgroup(TOP10_GROUP, "doomed", {keys.ob10_stream("VICTIM"): ">"}, count=10)
    assert consumers(client, keys, "VICTIM")["doomed"] == 1
    return victim


def test_own_pending_entries_are_processed_first_after_a_restart_under_the_same_name(
        run_service: RunService, top10_env: dict[str, str], redis_url: str, keys: Keys) -> None:
    client = redis.Redis.from_url(redis_url)
    stream = keys.ob10_stream("XBTUSD")
    client.xgroup_create(stream, TOP10_GROUP, id="0", mkstream=True)
    client.sadd(keys.symbols, "XBTUSD")
    sent = add(client, keys, *(snapshot("XBTUSD", ms) for ms in (1, 3, 2)))
    # A previous life under this name was handed the entries and died before acknowledging them.
    client.xreadgroup(TOP10_GROUP, "phoenix", {stream: ">"})
    assert consumers(client, keys, "XBTUSD") == {"phoenix": 3}
    phoenix = start(run_service, top10_env, "phoenix", CLAIM_IDLE="600")
    wait_for_all(client, keys, [sent[1]], timeout=10)
    wait_until(lambda: phoenix.metric("bookstream_top10_entries_total", 'source="pending"') == 3, 20, "counted")
    assert phoenix.metric("bookstream_top10_claimed_entries_total") == 0


def test_pending_entries_trimmed_before_processing_are_reported_as_lost(
        run_service: RunService, top10_env: dict[str, str], redis_url: str, keys: Keys) -> None:
    client = redis.Redis.from_url(redis_url)
    stream = keys.ob10_stream("XBTUSD")
    client.xgroup_create(stream, TOP10_GROUP, id="0", mkstream=True)
    add(client, keys, *(snapshot("XBTUSD", ms) for ms in range(1, 6)))
    # Two consumers were handed entries, then MAXLEN trimmed the entries away before either acknowledged.
    client.xreadgroup(TOP10_GROUP, "lost", {stream: ">"}, count=2)
    client.xreadgroup(TOP10_GROUP, "trimmer", {stream: ">"}, count=3)
    client.xtrim(stream, maxlen=0, approximate=False)
    [last] = add(client, keys, snapshot("XBTUSD", 9))
    top10 = start(run_service, top10_env, "trimmer")
    wait_for_all(client, keys, [last])
    wait_until(lambda: top10.metric("bookstream_top10_skipped_entries_total", 'reason="trimmed"') == 5, 10,
               "5 trimmed entries reported: 3 of our own, 2 claimed from `lost`")
    top10.wait_log("event=pending_entries_trimmed")


def test_sigterm_leaves_the_group_with_nothing_pending(
        run_service: RunService, top10_env: dict[str, str], redis_url: str, keys: Keys) -> None:
    client = redis.Redis.from_url(redis_url)
    sent = add(client, keys, snapshot("XBTUSD", 1), snapshot("ETHUSD", 1))
    top10 = start(run_service, top10_env, "leaver")
    wait_for_all(client, keys, sent)
    assert consumers(client, keys, "XBTUSD") == {"leaver": 0}
    assert top10.terminate() == 0
    assert consumers(client, keys, "XBTUSD") == {} and consumers(client, keys, "ETHUSD") == {}
    assert "event=group_left" in top10.logs()


def test_redis_restart_is_survived_and_health_tells(
        run_service: RunService, redis_server: RedisServer, key_prefix: str, keys: Keys) -> None:
    env = base_env(REDIS_URL=redis_server.url, KEY_PREFIX=key_prefix, CLAIM_IDLE="1", HEALTH_STALE_AFTER="1")
    client = redis.Redis.from_url(redis_server.url)
    first = add(client, keys, snapshot("XBTUSD", 1))
    top10 = start(run_service, env, "survivor")
    wait_for_all(client, keys, first)
    redis_server.stop()
    wait_until(lambda: top10.health()[0] == 503, 10, "/healthz to fail while Redis is down")
    assert top10.alive()
    redis_server.start()
    top10.wait_healthy(15)
    # The restarted Redis forgot the script: the write path loads it again.
    second = add(client, keys, snapshot("XBTUSD", 2), snapshot("ETHUSD", 2))
    wait_for_all(client, keys, second)
    assert top10.metric("bookstream_top10_redis_errors_total") > 0
    top10.wait_log("event=redis_recovered")


def test_health_fails_when_only_the_reads_fail(run_service: RunService, redis_url: str, key_prefix: str,
                                              keys: Keys) -> None:
    """The reads have a connection of their own: housekeeping reaching Redis must not hide that they fail."""
    admin = redis.Redis.from_url(redis_url)
    user = f"{key_prefix}-noread"
    admin.acl_setuser(user, enabled=True, passwords=["+pw"], keys=[f"{key_prefix}:*"],
                      commands=["+@all", "-xreadgroup"])
    add(admin, keys, snapshot("XBTUSD", 1))
    netloc = redis_url.split("//", 1)[1].rpartition("@")[2]
    env = base_env(REDIS_URL=f"redis://{user}:pw@{netloc}", KEY_PREFIX=key_prefix, HEALTH_STALE_AFTER="1")
    try:
        top10 = run_service("top10", env={**env, "INSTANCE_NAME": "blind"}, name="blind", healthy=False)
        top10.wait_log("event=streams_joined")
        wait_until(lambda: top10.health()[0] == 503, 10, "/healthz to fail while every read is refused")
        assert top10.metric("bookstream_top10_redis_errors_total", 'operation="read"') > 0
        assert top10.metric("bookstream_top10_redis_errors_total", 'operation="claim"') == 0
    finally:
        admin.acl_deluser(user)
