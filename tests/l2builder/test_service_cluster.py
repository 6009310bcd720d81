"""Several `bookstream l2builder` instances on one set of streams: exclusive owners, kill -9, SIGTERM
hand-offs and scaling, while a real capture is being published. Books must end exact and live."""

from __future__ import annotations

import signal
from pathlib import Path

from testkit.harness import ServiceProcess, wait_until
from testkit.l2feeds import Books, Feed, capture_frames, log_values, owned_symbols, reconstruct, wait_settled
from tests.conftest import RunService

CAPTURE = "2021-04-05.capture"
SLOW_HOST = 10.0
"""Seconds added to a documented bound (README: a dead instance's symbols move within LEASE_TTL) for a host
too busy to run the instances on time: what is asserted is the contract, not this host's speed."""


def exclusive(feed: Feed, processes: dict[str, ServiceProcess]) -> bool:
    """Every symbol is owned by exactly one live instance, and the lease in Redis names that instance."""
    owned = {name: set(owned_symbols(process)) for name, process in processes.items()}
    if sum(len(symbols) for symbols in owned.values()) != len(feed.last_id):
        return False
    holders = feed.lease_holders()
    return all(holders[symbol] == name for name, symbols in owned.items() for symbol in symbols)


def start(run_service: RunService, env: dict[str, str], name: str) -> ServiceProcess:
    return run_service("l2builder", env={**env, "INSTANCE_NAME": name}, name=name)


def handed_off_frames(process: ServiceProcess) -> int:
    return sum(int(value) for value in log_values(process, "handed_off", "frames_applied"))


