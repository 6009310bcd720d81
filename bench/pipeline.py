"""End-to-end measurements of the whole pipeline, each beside its baseline in the same run.

`python -m bench.pipeline [--quick]` runs, on a private redis-server and MongoDB-protocol server:

1. **Latency by stage at several rates, up to saturation.** `exchange --sim` over `--symbols` symbols ->
   ingest -> top10 and l2builder, one process each, at each rate (0 = as fast as the simulator can).
   After a warm-up, during a measured window: exchange -> ingest receive from every l2 entry written
   (the frame's exchange `timestamp`, which the simulator stamps when it makes the change, against
   `recv_us`; millisecond resolution); receive -> XADD acknowledged and receive -> top10 key from the
   services' own histograms (microsecond buckets); exchange -> top10 key from the keys (`updated_us -
   ts_us`) and receive / exchange -> MongoDB from the documents (`updated_at - received_at` and `-
   timestamp`, milliseconds), both polled. Throughput of each stage, CPU (% of one core) of every
   process including the servers, and peak resident memory (VmHWM) of each service.
2. **l2builder scaling.** The simulator at full speed fills 50 symbols' streams through ingest (which
   records what it receives); then 1, 2 and 3 l2builder instances each drain the same streams into a
   fresh database, timed from spawn until every book is stored at its stream's last entry and nothing
   is pending. The baseline is one instance.
3. **Speed ideas of the original design**, switched off one at a time through `bench.variant` (the
   services have no switch): uvloop vs the standard asyncio loop, and `gc.freeze()` after start-up vs
   none, on ingest (the simulator at a fixed 6,000 frames/s over 50 symbols: CPU per frame at one load)
   and l2builder (the drain of step 2: CPU per frame and frames/s); orjson vs the standard json module
   on the JSON work of the hot paths (decoding every frame ingest recorded in step 2, encoding top10
   values), in this process.

CPU time per frame does not depend on what else the shared machine is doing; wall-clock rates do. The
results go to `python -m bench`, which plots them and writes bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import orjson
import pymongo
import redis

from bench.processes import cpu_seconds, measure_window, start_service
from bench.prometheus import quantile
from services.core.bitmex import parse_frame
from services.core.capture import iter_capture
from services.core.entries import parse_stream_id
from services.core.keys import L2BUILDER_GROUP, Keys
from services.core.orderbook10 import timestamp_key
from services.exchange.market import symbol_names
from services.l2builder.store import stored_epoch_us
from testkit.harness import MongoServer, RedisServer, ServiceProcess, base_env, free_port, wait_until

REPO = Path(__file__).resolve().parents[1]
RATES = (500, 2_000, 4_000, 0)
QUICK_RATES = (1_000, 0)
SCALING_SYMBOLS = 50
QUANTILES = (0.5, 0.9, 0.99, 0.999)
INGEST_LATENCY = "bookstream_ingest_publish_latency_seconds"
TOP10_LATENCY = "bookstream_top10_latency_seconds"
VARIANTS = {"uvloop + gc.freeze (as shipped)": (), "asyncio loop": ("--asyncio-loop",),
            "no gc.freeze": ("--no-gc-freeze",)}
POLL_SECONDS = 0.1
INGEST_VARIANT_RATE = 6_000
RUN_NUMBERS = itertools.count(1)
"""Numbers the drains and replays, so each has a database or key prefix of its own."""

STAGES = ("exchange -> receive", "receive -> XADD", "receive -> top10 key", "exchange -> top10 key",
          "receive -> MongoDB, newest change", "receive -> MongoDB, every change", "exchange -> MongoDB, newest change")
"""The measured stages; `exchange` is the simulator's timestamp of a change, `receive` ingest's recv_us.
A book document's `updated_at - received_at` is the age of its newest change when written; an earlier
change waited longer (up to FLUSH_INTERVAL more), which "every change" measures."""


@dataclass(slots=True)
class Distribution:
    """Latencies of one stage in microseconds: raw samples, or a cumulative histogram `(bound, count)`."""

    samples: list[float] = field(default_factory=list)
    buckets: list[tuple[float, float]] = field(default_factory=list)

    @property
    def count(self) -> int:
        return int(self.buckets[-1][1]) if self.buckets else len(self.samples)

    def quantile(self, q: float) -> float:
        if self.buckets:
            return quantile(self.buckets, q) if self.count else float("nan")
        if not self.samples:
            return float("nan")
        ordered = sorted(self.samples)
        return ordered[min(int(q * len(ordered)), len(ordered) - 1)]

    def cdf(self) -> tuple[list[float], list[float]]:
        """Points (latency µs, fraction at or below it) for a CDF plot."""
        if self.buckets:
            total = max(self.count, 1)
            # From the last empty bucket to the first full one: the rest adds flat lines only.
            first = max((index for index, (_, count) in enumerate(self.buckets) if count == 0), default=0)
            last = next(index for index, (_, count) in enumerate(self.buckets) if count >= total)
            shown = [(bound, count) for bound, count in self.buckets[first:last + 1] if bound != float("inf")]
            return [bound for bound, _ in shown], [count / total for _, count in shown]
        ordered = sorted(self.samples)
        return ordered, [(index + 1) / len(ordered) for index in range(len(ordered))]


@dataclass(slots=True)
class RateRun:
    """One rate of the sweep: what each stage achieved, its latencies, and what each process cost."""

    rate: int
    seconds: float
    throughput: dict[str, float]
    stages: dict[str, Distribution]
    cpu_percent: dict[str, float]
    peak_mb: dict[str, float]
    backlog: int
    """Entries l2builder had not yet read or acknowledged at the end: above 0 and growing = saturated."""


@dataclass(frozen=True, slots=True)
class Drain:
    """l2builder instances draining the prefilled streams."""

    instances: int
    variant: str
    frames: int
    seconds: float
    cpu_seconds: float
    servers_cpu_seconds: float
    """CPU of redis-server and the MongoDB server meanwhile: with the instances', how busy the machine was."""
    bulk_write_seconds: float
    """Mean duration of one MongoDB bulk write: the shared server's share of the time."""

    @property
    def cores_busy(self) -> float:
        return (self.cpu_seconds + self.servers_cpu_seconds) / self.seconds

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds

    @property
    def cpu_us_per_frame(self) -> float:
        return self.cpu_seconds / self.frames * 1e6


