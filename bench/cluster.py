"""`python -m bench.cluster [--quick]`: the same pipeline on one redis-server and on a Redis Cluster of three
primaries and three replicas, side by side in one run.

Each run starts its own servers: one redis-server, or a cluster (`testkit.harness.RedisClusterServers`,
every node append-only as the single server), and a MongoDB-protocol server (nx-27017); then `exchange
--sim` over SYMBOLS symbols at RATE orderBookL2 frames/s in total (and an orderBook10 frame whenever a top
10 changed) -> ingest -> top10 -> l2builder, one process each, as their real `bookstream` commands, the services given
the one-server URL or the cluster's `redis+cluster://` URL. After a warm-up (every service has handled a
frame, then `warmup` seconds more), over a measured window: frames/s of each service, CPU µs per frame of
each service process (per frame it handled), Redis CPU per stream entry ingest wrote (the sum over every
redis-server process: the one server, or all six nodes of the cluster, replicas included), and from the
services' histograms top10's receive -> key written and ingest's receive -> XADD acknowledged, p50 / p99.
The two targets alternate over `rounds` rounds.

Results go to the "Cluster" section of bench/RESULTS.md (rewritten in place); `python -m bench` runs this too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.pipeline import INGEST_LATENCY, TOP10_LATENCY, launcher
from bench.processes import measure_window
from bench.prometheus import quantile
from bench.scale import write_section
from services.exchange.market import symbol_names
from testkit.harness import MongoServer, RedisClusterServers, RedisServer, base_env, free_port, wait_until

SYMBOLS = 50
RATE = 2_000
MASTERS, REPLICAS_PER_MASTER = 3, 1
TARGETS = ("one server", f"cluster {MASTERS}+{MASTERS * REPLICAS_PER_MASTER}")
SERVICES = ("exchange", "ingest", "top10", "l2builder")
HANDLED = {  # service: the counter of the frames it handled
    "exchange": "bookstream_exchange_l2_changes_total",
    "ingest": 'bookstream_ingest_entries_published_total{kind="frame"}',
    "top10": "bookstream_top10_entries_total",
    "l2builder": "bookstream_l2builder_frames_applied_total",
}
ENTRIES = "bookstream_ingest_entries_published_total"
"""Every stream entry ingest wrote (frames of both tables and gap markers): what Redis stores and serves."""
KEPT_UP = 0.99
"""A run kept up when the simulator made at least this share of RATE and l2builder applied this share of what
it made. Else the machine was saturated: batches grow, so CPU per frame falls, and latency is queueing."""
RESULTS_HEADING = "## Cluster: one server vs 3 primaries + 3 replicas"


@dataclass(slots=True)
class Run:
    """One target in one round."""

    target: str
    round: int
    nodes: int = 0
    seconds: float = 0.0
    frames_per_s: dict[str, float] = field(default_factory=dict)
    cpu_us_per_frame: dict[str, float] = field(default_factory=dict)
    """CPU µs of each service process per frame that service handled."""
    entries: float = 0.0
    redis_cpu_s: float = 0.0
    replicas_cpu_s: float = 0.0
    mongo_cpu_s: float = 0.0
    cores_busy: float = 0.0
    top10_us: tuple[float, float] = (float("nan"), float("nan"))
    ingest_us: tuple[float, float] = (float("nan"), float("nan"))
    ended: str = ""
    """UTC time and the machine's 1-minute load average at the window's end: how shared the cores were."""
    error: str = ""

    @property
    def saturated(self) -> bool:
        made = self.frames_per_s.get("exchange", 0.0)
        return made < KEPT_UP * RATE or self.frames_per_s.get("l2builder", 0.0) < KEPT_UP * made

    @property
    def redis_us_per_entry(self) -> float:
        return self.redis_cpu_s / self.entries * 1e6 if self.entries else float("nan")

    @property
    def replicas_us_per_entry(self) -> float:
        return self.replicas_cpu_s / self.entries * 1e6 if self.entries else float("nan")


def measure(workdir: Path, target: str, number: int, warmup: float, window: float) -> Run:
    run = Run(target, number)
    clustered = target != TARGETS[0]
    redis_servers = (RedisClusterServers(workdir / "cluster", MASTERS, REPLICAS_PER_MASTER) if clustered
                     else RedisServer(workdir / "redis"))
    mongo_server = MongoServer(workdir / "mongo")
    try:
        redis_servers.start()
        mongo_server.start()
        nodes = redis_servers.nodes if isinstance(redis_servers, RedisClusterServers) else [redis_servers]
        primaries = {node.port for node in (redis_servers.primaries() if isinstance(redis_servers, RedisClusterServers)
                                            else nodes)}
        run.nodes = len(nodes)
        port = free_port()
        env = base_env(REDIS_URL=redis_servers.url, MONGO_CONNECTION_STRING=mongo_server.url, KEY_PREFIX="cluster",
                       MONGO_DATABASE="cluster", LOG_LEVEL="WARNING", BITMEX_WS_URL=f"ws://127.0.0.1:{port}/realtime",
                       SYMBOLS=",".join(symbol_names(SYMBOLS)))
        with launcher(workdir) as start:
            services = {"exchange": start.start("exchange", "exchange", "--sim", "--host", "127.0.0.1", "--port",
                                                str(port), "--rate", str(RATE), "--seed", "1", env=env)}
            for role in ("l2builder", "top10", "ingest"):
                services[role] = start.start(role, role, env=env)
            wait_until(lambda: all(services[name].metric(HANDLED[name].split("{")[0]) > 0 for name in SERVICES),
                       60, "a frame through every service")
            time.sleep(warmup)
            pids = {name: process.pid for name, process in services.items()}
            servers = {f"redis:{node.port}": node for node in nodes} | {"nx-27017": mongo_server}
            pids |= {name: server.process.pid for name, server in servers.items() if server.process is not None}
            measured, _ = measure_window(pids, services, lambda: time.sleep(window))
            run.ended = (f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())}, "
                         f"load {Path('/proc/loadavg').read_text().split()[0]}")
        _record(run, measured.seconds, measured.cpu, {name: measured.count(name, HANDLED[name]) for name in SERVICES},
                {f"redis:{port}" for port in primaries})
        run.entries = measured.count("ingest", ENTRIES)
        top10 = measured.buckets("top10", TOP10_LATENCY, 1e6)
        ingest = measured.buckets("ingest", INGEST_LATENCY, 1e6)
        run.top10_us = (quantile(top10, 0.5), quantile(top10, 0.99)) if top10 and top10[-1][1] else run.top10_us
        run.ingest_us = (quantile(ingest, 0.5), quantile(ingest, 0.99)) if ingest and ingest[-1][1] else run.ingest_us
    except Exception as exc:
        run.error = f"{type(exc).__name__}: {exc}"
    finally:
        mongo_server.stop()
        redis_servers.stop()
    return run


def _record(run: Run, seconds: float, cpu: dict[str, float], handled: dict[str, float], primaries: set[str]) -> None:
    """Rates and CPU shares of one window: CPU seconds of each process, frames each service handled."""
    run.seconds = seconds
    run.frames_per_s = {name: count / seconds for name, count in handled.items()}
    run.cpu_us_per_frame = {name: cpu[name] / count * 1e6 if count else float("nan")
                            for name, count in handled.items()}
    redis = {name: spent for name, spent in cpu.items() if name.startswith("redis:")}
    run.redis_cpu_s = sum(redis.values())
    run.replicas_cpu_s = sum(spent for name, spent in redis.items() if name not in primaries)
    run.mongo_cpu_s = cpu.get("nx-27017", 0.0)
    run.cores_busy = sum(cpu.values()) / seconds


# -- the report --------------------------------------------------------------------------------------


def _ms(us: float) -> str:
    return "-" if us != us else f"{us / 1000:,.2f} ms"


def table(runs: Sequence[Run]) -> list[str]:
    header = ("Redis", "round", "frames/s: " + " / ".join(SERVICES), "CPU µs per frame: " + " / ".join(SERVICES),
              "Redis CPU µs per entry (all nodes)", "of which replicas", "top10 receive -> key p50 / p99",
              "ingest receive -> XADD p50 / p99", "cores busy (these processes)", "window ended (UTC), load")
    rows = []
    for run in runs:
        rows.append((f"{run.target}" + (f" ({run.error})" if run.error else ""),
                     f"{run.round}" + (" (saturated)" if run.saturated and not run.error else ""),
                     " / ".join(f"{run.frames_per_s.get(name, float('nan')):,.0f}" for name in SERVICES),
                     " / ".join(f"{run.cpu_us_per_frame.get(name, float('nan')):,.1f}" for name in SERVICES),
                     f"{run.redis_us_per_entry:,.1f}", f"{run.replicas_us_per_entry:,.1f}",
                     f"{_ms(run.top10_us[0])} / {_ms(run.top10_us[1])}",
                     f"{_ms(run.ingest_us[0])} / {_ms(run.ingest_us[1])}", f"{run.cores_busy:.2f} of {os.cpu_count()}",
                     run.ended or "-"))
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows)]


def ratios(runs: Sequence[Run]) -> dict[str, float]:
    """Cluster over one server, each figure averaged over the rounds that kept up: CPU per frame of each service,
    Redis CPU per entry, top10 p50 / p99; NaN where either target has no such round."""
    def mean(target: str, figure: Callable[[Run], float]) -> float:
        values = [figure(run) for run in runs if run.target == target and not run.error and not run.saturated]
        return sum(values) / len(values) if values else float("nan")

    def cpu_of(name: str) -> Callable[[Run], float]:
        return lambda run: run.cpu_us_per_frame[name]

    figures: dict[str, Callable[[Run], float]] = {
        **{f"{name} CPU per frame": cpu_of(name) for name in SERVICES},
        "Redis CPU per entry": lambda run: run.redis_us_per_entry,
        "top10 receive -> key p50": lambda run: run.top10_us[0],
        "top10 receive -> key p99": lambda run: run.top10_us[1]}
    return {label: mean(TARGETS[1], figure) / mean(TARGETS[0], figure) for label, figure in figures.items()}


def section(runs: Sequence[Run], quick: bool, warmup: float, window: float) -> list[str]:
    lines = [RESULTS_HEADING, "",
             f"`python -m bench.cluster{' --quick' if quick else ''}`: `exchange --sim` over {SYMBOLS} symbols at "
             f"{RATE:,} orderBookL2 frames/s in total (and an orderBook10 frame whenever a top 10 changed) -> "
             "ingest -> top10 -> l2builder, one process each, on one redis-server and on a Redis Cluster of "
             f"{MASTERS} primaries + {MASTERS * REPLICAS_PER_MASTER} replicas (every node append-only, fsync every "
             "second, as the single server), fresh servers for every run, the two alternating over the rounds. "
             f"After a warm-up ({warmup:g} s once every service has handled a frame), a {window:g} s window: "
             "frames/s each service handled (exchange: changes made; ingest: frames written; top10: entries "
             "read; l2builder: frames applied), CPU µs of each service process per frame it handled, Redis CPU "
             "per stream entry ingest wrote summed over every redis-server process (the one server, or all "
             "six cluster nodes, replicas included; the replicas' share beside it), and receive -> key written "
             "(top10) and receive -> XADD acknowledged (ingest) from the services' histograms. Other agents run "
             "tests on this shared two-core machine at the same time: the CPU-per-frame and per-entry figures "
             "do not depend much on that while the pipeline keeps up, the wall-clock ones (latency above all) do: the "
             "last column gives the machine's 1-minute load average, of which these processes are the cores-busy "
             "column. A round marked saturated did not keep up (the simulator made less than "
             f"{KEPT_UP:.0%} of its rate, or l2builder applied less than {KEPT_UP:.0%} of what it made): there "
             "batches grow, CPU per frame falls and latency is queueing, so it is left out of the ratios. Judge "
             "latency by its order of magnitude and across the rounds.", ""]
    if quick:
        lines += ["**Quick run: short windows, a smoke test; do not quote these numbers.**", ""]
    found = ratios(runs)
    lines += ["Cluster over one server, averaged over the rounds that kept up: "
              + ", ".join(f"{label} {ratio:.2f}x" for label, ratio in found.items()) + ".", ""]
    return [*lines, *table(runs), ""]


def run(workdir: Path, quick: bool, rounds: int | None = None, log: Callable[[str], None] = print) -> list[Run]:
    warmup, window = windows(quick)
    runs = []
    for number in range(1, (rounds or (1 if quick else 3)) + 1):
        for target in TARGETS:
            found = measure(workdir / f"{target.replace(' ', '-')}-{number}", target, number, warmup, window)
            runs.append(found)
            log(f"cluster: {target}, round {number}: {json.dumps(asdict(found))}")
    return runs


def windows(quick: bool) -> tuple[float, float]:
    """(warm-up, window) seconds of a run."""
    return (5.0, 10.0) if quick else (15.0, 30.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round, short windows (about a minute)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of both targets [3, quick 1]")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                        help="where RESULTS.md is [bench/]")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        runs = run(Path(tmp), args.quick, args.rounds)
    lines = section(runs, args.quick, *windows(args.quick))
    write_section(args.out / "RESULTS.md", lines)
    print("\n".join(lines[lines.index("") + 1:]))
    print(f"bench.cluster: {len(runs)} runs in {time.monotonic() - started:,.0f} s")
    return 1 if any(found.error for found in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