def test_three_instances_and_a_kill_9(
        captures_dir: Path, run_service: RunService, service_env: dict[str, str], redis_url: str,
        mongo_url: str, key_prefix: str, mongo_database: str) -> None:
    frames = capture_frames(captures_dir / CAPTURE)
    expected, _ = reconstruct(frames)
    feed, books = Feed(redis_url, key_prefix), Books(mongo_url, mongo_database)
    feed.frames(frames[:300])
    lease_ttl = 2.0
    env = {**service_env, "LEASE_TTL": str(lease_ttl), "CONSUMER_EXPIRY": "1"}
    processes = {name: start(run_service, env, name) for name in ("one", "two", "three")}
    wait_until(lambda: exclusive(feed, processes) and all(map(owned_symbols, processes.values())), 15,
               "each symbol owned by exactly one of three instances, each owning some")

    publisher = feed.paced(frames[300:], seconds=6)
    rest = len(frames) - 300
    wait_until(lambda: publisher.published >= rest // 3, 30, "the capture being published")  # kill mid-stream
    victim = max(processes, key=lambda name: len(owned_symbols(processes[name])))
    orphans = set(owned_symbols(processes[victim]))
    processes.pop(victim).kill()
    wait_until(lambda: exclusive(feed, processes), lease_ttl + SLOW_HOST,
               f"the survivors owning every symbol within LEASE_TTL={lease_ttl:g} s (+{SLOW_HOST:g} s for this host)")
    publisher.finish()
    wait_settled(feed, books)

    assert books.levels() == expected
    documents = books.all()
    assert {doc["status"] for doc in documents.values()} == {"live"}
    assert {symbol: doc["seq"] for symbol, doc in documents.items()} == dict(feed.seq)
    assert all(documents[symbol]["epoch"] >= 2 for symbol in orphans)
    for process in processes.values():
        assert "book_stale" not in process.logs() and "inconsistency" not in process.logs()

    def consumers() -> set[str]:
        return {consumer["name"] for symbol in feed.last_id
                for consumer in feed.client.xinfo_consumers(feed.keys.l2_stream(symbol), "l2builder")}

    wait_until(lambda: consumers() <= set(processes), 10, f"the consumer {victim!r} removed from the group")


def test_scale_one_three_one_with_sigterm_handoffs(
        captures_dir: Path, run_service: RunService, service_env: dict[str, str], redis_url: str,
        mongo_url: str, key_prefix: str, mongo_database: str) -> None:
    frames = capture_frames(captures_dir / CAPTURE)
    expected, applied = reconstruct(frames)
    feed, books = Feed(redis_url, key_prefix), Books(mongo_url, mongo_database)
    feed.frames(frames[:300])
    # A lease so long that a hand-off which waited for its expiry instead of a release would miss the deadline.
    lease_ttl = 60.0
    env = {**service_env, "LEASE_TTL": str(lease_ttl)}
    first = start(run_service, env, "first")
    wait_until(lambda: exclusive(feed, {"first": first}), 10, "one instance owning everything")
    publisher = feed.paced(frames[300:], seconds=8)

    processes = {"first": first, **{name: start(run_service, env, name) for name in ("second", "third")}}
    wait_until(lambda: exclusive(feed, processes) and all(map(owned_symbols, processes.values())), 10,
               "the symbols spread over three instances")
    assert set(log_values(first, "lease_released", "reason")) == {"rebalance"}

    frames_applied = 0
    for name in ("second", "third"):
        leaving = processes.pop(name)
        assert leaving.terminate() == 0
        wait_until(lambda: exclusive(feed, processes), lease_ttl / 2,
                   f"the others taking over from {name}, not waiting for LEASE_TTL={lease_ttl:g} s to expire")
        frames_applied += handed_off_frames(leaving)
        assert "unsettled=False" in leaving.logs()

    publisher.finish()
    wait_settled(feed, books)
    assert books.levels() == expected
    assert {doc["status"] for doc in books.all().values()} == {"live"}
    # Clean hand-offs continue exactly where the previous owner stopped: every frame applied once overall.
    frames_applied += int(first.metric("bookstream_l2builder_frames_applied_total"))
    assert frames_applied == sum(applied)
    assert first.metric("bookstream_l2builder_lease_changes_total", 'change="acquired"') > len(expected)


def test_a_paused_owner_gives_up_and_cannot_overwrite_the_new_owner(
        captures_dir: Path, run_service: RunService, service_env: dict[str, str], redis_url: str,
        mongo_url: str, key_prefix: str, mongo_database: str) -> None:
    """SIGSTOP longer than the lease (a long GC or VM pause): the other instance takes over; once resumed,
    the old owner notices its leases ran out before touching anything, and the books stay exact."""
    frames = capture_frames(captures_dir / "2021-04-17.capture")
    expected, _ = reconstruct(frames)
    feed, books = Feed(redis_url, key_prefix), Books(mongo_url, mongo_database)
    feed.frames(frames[:100])
    lease_ttl = 1.5
    env = {**service_env, "LEASE_TTL": str(lease_ttl)}
    processes = {name: start(run_service, env, name) for name in ("paused", "other")}
    wait_until(lambda: exclusive(feed, processes) and all(map(owned_symbols, processes.values())), 10,
               "both instances owning symbols")
    paused = processes["paused"]
    taken = set(owned_symbols(paused))
    publisher = feed.paced(frames[100:], seconds=5)
    applied = paused.metric("bookstream_l2builder_frames_applied_total")
    wait_until(lambda: paused.metric("bookstream_l2builder_frames_applied_total") > applied, 30,
               "the owner to be paused applying the capture")
    paused.process.send_signal(signal.SIGSTOP)
    try:
        wait_until(lambda: exclusive(feed, {"other": processes["other"]}), lease_ttl + SLOW_HOST,
                   "the other instance owning all")
    finally:
        paused.process.send_signal(signal.SIGCONT)
    publisher.finish()
    wait_settled(feed, books)

    assert set(log_values(paused, "lease_lost", "symbol")) == taken
    assert books.levels() == expected
    assert {doc["status"] for doc in books.all().values()} == {"live"}
    assert "book_stale" not in paused.logs() + processes["other"].logs()