@dataclass(frozen=True, slots=True)
class IngestRun:
    """ingest under the simulator at INGEST_VARIANT_RATE."""

    variant: str
    frames_per_s: float
    cpu_us_per_frame: float


@dataclass(slots=True)
class PipelineResults:
    """Everything `run` measured, for the figures and RESULTS.md."""

    symbols: int
    rates: list[RateRun] = field(default_factory=list)
    scaling: list[Drain] = field(default_factory=list)
    l2builder_variants: list[Drain] = field(default_factory=list)
    ingest_variants: list[IngestRun] = field(default_factory=list)
    json_us: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Hot-path JSON work -> (µs per frame with orjson, with json)."""


class Launcher:
    """Starts `bookstream` services with a health port and stops every one of them at the end."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.processes: list[ServiceProcess] = []

    def start(self, name: str, *args: str, env: dict[str, str], healthy: bool = True,
              variant: Sequence[str] | None = None) -> ServiceProcess:
        command = None if variant is None else [sys.executable, "-m", "bench.variant", *variant]
        process = start_service(self.workdir, name, *args, env={**env, "PYTHONPATH": str(REPO)}, command=command)
        self.processes.append(process)
        if healthy:
            process.wait_healthy(60)
        return process

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.alive():
                process.terminate(20)
        self.processes.clear()


@contextmanager
def launcher(workdir: Path) -> Iterator[Launcher]:
    started = Launcher(workdir)
    try:
        yield started
    except BaseException:
        for process in started.processes:
            print(f"--- last lines of the {process.name} log ---\n{process.logs()[-2000:]}", file=sys.stderr)
        raise
    finally:
        started.stop()


