"""Benchmark of `bookstream ingest`: exchange -> ingest -> Redis for 50 symbols, throughput and latency.

`python -m bench.ingest` starts its own redis-server, the real `bookstream exchange` and the real
`bookstream ingest`, and reads ingest's own metrics. Three phases:

1. simulator at full rate (`--rate 0`) -> ingest, which also records what it receives (`--record`).
   The simulator is usually the slower of the two on this 2-core machine, so this rate is a floor.
2. that recording replayed as fast as ingest reads it (`--replay --max --loop`): serving recorded bytes
   costs the server little, so ingest is the bottleneck and this is the rate one ingest process sustains.
3. the simulator at a fixed total of `--latency-rate` frames/s (orderBookL2 plus the orderBook10 frames it
   triggers): receive->XADD-acknowledged latency, from the delta of ingest's histogram over the window,
   with quantiles interpolated inside its buckets (50 us wide below 1 ms).

Each phase also reports ingest's CPU time per frame, which depends far less than the rates on what else
the machine is doing: one core at 100% would sustain about 1e6 / (CPU us per frame) frames/s. The three
processes share two cores, so a busy machine lowers the rates and lengthens the latency tail.

The last line is the summary: `frames_per_s` from phase 2, `p50_us` and `p99_us` from phase 3.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis

from bench.processes import cpu_seconds, service
from bench.prometheus import delta, histogram, metric, quantile
from testkit.harness import RedisServer, ServiceProcess, base_env, free_port, wait_until

SYMBOLS = 50
PUBLISHED = 'bookstream_ingest_entries_published_total{kind="frame"}'
LATENCY = "bookstream_ingest_publish_latency_seconds"
FRAMES = re.compile(r'^bookstream_ingest_frames_total\{action="[^"]+",table="([^"]+)"\} (\S+)$', re.M)


@dataclass(frozen=True)
class Window:
    """What ingest did during one measured window."""

    seconds: float
    frames: float
    cpu_seconds: float
    metrics_before: str
    metrics_after: str

    @property
    def per_s(self) -> float:
        return self.frames / self.seconds

    @property
    def cpu_us_per_frame(self) -> float:
        return self.cpu_seconds / self.frames * 1e6 if self.frames else float("nan")

    def line(self, name: str) -> str:
        return (f"{name:<28} {self.per_s:>9,.0f} frames/s  ingest cpu {self.cpu_us_per_frame:5.1f} us/frame "
                f"({self.cpu_seconds / self.seconds:.0%} of a core)")


def measure(ingest: ServiceProcess, warmup: float, seconds: float) -> Window:
    time.sleep(warmup)
    before, cpu_before, started = ingest.metrics(), cpu_seconds(ingest.pid), time.monotonic()
    time.sleep(seconds)
    after, cpu_after, elapsed = ingest.metrics(), cpu_seconds(ingest.pid), time.monotonic() - started
    frames = metric(after, PUBLISHED) - metric(before, PUBLISHED)
    return Window(elapsed, frames, cpu_after - cpu_before, before, after)


def latency_quantile(window: Window, q: float) -> float:
    """Quantile `q` of the latencies observed during `window`, in seconds (as Prometheus' histogram_quantile)."""
    return quantile(delta(histogram(window.metrics_before, LATENCY), histogram(window.metrics_after, LATENCY)), q)


def orderbook10_ratio(metrics_text: str) -> float:
    """orderBook10 frames per orderBookL2 frame, as the simulator produced them."""
    counts = {"orderBookL2": 0.0, "orderBook10": 0.0}
    for table, value in FRAMES.findall(metrics_text):
        counts[table] = counts.get(table, 0.0) + float(value)
    return counts["orderBook10"] / max(counts["orderBookL2"], 1.0)


@contextmanager
def exchange(workdir: Path, name: str, env: dict[str, str], *flags: str) -> Iterator[str]:
    port = free_port()
    with service(workdir, name, "exchange", "--host", "127.0.0.1", "--port", str(port), *flags,
                 env=env | {"LOG_LEVEL": "INFO"}, healthy=True) as server:
        wait_until(lambda: "event=listening" in server.logs(), 30, "the exchange to listen")
        yield f"ws://127.0.0.1:{port}/realtime"


def symbol_names(log: str) -> str:
    found = re.search(r"event=listening .*symbols=(\S+)", log)
    assert found, "the exchange did not print its symbols"
    return found.group(1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="measured window of each phase [8]")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before each window [2]")
    parser.add_argument("--latency-rate", type=float, default=5000.0, help="total frames/s of phase 3 [5000]")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        workdir = Path(tmp)
        redis_server = RedisServer(workdir / "redis").start()
        try:
            # Persistence is not what is measured: an AOF rewrite forking mid-window would measure the disk.
            client = redis.Redis.from_url(redis_server.url)
            client.config_set("appendonly", "no")
            client.close()
            env = base_env(REDIS_URL=redis_server.url, LOG_LEVEL="WARNING", STREAM_MAXLEN="20000")
            capture = workdir / "sim.capture"

            with exchange(workdir, "sim", env, "--sim", "--symbols", str(SYMBOLS), "--rate", "0",
                          "--seed", "1") as url:
                symbols = symbol_names((workdir / "sim.log").read_text())
                ingest_env = env | {"BITMEX_WS_URL": url, "SYMBOLS": symbols, "KEY_PREFIX": "full"}
                with service(workdir, "ingest-full", "ingest", "--record", str(capture), env=ingest_env,
                             healthy=True) as ingest:
                    full = measure(ingest, args.warmup, args.seconds)
            print(full.line("1. simulator at full rate"), flush=True)

            with exchange(workdir, "replay", env, "--replay", str(capture), "--max", "--loop") as url:
                ingest_env = env | {"BITMEX_WS_URL": url, "SYMBOLS": symbols, "KEY_PREFIX": "replay"}
                with service(workdir, "ingest-replay", "ingest", env=ingest_env, healthy=True) as ingest:
                    replay = measure(ingest, args.warmup, args.seconds)
            print(replay.line("2. its recording at --max"), flush=True)

            l2_rate = args.latency_rate / (1 + orderbook10_ratio(full.metrics_after))
            with exchange(workdir, "paced", env, "--sim", "--symbols", str(SYMBOLS), "--rate", f"{l2_rate:.0f}",
                          "--seed", "2") as url:
                ingest_env = env | {"BITMEX_WS_URL": url, "SYMBOLS": symbols, "KEY_PREFIX": "paced"}
                with service(workdir, "ingest-paced", "ingest", env=ingest_env, healthy=True) as ingest:
                    paced = measure(ingest, args.warmup, args.seconds)
            p50, p99, p999 = (latency_quantile(paced, q) * 1e6 for q in (0.5, 0.99, 0.999))
            print(paced.line(f"3. paced at {args.latency_rate:,.0f}/s"),
                  f" latency p50 {p50:,.0f} us  p99 {p99:,.0f} us  p99.9 {p999:,.0f} us", flush=True)
        finally:
            redis_server.stop()
    print(f"frames_per_s={replay.per_s:.0f} p50_us={p50:.0f} p99_us={p99:.0f}")


if __name__ == "__main__":
    main()
