"""Benchmark of top10: entries/s of one process, and ingest-receive -> key latency through the real pipeline.

`python -m bench.top10` runs, against a private redis-server:

1. drain: `--entries` synthetic orderBook10 entries are written over `--symbols` ob10 streams first, then one
   `bookstream top10` process is started and timed from ready (its /healthz answers) to the last key write
   (the largest `updated_us`, from Redis's clock). It has to read, validate and acknowledge every entry.
2. latency: `bookstream exchange --sim --rate R --symbols S` -> `bookstream ingest` -> `bookstream top10`, for
   `--seconds` after a warm-up. p50/p99 come from top10's histogram of recv_us -> key written (interpolated
   within its buckets, as Prometheus' histogram_quantile does); a second estimate from sampling the keys'
   `updated_us - recv_us` is printed beside it, split at the XADD (see `split_at_xadd`).

The last line is the summary: `entries_per_s=<n> p50_us=<n> p99_us=<n>`.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import orjson
import redis

from bench.processes import cpu_seconds, service
from bench.prometheus import delta, histogram, quantile
from services.core.entries import encode_entry
from services.core.keys import TOP10_GROUP, Keys
from services.exchange.market import symbol_names
from tests.harness import RedisServer, ServiceProcess, base_env, free_port, wait_until

PREFIX = "bench"
LATENCY_METRIC = "bookstream_top10_latency_seconds"


def serving_since(process: ServiceProcess, timeout: float = 30) -> float:
    """Wait until `process` answers /healthz; return the last moment it did not, a start time on the safe side.

    The health server starts just before the service's own work, so this is when top10 began reading.
    """
    deadline = time.monotonic() + timeout
    not_yet = time.time()
    while process.health()[0] != 200:
        if not process.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"{process.name} did not become healthy:\n{process.logs()[-3000:]}")
        not_yet = time.time()
        time.sleep(0.005)
    return not_yet


def split_at_xadd(recv_us: int, xadd_ms: int, updated_us: int) -> tuple[int, int]:
    """Upper bounds (µs) of ingest receive -> XADD and of XADD -> top10 key written, for one key.

    `xadd_ms` is the millisecond part of the entry's stream id: Redis's clock when it ran the XADD, cut to the
    whole millisecond, so the XADD happened in [xadd_ms, xadd_ms + 1) ms. Taking its start for the first leg
    (`xadd_ms * 1000 - recv_us`) made that leg negative whenever ingest's XADD took less than the cut-off part
    of its millisecond; each leg is bounded by the far end of the millisecond instead, which is never below
    the true value and, on one host's clock, never negative.
    """
    return (xadd_ms + 1) * 1000 - recv_us, updated_us - xadd_ms * 1000


def synthetic_entries(symbols: list[str], per_symbol: int, seed: int) -> Iterator[tuple[str, dict[str, str]]]:
    """orderBook10 entries as ingest writes them: a random walk per symbol, 10 levels a side, ms timestamps."""
    rng = random.Random(seed)
    mids = {symbol: rng.uniform(100, 60_000) for symbol in symbols}
    start_ms = int(time.time() * 1000) - per_symbol
    for step in range(per_symbol):
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime((start_ms + step) / 1000))
        timestamp = f"{stamp}.{(start_ms + step) % 1000:03d}Z"
        for symbol in symbols:
            mids[symbol] = mid = max(1.0, mids[symbol] + rng.choice((-0.5, 0.0, 0.5)))
            bids = [[round(mid - 0.5 * (level + 1), 1), rng.randrange(1, 500) * 100] for level in range(10)]
            asks = [[round(mid + 0.5 * (level + 1), 1), rng.randrange(1, 500) * 100] for level in range(10)]
            row = {"symbol": symbol, "bids": bids, "asks": asks, "timestamp": timestamp}
            frame = orjson.dumps({"table": "orderBook10", "action": "update", "data": [row]}).decode()
            yield symbol, encode_entry(frame, "orderBook10", "update", "bench", step + 1, time.time_ns() // 1000)


def drain(workdir: Path, redis_url: str, entries: int, symbol_count: int) -> float:
    """Entries per second of one top10 process reading a pre-filled backlog."""
    client = redis.Redis.from_url(redis_url)
    keys = Keys(PREFIX)
    symbols = [f"DRAIN{number:03d}" for number in range(symbol_count)]
    per_symbol = entries // symbol_count
    pipe = client.pipeline(transaction=False)
    for count, (symbol, fields) in enumerate(synthetic_entries(symbols, per_symbol, seed=10), start=1):
        pipe.xadd(keys.ob10_stream(symbol), dict(fields))  # type: ignore[arg-type]
        if count % 2000 == 0:
            pipe.execute()
    pipe.sadd(keys.symbols, *symbols)
    pipe.execute()
    total = per_symbol * symbol_count
    env = base_env(REDIS_URL=redis_url, KEY_PREFIX=PREFIX, LOG_LEVEL="WARNING")
    with service(workdir, "top10-drain", "top10", env=env) as top10:
        ready, cpu_at_ready = serving_since(top10), cpu_seconds(top10.pid)

        def drained() -> bool:
            groups = client.pipeline(transaction=False)
            for symbol in symbols:
                groups.xinfo_groups(keys.ob10_stream(symbol))
            # A stream top10 has not joined yet has no group: not drained.
            return all(joined and joined[0]["pending"] == 0 and joined[0]["lag"] == 0 for joined in groups.execute())

        wait_until(drained, 300, "the backlog drained", interval=0.2)
        cpu = cpu_seconds(top10.pid) - cpu_at_ready
        processed = top10.metric("bookstream_top10_entries_total")
        assert processed == total, f"processed {processed} of {total} entries"
        writes = top10.metric("bookstream_top10_writes_total", 'result="applied"')
    last_write_us = max(int(client.hget(keys.top10(symbol), "updated_us") or 0) for symbol in symbols)
    seconds = last_write_us / 1e6 - ready
    print(f"drain: {total} entries over {symbol_count} streams in {seconds:.3f} s = {total / seconds:,.0f} entries/s; "
          f"{total / max(cpu, 1e-9):,.0f} entries per CPU second of top10 (it used {cpu:.2f} s: the rest is waiting "
          f"for Redis or for a core); {writes:.0f} key writes, one per symbol per batch")
    client.delete(*(keys.ob10_stream(symbol) for symbol in symbols), *(keys.top10(symbol) for symbol in symbols))
    return total / seconds


def latency(workdir: Path, redis_url: str, rate: float, symbol_count: int, seconds: float,
            warmup: float) -> tuple[float, float, int]:
    """p50 and p99 (µs) of ingest receive -> key written at `rate` frames/s, and the writes measured."""
    symbols = symbol_names(symbol_count)
    port = free_port()
    env = base_env(REDIS_URL=redis_url, KEY_PREFIX=PREFIX, LOG_LEVEL="WARNING")
    ingest_env = {**env, "BITMEX_WS_URL": f"ws://127.0.0.1:{port}/realtime", "SYMBOLS": ",".join(symbols)}
    client = redis.Redis.from_url(redis_url)
    keys = Keys(PREFIX)
    with ExitStack() as stack:
        stack.enter_context(service(workdir, "exchange", "exchange", "--sim", "--host", "127.0.0.1", "--port",
                                    str(port), "--symbols", str(symbol_count), "--rate", str(rate), "--seed", "7",
                                    env=env, healthy=True))
        top10 = stack.enter_context(service(workdir, "top10-latency", "top10", env=env, healthy=True))
        stack.enter_context(service(workdir, "ingest", "ingest", env=ingest_env, healthy=True))
        time.sleep(warmup)
        before = histogram(top10.metrics(), LATENCY_METRIC)
        # stream id -> (recv_us, ms of the XADD by Redis's clock, updated_us): splits the path in two.
        samples: dict[bytes, tuple[int, int, int]] = {}
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            pipe = client.pipeline(transaction=False)
            for symbol in symbols:
                pipe.hmget(keys.top10(symbol), "stream_id", "recv_us", "updated_us")
            for stream_id, recv_us, updated_us in pipe.execute():
                if stream_id is not None:
                    samples[stream_id] = (int(recv_us), int(stream_id.split(b"-")[0]), int(updated_us))
            time.sleep(0.05)
        after = histogram(top10.metrics(), LATENCY_METRIC)
        pending = sum(client.xpending(keys.ob10_stream(symbol), TOP10_GROUP)["pending"] for symbol in symbols)
    window = delta(before, after)
    measured = int(window[-1][1])
    if measured == 0:
        raise SystemExit("no key writes measured: is ingest publishing orderBook10?")
    p50, p99 = quantile(window, 0.50) * 1e6, quantile(window, 0.99) * 1e6
    print(f"latency: {measured} key writes in {seconds:.0f} s ({measured / seconds:,.0f}/s) at --rate {rate:g} over "
          f"{symbol_count} symbols, receive -> key written: p50 {p50:,.0f} us, p99 {p99:,.0f} us "
          f"(top10 histogram); {pending} entries pending at the end")
    legs = [split_at_xadd(*sample) for sample in samples.values()]
    parts = {"receive -> key (updated_us - recv_us)": [updated - recv for recv, _, updated in samples.values()],
             "ingest: receive -> XADD, at most (stream ids count whole ms)": [first for first, _ in legs],
             "top10: XADD -> key written, at most": [second for _, second in legs]}
    for name, values in parts.items():
        values.sort()
        print(f"  {len(values)} keys sampled, {name}: p50 {values[len(values) // 2]:,} us, "
              f"p99 {values[int(len(values) * 0.99)]:,} us")
    return p50, p99, measured


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.top10", description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000, help="backlog drained by one process [100000]")
    parser.add_argument("--symbols", type=int, default=50, help="symbols (streams) in both runs [50]")
    parser.add_argument("--rate", type=float, default=2000, help="exchange --rate of the latency run [2000]")
    parser.add_argument("--seconds", type=float, default=15, help="measured seconds of the latency run [15]")
    parser.add_argument("--warmup", type=float, default=3, help="seconds before measuring latency [3]")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-top10-") as tmp:
        workdir = Path(tmp)
        server = RedisServer(workdir / "redis").start()
        try:
            entries_per_s = drain(workdir, server.url, args.entries, args.symbols)
            p50, p99, _ = latency(workdir, server.url, args.rate, args.symbols, args.seconds, args.warmup)
        finally:
            server.stop()
    print(f"entries_per_s={entries_per_s:.0f} p50_us={p50:.0f} p99_us={p99:.0f}")


if __name__ == "__main__":
    main()