def peak_mb(pid: int) -> float:
    """Peak resident memory of a process so far (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Servers:
    """The redis-server and MongoDB-protocol server every measurement uses, with a fresh prefix each."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.redis_server = RedisServer(workdir / "redis").start()
        self.mongo_server = MongoServer(workdir / "mongo").start()
        self.client = redis.Redis.from_url(self.redis_server.url)
        self.mongo: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(self.mongo_server.url)

    def env(self, prefix: str, **settings: str) -> dict[str, str]:
        return base_env(**{"REDIS_URL": self.redis_server.url, "MONGO_CONNECTION_STRING": self.mongo_server.url,
                           "KEY_PREFIX": prefix, "MONGO_DATABASE": prefix, "LOG_LEVEL": "WARNING", **settings})

    def pids(self) -> dict[str, int]:
        processes = {"redis-server": self.redis_server.process, "nx-27017": self.mongo_server.process}
        return {name: process.pid for name, process in processes.items() if process is not None}

    def stop(self) -> None:
        self.mongo.close()
        self.client.close()
        self.redis_server.stop()
        self.mongo_server.stop()


# 1. Latency by stage at several rates


def measure_rate(servers: Servers, rate: int, symbols: list[str], warmup: float, seconds: float) -> RateRun:
    prefix = f"rate{rate}"
    port = free_port()
    env = servers.env(prefix, BITMEX_WS_URL=f"ws://127.0.0.1:{port}/realtime", SYMBOLS=",".join(symbols))
    keys = Keys(prefix)
    books = servers.mongo[prefix]["orderbooks"]
    with launcher(servers.workdir) as start:
        exchange = start.start(f"exchange-{prefix}", "exchange", "--sim", "--host", "127.0.0.1", "--port", str(port),
                               "--rate", str(rate), "--seed", "1", env=env)
        services = {"exchange": exchange}
        for role in ("l2builder", "top10", "ingest"):
            services[role] = start.start(f"{role}-{prefix}", role, env=env)
        time.sleep(warmup)
        # This process polls the keys and documents meanwhile: its CPU is part of what the machine carries.
        pids = {name: process.pid for name, process in services.items()} | servers.pids() | {"bench": os.getpid()}

        def polled() -> tuple[float, tuple[list[Stored], list[Stored]], float]:
            started_wall = time.time()
            return started_wall, poll(servers, keys, books, symbols, seconds), time.time()

        measured, (started_wall, (top10, documents), ended_wall) = measure_window(pids, services, polled)
        elapsed = measured.seconds
        cpu = {name: spent / elapsed * 100 for name, spent in measured.cpu.items()}
        peaks = {name: peak_mb(pid) for name, pid in pids.items() if name != "bench"}
        backlog = l2builder_backlog(servers.client, keys, symbols)

    def rate_of(role: str, sample: str) -> float:
        return measured.count(role, sample) / elapsed

    throughput = {"exchange changes": rate_of("exchange", "bookstream_exchange_l2_changes_total"),
                  "ingest entries": rate_of("ingest", 'bookstream_ingest_entries_published_total{kind="frame"}'),
                  "top10 entries": rate_of("top10", "bookstream_top10_entries_total"),
                  "l2builder frames": rate_of("l2builder", "bookstream_l2builder_frames_applied_total")}
    entries = list(l2_entries(servers.client, keys, symbols, started_wall, ended_wall))
    stages = {
        "exchange -> receive": Distribution(samples=[entry.recv_us - entry.exchange_us for entry in entries]),
        "receive -> XADD": Distribution(buckets=measured.buckets("ingest", INGEST_LATENCY, 1e6)),
        "receive -> top10 key": Distribution(buckets=measured.buckets("top10", TOP10_LATENCY, 1e6)),
        "exchange -> top10 key": Distribution(samples=[state.written_us - state.exchange_us for state in top10]),
        "receive -> MongoDB, newest change": Distribution(
            samples=[state.written_us - state.recv_us for state in documents]),
        "receive -> MongoDB, every change": Distribution(samples=list(until_stored(entries, documents))),
        "exchange -> MongoDB, newest change": Distribution(
            samples=[state.written_us - state.exchange_us for state in documents]),
    }
    return RateRun(rate, elapsed, throughput, stages, cpu, peaks, backlog)


