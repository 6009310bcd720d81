"""Benchmark of l2builder: frames/s of one process from the streams to MongoDB.

`python -m bench.l2builder` runs, against a private redis-server and MongoDB-protocol server:

1. prefill: `bookstream exchange --sim --symbols 50 --rate 0 --max-frames N` -> `bookstream ingest` until
   the simulator has made its N changes and ingest has published them all, then both are stopped;
2. drain: one `bookstream l2builder` (FLUSH_INTERVAL at its default) is timed from the moment it is spawned
   until every stream's last entry is in MongoDB and acknowledged (no pending entry, no lag). Reading,
   parsing, applying, writing every coalesced book and XACKing all count; so does start-up, which is
   also printed on its own, with the CPU time each process used (on 2 cores, the MongoDB-protocol
   server and Redis compete with l2builder for the same CPUs);
3. the drain is repeated (`--drains`, 3 by default) on the same streams, each time from scratch: the
   group destroyed, leases, epochs and members deleted, the database dropped.

`frames` are the entries applied (the metric `bookstream_l2builder_frames_applied_total`), `rows` the
order-book rows they carried. The last line is the summary, the median drain's (the slower middle one
for an even count): `frames_per_s=<n> rows_per_s=<n>`. The median, because on a machine shared with
other tenants one drain can lose a third of its speed to a neighbour; every drain is printed.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pymongo
import redis

from bench.processes import cpu_seconds, service
from services.core.keys import L2BUILDER_GROUP, Keys
from services.exchange.market import symbol_names
from tests.harness import MongoServer, RedisServer, base_env, free_port, wait_until

PREFIX = "bench"
DATABASE = "bench"


@dataclass(frozen=True, slots=True)
class Drain:
    frames: float
    rows: float
    seconds: float

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds


def stream_lengths(client: redis.Redis, keys: Keys, symbols: list[str]) -> int:
    pipe = client.pipeline(transaction=False)
    for symbol in symbols:
        pipe.xlen(keys.l2_stream(symbol))
    return sum(cast(list[int], pipe.execute()))


def prefill(workdir: Path, env: dict[str, str], client: redis.Redis, frames: int, symbols: list[str]) -> None:
    """Fill the l2 streams through the real simulator and ingest."""
    keys = Keys(PREFIX)
    port = free_port()
    started = time.monotonic()
    with service(workdir, "exchange", "exchange", "--sim", "--host", "127.0.0.1", "--port", str(port),
                 "--symbols", str(len(symbols)), "--rate", "0", "--max-frames", str(frames), "--seed", "1",
                 "--ob10-throttle", "1", env=env, healthy=True) as exchange:
        ingest_env = {**env, "BITMEX_WS_URL": f"ws://127.0.0.1:{port}/realtime", "SYMBOLS": ",".join(symbols),
                      "STREAM_MAXLEN": str(frames * 2)}
        with service(workdir, "ingest", "ingest", env=ingest_env, healthy=True):
            exchange.wait_log("max_frames_reached", 600)
            seen = [-1]

            def steady() -> bool:
                seen.append(stream_lengths(client, keys, symbols))
                return seen[-1] == seen[-2]

            wait_until(steady, 600, "ingest to publish the last frames", interval=1.0)
    written = stream_lengths(client, keys, symbols)
    print(f"prefill: {written} entries over {len(symbols)} streams in {time.monotonic() - started:.1f}s")


def drained(client: redis.Redis, books: Any, keys: Keys, symbols: list[str]) -> bool:
    """Every stream's last entry is stored and nothing is pending or undelivered.

    Redis is asked first and MongoDB only once Redis shows everything acknowledged: reading 50 whole books
    every poll would load the MongoDB-protocol server, which shares the cores with the l2builder measured.
    """
    pipe = client.pipeline(transaction=False)
    for symbol in symbols:
        pipe.xinfo_stream(keys.l2_stream(symbol))
        pipe.xinfo_groups(keys.l2_stream(symbol))
    replies = pipe.execute(raise_on_error=False)
    last_ids: dict[str, str | None] = {}
    for symbol, info, groups in zip(symbols, replies[::2], replies[1::2], strict=True):
        if isinstance(groups, Exception) or isinstance(info, Exception):
            return False
        group = next((g for g in groups if g["name"] == L2BUILDER_GROUP.encode()), None)
        if group is None or group["pending"] or group["lag"]:
            return False
        last_ids[symbol] = info["last-entry"][0].decode() if info["last-entry"] else None
    stored = {doc["_id"]: doc.get("stream_id") for doc in books.find({}, {"stream_id": 1})}
    return all(stored.get(symbol) == last for symbol, last in last_ids.items())


def drain(workdir: Path, env: dict[str, str], client: redis.Redis, servers: dict[str, int], mongo_url: str,
          symbols: list[str], label: str) -> Drain:
    keys = Keys(PREFIX)
    mongo: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_url)
    books = mongo[DATABASE]["orderbooks"]
    before = {name: cpu_seconds(pid) for name, pid in servers.items()}
    started = time.monotonic()
    with service(workdir, "l2builder", "l2builder", env={**env, "INSTANCE_NAME": "bench"}) as builder:
        builder.wait_healthy(30)
        ready = time.monotonic() - started
        wait_until(lambda: drained(client, books, keys, symbols), 600, "every entry persisted and acknowledged",
                   interval=0.1)
        elapsed = time.monotonic() - started
        cpu = {"l2builder": cpu_seconds(builder.pid),
               **{name: cpu_seconds(pid) - before[name] for name, pid in servers.items()}}
        frames = builder.metric("bookstream_l2builder_frames_applied_total")
        rows = builder.metric("bookstream_l2builder_rows_applied_total")
        flushes = builder.metric("bookstream_l2builder_flush_seconds_count")
        flush_seconds = builder.metric("bookstream_l2builder_flush_seconds_sum")
        documents = builder.metric("bookstream_l2builder_flush_documents_sum")
    live = books.count_documents({"status": "live"})
    mongo.close()
    print(f"{label}: {int(frames)} frames, {int(rows)} rows in {elapsed:.2f}s (start-up {ready:.2f}s);"
          f" {int(flushes)} bulk writes of {documents / max(flushes, 1):.1f} documents,"
          f" {1000 * flush_seconds / max(flushes, 1):.0f} ms each;"
          f" {live}/{len(symbols)} books live (ingest marks a gap in every stream when it stops)")
    print(f"{label}: cpu " + ", ".join(f"{name} {seconds:.2f}s" for name, seconds in cpu.items())
          + f"; l2builder {1e6 * cpu['l2builder'] / max(frames, 1):.1f} us/frame"
          f" = {frames / max(cpu['l2builder'], 1e-9):.0f} frames per CPU-second;"
          f" {frames / elapsed:.0f} frames/s")
    return Drain(frames, rows, elapsed)


def reset(client: redis.Redis, mongo_url: str, symbols: list[str]) -> None:
    """Forget everything a drain left behind, so the next one starts from the same state as the first."""
    keys = Keys(PREFIX)
    pipe = client.pipeline(transaction=False)
    for symbol in symbols:
        pipe.xgroup_destroy(keys.l2_stream(symbol), L2BUILDER_GROUP)
        pipe.delete(keys.lease(symbol), keys.epoch(symbol))
    pipe.delete(keys.l2builder_members)
    pipe.execute()
    mongo: pymongo.MongoClient[dict[str, Any]]
    with pymongo.MongoClient(mongo_url) as mongo:
        mongo.drop_database(DATABASE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=300_000,
                        help="market changes the simulator makes (orderBookL2 frames carry one or more) [300000]")
    parser.add_argument("--symbols", type=int, default=50, help="symbols (streams) [50]")
    parser.add_argument("--drains", type=int, default=3, help="drains of the same streams; the median counts [3]")
    args = parser.parse_args()
    if args.drains < 1:
        parser.error("--drains must be at least 1")
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # clean up the servers
    symbols = symbol_names(args.symbols)
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-l2builder-")))
        redis_server = RedisServer(workdir / "redis").start()
        stack.callback(redis_server.stop)
        mongo_server = MongoServer(workdir / "mongo").start()
        stack.callback(mongo_server.stop)
        env = base_env(REDIS_URL=redis_server.url, MONGO_CONNECTION_STRING=mongo_server.url, KEY_PREFIX=PREFIX,
                       MONGO_DATABASE=DATABASE, LOG_LEVEL="INFO")
        client = redis.Redis.from_url(redis_server.url)
        prefill(workdir, env, client, args.frames, symbols)
        assert redis_server.process is not None and mongo_server.process is not None
        servers = {"redis-server": redis_server.process.pid, "nx-27017": mongo_server.process.pid}
        drains = []
        for number in range(1, args.drains + 1):
            if number > 1:
                reset(client, mongo_server.url, symbols)
            drains.append(drain(workdir, env, client, servers, mongo_server.url, symbols,
                                f"drain {number}/{args.drains}"))
    median = sorted(drains, key=lambda run: run.frames_per_s)[(len(drains) - 1) // 2]
    print(f"median of {len(drains)} drains: {median.frames_per_s:.0f} frames/s"
          f" (each: {', '.join(f'{run.frames_per_s:.0f}' for run in drains)})")
    print(f"frames_per_s={median.frames_per_s:.0f} rows_per_s={median.rows_per_s:.0f}")


if __name__ == "__main__":
    main()
