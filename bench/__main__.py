"""`python -m bench [--quick]` (also `make bench`): every benchmark, then bench/RESULTS.md and its figures.

1. The per-service benchmarks (`python -m bench.book`, `.ingest`, `.top10`, `.l2builder`) and the Redis
   clients' (`.wire`), each in its own process; the last line each prints is its summary.
2. The pipeline measurements of `bench.pipeline`: latency by stage at several rates, CPU and memory of
   every process, l2builder scaling, and the speed ideas of the original design switched off one by one.
3. The soak variant of the fault drills (`bench.soak`): one drill on the simulator, one on a real capture.
4. The scale scenarios of `bench.scale` (10 to 500 symbols, deep books, the captures, takeover after
   `kill -9`), each beside the baseline revision's code.
5. `bench.cluster`: the same pipeline on one redis-server and on a Redis Cluster of 3 primaries + 3 replicas.

RESULTS.md states the machine and the versions, and sets every figure beside its baseline of the same run
and beside the original design's published numbers. A full run takes about ten minutes on two cores, and
`bench.cluster` about five more;
`--quick` shortens everything to a smoke test of the whole chain (its numbers are not worth publishing).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import cluster, pipeline, plots, scale, soak
from bench.pipeline import STAGES, PipelineResults, RateRun
from testkit.chaos import DrillReport

BENCH_DIR = Path(__file__).resolve().parent
ORIGINAL_REBUILD = plots.ORIGINAL_REBUILD_FRAMES_PER_S
LOW_MS, HIGH_MS = plots.ORIGINAL_RECEIPT_TO_REDIS_MS
ORIGINAL_DESIGN = (
    "**Original design**, wherever tables and figures below name it: the threaded and async prototype this "
    f"project replaces. Its reported figures, not measured here: about {ORIGINAL_REBUILD:,} frames/s for its book "
    f"rebuild (176 messages in 140 ms) and {LOW_MS}-{HIGH_MS} ms from receipt to Redis.")
"""The one definition of the term in RESULTS.md, ahead of its first use."""
SERVICE_ARGS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # name: (arguments of a full run, arguments of --quick)
    "book": ((), ("--frames", "20000", "--repeat", "1", "--list-frames", "100", "--list-capture-frames", "300")),
    "ingest": ((), ("--seconds", "3", "--warmup", "1")),
    "top10": ((), ("--entries", "20000", "--seconds", "4", "--warmup", "2")),
    "l2builder": ((), ("--frames", "30000")),
    "wire": ((), ("--rounds", "200", "--repeat", "1")),
}
THROUGHPUT = (  # (label, benchmark, summary key, target in the service's issue)
    ("ingest frames/s", "ingest", "frames_per_s", 30_000), ("top10 entries/s", "top10", "entries_per_s", 20_000),
    ("l2builder frames/s", "l2builder", "frames_per_s", 50_000))
PACKAGES = ("redis", "hiredis", "websockets", "pymongo", "orjson", "uvloop", "sortedcontainers", "prometheus-client",
            "nx-27017", "matplotlib")
BOOK_ROW = re.compile(r"^(\S.*?)\s{2,}(\d+)\s+(\d+)\s+([\d.]+)\s+(\d+)\s+(\d+)$")
NOISE = 0.15
"""Differences in CPU per frame below 15% are within what this shared machine's noise produces: repeated
runs of the same variant differ by that much."""


@dataclass(frozen=True, slots=True)
class ServiceBench:
    """One `python -m bench.<name>` run: its summary line as numbers, and everything it printed."""

    name: str
    summary: dict[str, float]
    output: str
    seconds: float
    returncode: int

    def get(self, key: str) -> float:
        return self.summary.get(key, float("nan"))


def run_service_bench(name: str, arguments: Sequence[str]) -> ServiceBench:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", f"bench.{name}", *arguments], capture_output=True, text=True,
                          cwd=BENCH_DIR.parent, check=False)
    output = done.stdout + (f"\n[stderr]\n{done.stderr[-3000:]}" if done.returncode else "")
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    summary = {}
    if done.returncode == 0 and lines:
        for pair in lines[-1].split():
            key, _, value = pair.partition("=")
            summary[key] = float(value)
    return ServiceBench(name, summary, output, time.monotonic() - started, done.returncode)


def book_rows(bench: ServiceBench) -> list[tuple[str, float]]:
    """(run name, frames/s) of the table bench.book prints."""
    return [(found.group(1), float(found.group(5))) for line in bench.output.splitlines()
            if (found := BOOK_ROW.match(line.strip()))]


def machine() -> list[tuple[str, str]]:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    memory = next((line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), "0")
    redis_version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True,
                                   check=False).stdout.strip() if shutil.which("redis-server") else "not found"
    uname = subprocess.run(["uname", "-a"], capture_output=True, text=True, check=False).stdout.strip()
    rows = [("uname -a", uname), ("nproc", str(os.cpu_count())), ("CPU", model),
            ("memory", f"{int(memory) / 1024 / 1024:.1f} GiB"), ("load average at start", _load()),
            ("python", sys.version.split()[0]), ("redis-server", redis_version)]
    for package in PACKAGES:
        try:
            rows.append((package, importlib.metadata.version(package)))
        except importlib.metadata.PackageNotFoundError:
            rows.append((package, "not installed"))
    return rows


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _ms(us: float) -> str:
    return f"{us / 1000:,.1f} ms" if us >= 1000 else f"{us / 1000:,.2f} ms"


def _times(ratio: float) -> str:
    return f"{ratio:,.0f}x" if ratio >= 10 else f"{ratio:,.1f}x"


def _reference_run(runs: list[RateRun], rate: int = 2_000) -> RateRun:
    """The run at `rate`, or the closest paced one: latency is quoted where the pipeline keeps up."""
    paced = [run for run in runs if run.rate] or runs
    return min(paced, key=lambda run: abs(run.rate - rate))


def _verdict(shipped: float, without: float) -> str:
    change = (without - shipped) / shipped
    if abs(change) < NOISE:
        return "no difference beyond noise"
    return f"{abs(change):.0%} {'more' if change > 0 else 'less'} CPU per frame without it"


def summary_rows(benches: dict[str, ServiceBench], results: PipelineResults) -> list[tuple[str, ...]]:
    """The summary table: measure, this machine, baseline of the same run, ratio, vs the original design."""
    rows: list[tuple[str, ...]] = []
    book = benches.get("book")
    if book and book.summary:
        engine, listed = book.get("frames_per_s"), book.get("list_frames_per_s")
        rows.append(("Book engine parse+apply, synthetic 3,000 levels/side", f"{engine:,.0f} frames/s",
                     f"list baseline {listed:,.0f} frames/s", _times(engine / listed),
                     f"{_times(engine / ORIGINAL_REBUILD)} its ~{ORIGINAL_REBUILD:,} frames/s"))
        viewed = book.get("top10_frames_per_s")
        rows.append(("Book engine + top-10 view after every frame", f"{viewed:,.0f} frames/s",
                     f"list baseline {listed:,.0f} frames/s", _times(viewed / listed),
                     f"{_times(viewed / ORIGINAL_REBUILD)} its ~{ORIGINAL_REBUILD:,} frames/s"))
        captured = dict(book_rows(book))
        real = captured.get("captures parse+apply")
        real_list = next((value for name, value in captured.items() if name.startswith("captures list")), None)
        if real and real_list:
            rows.append(("Book engine parse+apply, real 2021 captures", f"{real:,.0f} frames/s",
                         f"list baseline {real_list:,.0f} frames/s", _times(real / real_list),
                         f"{_times(real / ORIGINAL_REBUILD)} its ~{ORIGINAL_REBUILD:,} frames/s"))
    ingest = benches.get("ingest")
    if ingest and ingest.summary:
        rows.append(("ingest, frames/s per process (recording replayed at full speed)",
                     f"{ingest.get('frames_per_s'):,.0f} frames/s", "", "", ""))
        rows.append(("ingest receive -> XADD acknowledged, p50 / p99 at 5,000 frames/s",
                     f"{_ms(ingest.get('p50_us'))} / {_ms(ingest.get('p99_us'))}", "", "",
                     f"{LOW_MS}-{HIGH_MS} ms: {_times(LOW_MS * 1000 / ingest.get('p50_us'))} lower at p50"))
    top10 = benches.get("top10")
    if top10 and top10.summary:
        rows.append(("top10, entries/s per process (backlog drain)", f"{top10.get('entries_per_s'):,.0f} entries/s",
                     "", "", ""))
        rows.append(("top10 receive -> key written, p50 / p99 at 2,000 frames/s",
                     f"{_ms(top10.get('p50_us'))} / {_ms(top10.get('p99_us'))}", "", "",
                     f"{LOW_MS}-{HIGH_MS} ms: {_times(LOW_MS * 1000 / top10.get('p50_us'))} lower at p50"))
    builder = benches.get("l2builder")
    if builder and builder.summary:
        frames = builder.get("frames_per_s")
        rows.append(("l2builder, frames/s per process, stream -> MongoDB (median of 3 drains)",
                     f"{frames:,.0f} frames/s", "", "",
                     f"{_times(frames / ORIGINAL_REBUILD)} its ~{ORIGINAL_REBUILD:,} frames/s"))
    if results.scaling:
        one = results.scaling[0]
        for drain in results.scaling[1:]:
            rows.append((f"l2builder x{drain.instances} instances, drain", f"{drain.frames_per_s:,.0f} frames/s",
                         f"x1: {one.frames_per_s:,.0f} frames/s", _times(drain.frames_per_s / one.frames_per_s),
                         ""))
    if results.rates:
        run = _reference_run(results.rates)
        for stage in ("exchange -> receive", "receive -> XADD", "receive -> top10 key", "exchange -> top10 key",
                      "receive -> MongoDB, every change"):
            dist = run.stages[stage]
            to_redis = "MongoDB" not in stage and "-> receive" not in stage
            rows.append((f"Pipeline {stage}, p50 / p99 at {run.rate:,} frames/s",
                         f"{_ms(dist.quantile(0.5))} / {_ms(dist.quantile(0.99))}", "", "",
                         f"{LOW_MS}-{HIGH_MS} ms: {_times(LOW_MS * 1000 / dist.quantile(0.5))} lower at p50"
                         if to_redis else ""))
    shipped_ingest = results.ingest_variants[0] if results.ingest_variants else None
    for variant in results.ingest_variants[1:]:
        assert shipped_ingest is not None
        rows.append((f"ingest CPU per frame: shipped vs {variant.variant}",
                     f"{shipped_ingest.cpu_us_per_frame:.1f} us", f"{variant.cpu_us_per_frame:.1f} us",
                     _times(variant.cpu_us_per_frame / shipped_ingest.cpu_us_per_frame),
                     _verdict(shipped_ingest.cpu_us_per_frame, variant.cpu_us_per_frame)))
    if results.scaling:
        shipped = results.scaling[0]
        for drain in results.l2builder_variants:
            rows.append((f"l2builder CPU per frame: shipped vs {drain.variant}", f"{shipped.cpu_us_per_frame:.1f} us",
                         f"{drain.cpu_us_per_frame:.1f} us", _times(drain.cpu_us_per_frame / shipped.cpu_us_per_frame),
                         _verdict(shipped.cpu_us_per_frame, drain.cpu_us_per_frame)))
    for name, (fast, slow) in results.json_us.items():
        if slow == slow:
            rows.append((f"orjson vs json: {name}", f"{fast:.2f} us", f"{slow:.2f} us", _times(slow / fast), ""))
    return rows


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows)]


def write_results(path: Path, started: float, quick: bool, machine_rows: list[tuple[str, str]],
                  benches: dict[str, ServiceBench], results: PipelineResults, figures: dict[str, str],
                  drills: list[DrillReport], timings: dict[str, float], scale_lines: Sequence[str] = (),
                  cluster_lines: Sequence[str] = ()) -> None:
    lines = ["# bookstream benchmark results", "",
             f"Generated by `python -m bench{' --quick' if quick else ''}` on "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))} in {time.time() - started:,.0f} s "
             f"({', '.join(f'{name} {seconds:,.0f} s' for name, seconds in timings.items())}). "
             "Every service runs as its real `bookstream` command against a private redis-server and "
             "MongoDB-protocol server (nx-27017) on this machine; everything shares its two cores, so "
             "wall-clock rates are floors and CPU time per frame is the steadier figure.", ""]
    if quick:
        lines += ["**Quick run: shortened measurements, a smoke test of the chain; do not quote these numbers.**", ""]
    lines += ["## Machine and versions", "", *_table(("", ""), machine_rows),
              f"| load average at end | {_load()} |", "",
              "## Summary", "", ORIGINAL_DESIGN, "",
              *_table(("measure", "this machine", "baseline, same run", "ratio", "vs original design"),
                      summary_rows(benches, results)), ""]
    lines += _book_section(benches, figures)
    lines += ["## Service throughput", "", f"![service throughput]({figures['throughput']})", "",
              *_table(("benchmark", "summary line", "took"),
                      [(f"`python -m bench.{bench.name}`",
                        f"`{bench.output.splitlines()[-1] if bench.returncode == 0 and bench.output else 'FAILED'}`",
                        f"{bench.seconds:,.0f} s") for bench in benches.values()]), ""]
    lines += _wire_section(benches)
    lines += _decisions_section()
    lines += _latency_section(results, figures)
    lines += _resources_section(results, figures)
    lines += _scaling_section(results, figures)
    lines += _speed_section(results, figures)
    lines += scale_lines
    lines += cluster_lines
    lines += ["## Fault drills (soak)", "",
              "`bench.soak` runs the drills of `tests/drills` longer and harder: three top10 and three l2builder "
              "instances, `kill -9` of any of them and of ingest, Redis and MongoDB restarts, storms of "
              "dropped connections, 429s without Retry-After, malformed frames and corrupt stream entries. "
              "`mismatches` counts books or keys not equal to the truth, books still stale, entries left "
              "pending and crashed services; it must be 0.", "",
              *(f"- {'PASS' if not report.mismatches else 'FAIL'} {report.summary()}" for report in drills), ""]
    lines += ["## How to run", "",
              "```", "make bench                       # = .venv/bin/python -m bench",
              "python -m bench --quick          # about 4 minutes, smoke test only",
              "python -m bench.pipeline         # latency, resources, scaling, speed ideas only",
              "python -m bench.soak --seconds 300   # a longer soak",
              "python -m bench.scale [--quick]  # symbols, depth, takeover; rewrites its section here",
              "python -m bench.cluster [--quick]   # one server vs a 3+3 cluster; rewrites its section here",
              "```", "",
              "## Output of the per-service benchmarks", ""]
    for bench in benches.values():
        lines += [f"<details><summary>python -m bench.{bench.name} ({bench.seconds:,.0f} s)</summary>", "",
                  "```", bench.output.strip(), "```", "</details>", ""]
    path.write_text("\n".join(lines))


def _book_section(benches: dict[str, ServiceBench], figures: dict[str, str]) -> list[str]:
    if "book" not in figures:
        return []
    return ["## Book engine vs the list baseline", "",
            "`bench.book`: parse + apply of every frame in CPU time, the engine (sorted sides plus an id map) "
            "beside the list-based approach of BitMEX's official connector, which the original design used.", "",
            f"![book engine vs list baseline]({figures['book']})", "",
            *_table(("run", "frames/s"), [(name, f"{value:,.0f}") for name, value in book_rows(benches["book"])]), ""]


DECISIONS = (  # (decision in the code, figures measured when it was taken, the command that measures it again)
    ("`RedisWire` for the hot loops (`services/runtime/redis_wire.py`; ingest's publisher, top10's round trip, "
     "l2builder's reads and acks)",
     "redis-py's asyncio client about 200 us of CPU per pipelined round trip of top10's loop, `RedisWire` about "
     "45 us; ingest's publisher measured a third, l2builder's reader and flusher a fifth of redis-py's cost",
     "`python -m bench.wire`"),
    ("hiredis packing and raw stream replies in the housekeeping pool (`services/runtime/redis_client.py`)",
     "packing in Python about 2 us per argument, hiredis about 0.1 us; before the hot loops moved to "
     "`RedisWire`, packing was a tenth of l2builder's CPU and the larger part of top10's, and redis-py's "
     "conversion of entry fields into dicts a sixth of l2builder's",
     "`python -m bench.wire` (xack row), `python -m bench.l2builder`, `python -m bench.top10`"),
    ("one `xadd_batch.lua` EVALSHA per batch instead of pipelined XADDs (`services/ingest/publisher.py`)",
     "500-entry batches, both packed by hiredis: ingest 2.4 us per entry instead of 8.2, Redis 4 us instead of "
     "2.5; redis-py's own pipeline over 20 us per entry; a full batch holds Redis about 2 ms",
     "`python -m bench.wire` (batch_* rows)"),
    ("`GC_GEN0_THRESHOLD = 50_000` in l2builder (`services/l2builder/worker.py`)",
     "about 12% of l2builder's CPU saved against Python's default of 700",
     "`python -m bench.variant --gc-threshold 700 l2builder` beside `bookstream l2builder`"),
    ("sorted key list with the best level last, plus two dicts (`services/core/book.py`)",
     "deltas applied about twice as fast as with `sortedcontainers.SortedDict`; asks best first fall four "
     "times behind at 30,000 levels; a dict sorted when read is ten times slower with a top-10 read per frame",
     "`python -m bench.book --alternatives 30000` (and `--depth 30000`)"),
    ("NamedTuples built with `tuple.__new__` for parsed frames and stream entries (`services/core/bitmex.py`, "
     "`services/core/entries.py`); `decode_next` for the expected entry",
     "several times faster than a frozen dataclass; `tuple.__new__` about half the cost of calling the class; "
     "`decode_next` a third of `decode_entry`'s cost",
     "`python -m bench.book`, `python -m bench.l2builder`"),
    ("ingest's `Entry` a plain (not frozen) dataclass (`services/ingest/session.py`)",
     "a frozen dataclass three times as costly to create", "`python -m bench.ingest`"),
    ("the simulator writes bursts of frames with one system call (`services/exchange/client.py`)",
     "at 20,000 frames/s one `ws.send()` per frame was most of the server's time", "`python -m bench.exchange`"),
)
"""Figures that used to sit in docstrings, where they rot: the code keeps the decision and names the command."""


def _wire_section(benches: dict[str, ServiceBench]) -> list[str]:
    wire = benches.get("wire")
    if wire is None or wire.returncode:
        return []
    return ["## Redis clients", "",
            "`bench.wire`: the hot loops' round trips through redis-py as it comes, through the services' "
            "housekeeping pool (redis-py with hiredis packing and raw stream replies) and through `RedisWire`, "
            "against a private redis-server; CPU time of the client process only.", "",
            "```", *wire.output.strip().splitlines()[:-1], "```", ""]


def _decisions_section() -> list[str]:
    return ["## Figures behind design decisions", "",
            "Measured on this kind of machine when each decision was taken, and kept here rather than in the "
            "code's docstrings. The last column measures it again.", "",
            *_table(("decision", "figures when decided", "measure again"), DECISIONS), ""]


def _latency_section(results: PipelineResults, figures: dict[str, str]) -> list[str]:
    if not results.rates:
        return []
    rows = []
    for run in results.rates:
        for stage in STAGES:
            dist = run.stages[stage]
            rows.append((_rate(run.rate), stage, f"{dist.count:,}",
                         *(_ms(dist.quantile(q)) for q in pipeline.QUANTILES)))
    achieved = [(_rate(run.rate), *(f"{value:,.0f}" for value in run.throughput.values()), f"{run.backlog:,}",
                 f"{sum(run.cpu_percent.values()) / 100:.2f} of {os.cpu_count()}") for run in results.rates]
    return ["## End-to-end latency", "",
            f"`bench.pipeline`: `exchange --sim` over {results.symbols} symbols -> ingest -> top10 and l2builder "
            "(one process each, FLUSH_INTERVAL 0.25 s), at each simulator rate. `exchange` = the simulator's "
            "timestamp of a change (millisecond resolution; one timestamp per burst of changes), `receive` = "
            "ingest's `recv_us`. receive -> XADD and receive -> top10 key come from the services' histograms; "
            "exchange -> receive from every l2 entry written in the window; the rest from the top10 keys and "
            "book documents polled every 100 ms. A book document's `updated_at - received_at` (\"newest "
            "change\") is the age of its newest change when written; coalescing makes earlier changes wait up "
            "to FLUSH_INTERVAL longer, so \"every change\" matches each l2 entry with the first stored version "
            "that includes it. MongoDB times have millisecond resolution. `max` runs the simulator flat out. "
            "Where the cores-busy column nears the number of cores, the machine is saturated (every process, "
            "the simulator, both servers and this benchmark's poller share it) and latency is queueing; "
            "no single service is the bottleneck (see the CPU table).", "",
            f"![latency percentiles]({figures['latency_percentiles']})", "",
            f"![latency CDF]({figures['latency_cdf']})", "",
            *_table(("rate", *(f"{name}/s" for name in results.rates[0].throughput),
                     "l2builder entries unacknowledged at end", "cores busy (all processes)"), achieved), "",
            *_table(("rate", "stage", "samples", *(f"p{q * 100:g}" for q in pipeline.QUANTILES)), rows), ""]


def _rate(rate: int) -> str:
    return "max" if rate == 0 else f"{rate:,}/s"


def _resources_section(results: PipelineResults, figures: dict[str, str]) -> list[str]:
    if not results.rates:
        return []
    processes = list(results.rates[0].cpu_percent)
    services = list(results.rates[0].peak_mb)
    rows = [(_rate(run.rate), *(f"{run.cpu_percent[name]:.0f}%" for name in processes),
             *(f"{run.peak_mb[name]:.0f}" for name in services)) for run in results.rates]
    return ["## CPU and memory of each process", "",
            "CPU as a share of one core over the measured window (/proc/<pid>/stat); peak resident memory "
            "since start (VmHWM in /proc/<pid>/status).", "",
            f"![resources]({figures['resources']})", "",
            *_table(("rate", *(f"CPU {name}" for name in processes), *(f"MiB {name}" for name in services)), rows),
            ""]


def _scaling_section(results: PipelineResults, figures: dict[str, str]) -> list[str]:
    if not results.scaling:
        return []
    one = results.scaling[0]
    rows = [(str(drain.instances), f"{drain.frames:,}", f"{drain.seconds:.2f} s", f"{drain.frames_per_s:,.0f}",
             _times(drain.frames_per_s / one.frames_per_s), f"{drain.cpu_us_per_frame:.1f}",
             f"{drain.cores_busy:.2f} of {os.cpu_count()}", f"{drain.bulk_write_seconds * 1000:,.0f} ms")
            for drain in results.scaling]
    return ["## l2builder scaling", "",
            f"The simulator at full speed fills {pipeline.SCALING_SYMBOLS} symbols' streams through ingest; then "
            "1, 2 and 3 l2builder instances, started and aware of each other, drain them into a fresh database, "
            "timed until every book is stored at its stream's last entry and nothing is pending. Two cores are "
            "shared by the instances, Redis and MongoDB, so more than about two instances cannot add much here; "
            "on separate machines each instance brings its own core.", "",
            f"![scaling]({figures['scaling']})", "",
            *_table(("instances", "frames", "time", "frames/s", "vs one", "CPU us/frame",
                     "cores busy (l2builders + Redis + MongoDB)", "mean bulk write"), rows), ""]


def _speed_section(results: PipelineResults, figures: dict[str, str]) -> list[str]:
    if not results.ingest_variants:
        return []
    rows = [("ingest", run.variant, f"{run.frames_per_s:,.0f}", f"{run.cpu_us_per_frame:.1f}")
            for run in results.ingest_variants]
    rows += [("l2builder", drain.variant, f"{drain.frames_per_s:,.0f}", f"{drain.cpu_us_per_frame:.1f}")
             for drain in [results.scaling[0], *results.l2builder_variants]]
    codec = [(name, f"{fast:.2f}", f"{slow:.2f}" if slow == slow else "-") for name, (fast, slow)
             in results.json_us.items()]
    return ["## Speed ideas of the original design", "",
            "The services always run on uvloop, call `gc.freeze()` after start-up and use orjson. "
            "`bench.variant` starts the same service with uvloop or `gc.freeze()` switched off; JSON is "
            "measured on the hot paths' own work over the frames ingest recorded. Kept: whatever the summary "
            "table shows as cheaper; an idea within the noise costs nothing and stays.", "",
            f"![speed ideas]({figures['speed_ideas']})", "",
            *_speed_verdicts(results), "",
            *_table(("service", "variant", "frames/s", "CPU us/frame"), rows), "",
            *_table(("JSON work", "orjson us/frame", "json us/frame"), codec), ""]


def _speed_verdicts(results: PipelineResults) -> list[str]:
    """One line per idea: what switching it off did to each service's CPU per frame."""
    shipped_ingest, shipped_builder = results.ingest_variants[0], results.scaling[0]
    lines = []
    for idea, variant in (("uvloop", "asyncio loop"), ("gc.freeze() after start-up", "no gc.freeze")):
        ingest = next(run for run in results.ingest_variants if run.variant == variant)
        builder = next(drain for drain in results.l2builder_variants if drain.variant == variant)
        lines.append(f"- **{idea}**: ingest {_verdict(shipped_ingest.cpu_us_per_frame, ingest.cpu_us_per_frame)}; "
                     f"l2builder {_verdict(shipped_builder.cpu_us_per_frame, builder.cpu_us_per_frame)}.")
    codec = [f"{name.split(' (')[0]} {slow / fast:.1f}x faster" for name, (fast, slow) in results.json_us.items()
             if slow == slow]
    lines.append(f"- **orjson** instead of json: {', '.join(codec)}.")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few minutes; numbers not worth publishing")
    parser.add_argument("--soak-seconds", type=float, default=None, help="chaos seconds of the soak [60, quick 20]")
    parser.add_argument("--out", type=Path, default=BENCH_DIR, help="where RESULTS.md and the PNGs go [bench/]")
    args = parser.parse_args(argv)
    started = time.time()
    machine_rows = machine()
    timings: dict[str, float] = {}

    benches = {}
    for name, (full, quick) in SERVICE_ARGS.items():
        bench = run_service_bench(name, quick if args.quick else full)
        benches[name] = bench
        last = bench.output.strip().splitlines()[-1] if bench.output.strip() else ""
        print(f"bench.{name} ({bench.seconds:,.0f} s): {last if bench.returncode == 0 else 'FAILED'}", flush=True)
    timings["per-service"] = sum(bench.seconds for bench in benches.values())

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        workdir = Path(tmp)
        moment = time.monotonic()
        results = pipeline.run(workdir / "pipeline", args.quick, symbols=20)
        timings["pipeline"] = time.monotonic() - moment
        moment = time.monotonic()
        soak_seconds = args.soak_seconds or (20.0 if args.quick else 60.0)
        drills = soak.run(workdir / "soak", soak_seconds, seed=20260923, captures=("2021-04-05.capture",))
        timings["soak"] = time.monotonic() - moment
        moment = time.monotonic()
        scale_runs = scale.run(workdir / "scale", args.quick)
        timings["scale"] = time.monotonic() - moment
        moment = time.monotonic()
        cluster_runs = cluster.run(workdir / "cluster", args.quick)
        timings["cluster"] = time.monotonic() - moment

    out: Path = args.out
    figures = {}
    book = benches["book"]
    if book_rows(book):
        figures["book"] = plots.book(book_rows(book), out / "book.png")
    figures["throughput"] = plots.throughput(
        [(label, benches[name].get(key), target) for label, name, key, target in THROUGHPUT],
        out / "throughput.png")
    figures["latency_percentiles"] = plots.latency_percentiles(results, out / "latency_percentiles.png")
    figures["latency_cdf"] = plots.latency_cdf(results, out / "latency_cdf.png")
    figures["resources"] = plots.resources(results, out / "resources.png")
    figures["scaling"] = plots.scaling(results, out / "scaling.png")
    figures["speed_ideas"] = plots.speed_ideas(results, out / "speed_ideas.png")
    figures["scale"] = plots.scale(scale_runs, out / "scale.png")
    write_results(out / "RESULTS.md", started, args.quick, machine_rows, benches, results, figures, drills, timings,
                  scale.section(scale_runs, figures["scale"], args.quick, scale.BASELINE),
                  cluster.section(cluster_runs, args.quick, *cluster.windows(args.quick)))
    print(f"wrote {out / 'RESULTS.md'} and {len(figures)} figures in {time.time() - started:,.0f} s")
    failed = [name for name, bench in benches.items() if bench.returncode]
    failed += [f"cluster {found.target} round {found.round}" for found in cluster_runs if found.error]
    if failed or any(report.mismatches for report in drills):
        print(f"FAILED: {', '.join(failed) or 'soak drills with mismatches'}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