@dataclass(frozen=True, slots=True)
class Stored:
    """One state written to a top10 key or a book document, as read back: epoch µs, and its position."""

    symbol: str
    position: tuple[int, int]
    exchange_us: int
    recv_us: int
    written_us: int


@dataclass(frozen=True, slots=True)
class Entry:
    """One l2 delta ingest wrote: its symbol, stream position, exchange time and receive time."""

    symbol: str
    position: tuple[int, int]
    exchange_us: int
    recv_us: int


def poll(servers: Servers, keys: Keys, books: Any, symbols: list[str],
         seconds: float) -> tuple[list[Stored], list[Stored]]:
    """Read every top10 key and book document every POLL_SECONDS; one sample per distinct write.

    Books are written at most once per FLUSH_INTERVAL (250 ms), so polling faster sees each version."""
    top10: dict[bytes, Stored] = {}
    documents: dict[tuple[str, Any], Stored] = {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pipe = servers.client.pipeline(transaction=False)
        for symbol in symbols:
            pipe.hmget(keys.top10(symbol), "stream_id", "ts_us", "recv_us", "updated_us")
        for symbol, (stream_id, ts_us, recv_us, updated_us) in zip(symbols, pipe.execute(), strict=True):
            if stream_id is not None:
                top10[stream_id] = Stored(symbol, parse_stream_id(stream_id.decode()), int(ts_us), int(recv_us),
                                          int(updated_us))
        fields = {"timestamp": 1, "received_at": 1, "updated_at": 1, "stream_id": 1}
        for document in books.find({"status": "live"}, fields):
            received = stored_epoch_us(document.get("received_at"))
            updated = stored_epoch_us(document.get("updated_at"))
            if received is not None and updated is not None and document.get("timestamp"):
                documents[(document["_id"], document["updated_at"])] = Stored(
                    document["_id"], parse_stream_id(document["stream_id"]), timestamp_key(document["timestamp"]),
                    received, updated)
        time.sleep(POLL_SECONDS)
    return list(top10.values()), list(documents.values())


def l2_entries(client: redis.Redis, keys: Keys, symbols: list[str], start: float, end: float) -> Iterator[Entry]:
    """Every l2 delta XADDed between `start` and `end` (epoch seconds)."""
    for symbol in symbols:
        found = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(
            keys.l2_stream(symbol), min=f"{int(start * 1000)}-0", max=f"{int(end * 1000)}-0"))
        for stream_id, fields in found:
            if fields.get(b"action") in (b"insert", b"update", b"delete"):
                rows = orjson.loads(fields[b"frame"])["data"]
                if rows and "timestamp" in rows[0]:
                    yield Entry(symbol, parse_stream_id(stream_id.decode()), timestamp_key(rows[0]["timestamp"]),
                                int(fields[b"recv_us"]))


def until_stored(entries: list[Entry], documents: list[Stored]) -> Iterator[float]:
    """For every entry, receive -> the first book version seen that includes it (entries after the last
    version seen are left out)."""
    versions: dict[str, list[Stored]] = {}
    for document in sorted(documents, key=lambda stored: stored.position):
        versions.setdefault(document.symbol, []).append(document)
    positions = {symbol: [version.position for version in stored] for symbol, stored in versions.items()}
    for entry in entries:
        index = bisect.bisect_left(positions.get(entry.symbol, []), entry.position)
        if index < len(positions.get(entry.symbol, [])):
            yield versions[entry.symbol][index].written_us - entry.recv_us


def l2builder_backlog(client: redis.Redis, keys: Keys, symbols: list[str]) -> int:
    pipe = client.pipeline(transaction=False)
    for symbol in symbols:
        pipe.xinfo_groups(keys.l2_stream(symbol))
    backlog = 0
    for groups in pipe.execute(raise_on_error=False):
        for group in groups if isinstance(groups, list) else ():
            if group["name"] == L2BUILDER_GROUP.encode():
                backlog += int(group["pending"]) + int(group["lag"] or 0)
    return backlog


# 2. l2builder scaling, and 3. speed ideas


def prefill(servers: Servers, frames: int, symbols: list[str], recording: Path) -> int:
    """Fill the l2 streams of prefix `scale` with about `frames` entries through the simulator at full
    speed and ingest, which records what it receives; return the entries written."""
    keys = Keys("scale")
    port = free_port()
    env = servers.env("scale", BITMEX_WS_URL=f"ws://127.0.0.1:{port}/realtime", SYMBOLS=",".join(symbols),
                      STREAM_MAXLEN=str(frames * 4))
    with launcher(servers.workdir) as start:
        # The market moves from the exchange's start, before ingest subscribes: the bound is only a safety net.
        start.start("exchange-scale", "exchange", "--sim", "--host", "127.0.0.1", "--port", str(port), "--rate", "0",
                    "--max-frames", str(frames * 3), "--seed", "2", "--ob10-throttle", "1", env=env)
        ingest = start.start("ingest-scale", "ingest", "--record", str(recording), env=env)
        wait_until(lambda: stream_entries(servers.client, keys, symbols) >= frames, 300,
                   f"{frames} entries in the l2 streams", interval=0.2)
        ingest.terminate(30)
    return stream_entries(servers.client, keys, symbols)


def stream_entries(client: redis.Redis, keys: Keys, symbols: list[str]) -> int:
    pipe = client.pipeline(transaction=False)
    for symbol in symbols:
        pipe.xlen(keys.l2_stream(symbol))
    return sum(cast(list[int], pipe.execute()))


def drain(servers: Servers, symbols: list[str], instances: int, variant: str) -> Drain:
    """Time `instances` l2builders, already running and aware of each other, draining the prefilled
    streams: from the moment the symbols appear until every book is stored and every entry acknowledged."""
    keys = Keys("scale")
    reset_l2builder_state(servers.client, keys, symbols)
    database = f"drain{next(RUN_NUMBERS)}"
    books = servers.mongo[database]["orderbooks"]
    last_ids = {}
    for symbol in symbols:
        newest = cast(list[tuple[bytes, Any]], servers.client.xrevrange(keys.l2_stream(symbol), count=1))
        last_ids[symbol] = newest[0][0].decode()
    env = servers.env("scale", MONGO_DATABASE=database)
    hidden = f"{keys.symbols}:hidden"
    # The instances discover streams through the symbol set: hidden, they start and meet with nothing to do.
    servers.client.rename(keys.symbols, hidden)
    with launcher(servers.workdir) as start:
        builders = [start.start(f"l2builder-{database}-{number}", "l2builder", env=env, variant=VARIANTS[variant])
                    for number in range(instances)]
        wait_until(lambda: servers.client.zcard(keys.l2builder_members) == instances, 30, "the instances to meet")
        time.sleep(1.0)  # an ownership tick or two, so that each instance has seen the others
        cpu_before = sum(cpu_seconds(builder.pid) for builder in builders)
        servers_before = sum(cpu_seconds(pid) for pid in servers.pids().values())
        servers.client.rename(hidden, keys.symbols)
        started = time.monotonic()

        def drained() -> bool:
            stored = {doc["_id"]: doc.get("stream_id") for doc in books.find({}, {"stream_id": 1})}
            return stored == last_ids and l2builder_backlog(servers.client, keys, symbols) == 0

        wait_until(drained, 600, "every entry persisted and acknowledged", interval=0.05)
        elapsed = time.monotonic() - started
        cpu = sum(cpu_seconds(builder.pid) for builder in builders) - cpu_before
        servers_cpu = sum(cpu_seconds(pid) for pid in servers.pids().values()) - servers_before
        frames = int(sum(builder.metric("bookstream_l2builder_frames_applied_total") for builder in builders))
        writes = sum(builder.metric("bookstream_l2builder_flush_seconds_count") for builder in builders)
        write_seconds = sum(builder.metric("bookstream_l2builder_flush_seconds_sum") for builder in builders)
    return Drain(instances, variant, frames, elapsed, cpu, servers_cpu, write_seconds / max(writes, 1))


def reset_l2builder_state(client: redis.Redis, keys: Keys, symbols: list[str]) -> None:
    """Forget every group position, lease and member, so the next drain starts from the first entry."""
    pipe = client.pipeline(transaction=False)
    for symbol in symbols:
        pipe.xgroup_destroy(keys.l2_stream(symbol), L2BUILDER_GROUP)
        pipe.delete(keys.lease(symbol), keys.epoch(symbol))
    pipe.delete(keys.l2builder_members, keys.control)
    pipe.execute(raise_on_error=False)


def ingest_variant(servers: Servers, symbols: list[str], variant: str, warmup: float, seconds: float) -> IngestRun:
    """ingest's CPU per frame with the simulator at INGEST_VARIANT_RATE: at one load for every variant, since
    CPU per frame also depends on how many frames each read and XADD batch carries."""
    port = free_port()
    prefix = f"ingest{next(RUN_NUMBERS)}"
    env = servers.env(prefix, BITMEX_WS_URL=f"ws://127.0.0.1:{port}/realtime", SYMBOLS=",".join(symbols))
    published = 'bookstream_ingest_entries_published_total{kind="frame"}'
    with launcher(servers.workdir) as start:
        start.start(f"exchange-{prefix}", "exchange", "--sim", "--rate", str(INGEST_VARIANT_RATE), "--seed", "3",
                    "--host", "127.0.0.1", "--port", str(port), env=env)
        ingest = start.start(f"ingest-{prefix}", "ingest", env=env, variant=VARIANTS[variant])
        time.sleep(warmup)
        frames_before, cpu_before, started = ingest.metric(published), cpu_seconds(ingest.pid), time.monotonic()
        time.sleep(seconds)
        frames, cpu = ingest.metric(published) - frames_before, cpu_seconds(ingest.pid) - cpu_before
        elapsed = time.monotonic() - started
    servers.client.delete(*servers.client.keys(f"{prefix}:*"))
    return IngestRun(variant, frames / elapsed, cpu / max(frames, 1) * 1e6)


def json_hot_paths(recording: Path, limit: int = 40_000) -> dict[str, tuple[float, float]]:
    """µs per frame of the JSON work of the hot paths, with orjson and with the standard json module."""
    texts = [text for _, text in iter_capture(recording) if text.startswith('{"table"')][:limit]
    ob10 = [orjson.loads(text)["data"][0] for text in texts if text.startswith('{"table":"orderBook10"')]

    def per_frame(work: Callable[[], object], count: int) -> float:
        best = float("inf")
        for _ in range(3):
            started = time.process_time()
            work()
            best = min(best, time.process_time() - started)
        return best / max(count, 1) * 1e6

    def encode_json(row: dict[str, Any]) -> str:
        return json.dumps(row["bids"], separators=(",", ":")) + json.dumps(row["asks"], separators=(",", ":"))

    def encode_orjson(row: dict[str, Any]) -> bytes:
        return orjson.dumps(row["bids"]) + orjson.dumps(row["asks"])

    return {
        "decode every frame (ingest, top10, l2builder)": (
            per_frame(lambda: [orjson.loads(text) for text in texts], len(texts)),
            per_frame(lambda: [json.loads(text) for text in texts], len(texts))),
        "encode a top10 value (top10)": (
            per_frame(lambda: [encode_orjson(row) for row in ob10], len(ob10)),
            per_frame(lambda: [encode_json(row) for row in ob10], len(ob10))),
        "whole parse_frame, for scale (orjson inside)": (
            per_frame(lambda: [parse_frame(text) for text in texts], len(texts)), float("nan")),
    }


def run(workdir: Path, quick: bool, symbols: int, log: Callable[[str], None] = print) -> PipelineResults:
    """Every measurement of this module; `quick` shortens each, uses two rates and one round."""
    results = PipelineResults(symbols)
    servers = Servers(workdir)
    warmup, seconds, rounds = (1.5, 3.0, 1) if quick else (3.0, 6.0, 2)
    # A drain lasts a few seconds, so a neighbour's burst moves it most: one more round than the rest.
    drain_rounds = 1 if quick else 3
    try:
        for rate in QUICK_RATES if quick else RATES:
            measured = measure_rate(servers, rate, symbol_names(symbols), warmup, seconds)
            results.rates.append(measured)
            log(f"rate {rate or 'max'}: " + ", ".join(f"{name} {value:,.0f}/s" for name, value in
                                                      measured.throughput.items()) +
                "; p50 / p99 " + ", ".join(f"{stage} {dist.quantile(0.5) / 1000:,.1f} / "
                                           f"{dist.quantile(0.99) / 1000:,.1f} ms"
                                           for stage, dist in measured.stages.items()))
        scale_symbols = symbol_names(SCALING_SYMBOLS)
        recording = workdir / "scale.capture"
        entries = prefill(servers, 30_000 if quick else 200_000, scale_symbols, recording)
        log(f"prefill: {entries} l2 entries over {SCALING_SYMBOLS} symbols")
        results.scaling, results.l2builder_variants = l2builder_drains(servers, scale_symbols, drain_rounds)
        for drained in [*results.scaling, *results.l2builder_variants]:
            log(f"l2builder x{drained.instances} {drained.variant}: {drained.frames_per_s:,.0f} frames/s, "
                f"{drained.cpu_us_per_frame:.1f} CPU us/frame")
        results.ingest_variants = ingest_variants(servers, scale_symbols, rounds, warmup, seconds)
        for replayed in results.ingest_variants:
            log(f"ingest {replayed.variant}: {replayed.frames_per_s:,.0f} frames/s, "
                f"{replayed.cpu_us_per_frame:.1f} CPU us/frame")
        results.json_us = json_hot_paths(recording)
        for name, (fast, slow) in results.json_us.items():
            log(f"json {name}: orjson {fast:.2f} us, json {slow:.2f} us")
    finally:
        servers.stop()
    return results


def l2builder_drains(servers: Servers, symbols: list[str], rounds: int) -> tuple[list[Drain], list[Drain]]:
    """Drains by 1, 2 and 3 instances as shipped, and by one instance of each variant, in interleaved
    rounds; each configuration keeps its fastest round, since a busy neighbour only slows a drain."""
    shipped, *switched_off = VARIANTS
    configurations = [(1, shipped), (2, shipped), (3, shipped), *((1, variant) for variant in switched_off)]
    fastest: dict[tuple[int, str], Drain] = {}
    for _ in range(rounds):
        for instances, variant in configurations:
            result = drain(servers, symbols, instances, variant)
            kept = fastest.get((instances, variant))
            if kept is None or result.frames_per_s > kept.frames_per_s:
                fastest[(instances, variant)] = result
    return ([fastest[(instances, shipped)] for instances in (1, 2, 3)],
            [fastest[(1, variant)] for variant in switched_off])


def ingest_variants(servers: Servers, symbols: list[str], rounds: int, warmup: float,
                    seconds: float) -> list[IngestRun]:
    """Each variant of ingest, in interleaved rounds; each keeps its cheapest round."""
    runs: dict[str, list[IngestRun]] = {variant: [] for variant in VARIANTS}
    for _ in range(rounds):
        for variant in VARIANTS:
            runs[variant].append(ingest_variant(servers, symbols, variant, warmup, seconds))
    return [min(measured, key=lambda run: run.cpu_us_per_frame) for measured in runs.values()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter windows, two rates")
    parser.add_argument("--symbols", type=int, default=20, help="symbols of the latency sweep [20]")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        run(Path(tmp), args.quick, args.symbols)


if __name__ == "__main__":
    main()
