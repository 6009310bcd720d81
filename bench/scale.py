"""`python -m bench.scale [--quick] [--baseline REV]`: the pipeline at 10 to 500 symbols, at deep books and on
the real captures, beside the code of another revision in the same run.

Each scenario runs `exchange` (the simulator at a fixed total rate, or a capture replayed) -> ingest ->
top10 and two l2builder instances, on a private redis-server and MongoDB-protocol server (nx-27017), once
per code variant: this tree, and the baseline revision (default `cb97c34`, the whole-document write) checked
out into a temporary git worktree and run from it on PYTHONPATH (the exchange is this tree's in both: it is
the venue, not the code under test). The l2builders reach MongoDB through a counting TCP proxy in this
process, so the bytes sent to MongoDB are the wire's. Per run:

1. **warm-up**: ingest fills the streams (a partial for every symbol), then both l2builders start; the
   time from their start until every symbol's document in MongoDB is `live`;
2. a measured window: bytes sent to MongoDB per changed row (rows applied by the l2builders), the flush
   cycle (`bookstream_l2builder_flush_cycle_seconds`; a code without it: the mean from the number of bulk
   writes), CPU µs per L2 frame of every process including both servers, XREADGROUP calls and µs per call
   (INFO commandstats), and at its end the entries not yet delivered (lag) and delivered but not yet
   durable (pending) of the `l2builder` group;
3. **takeover**: `kill -9` of one l2builder; the time until the survivor holds every lease, and until
   every document of the dead one's symbols is `live` under a new epoch.

Results go to the "Scale" section of bench/RESULTS.md (rewritten in place) and bench/scale.png;
`python -m bench` runs this too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pymongo
import redis

from bench.book import CAPTURES
from bench.processes import measure_window, start_service
from bench.prometheus import quantile
from services.core.capture import iter_capture
from services.core.keys import L2BUILDER_GROUP, Keys
from services.exchange.market import symbol_names
from testkit.harness import MongoServer, RedisServer, ServiceProcess, base_env, free_port, wait_until

REPO = Path(__file__).resolve().parents[1]
BASELINE = "cb97c34"
"""main before the delta writes, the read pacing and the concurrent takeover: the whole-document write."""
RATE = 1_000
FLUSH_INTERVAL = 0.25
LEASE_TTL = 6.0
CYCLE = "bookstream_l2builder_flush_cycle_seconds"
PROCESSES = ("exchange", "ingest", "top10", "l2builder-a", "l2builder-b", "redis-server", "nx-27017")
POLL_SECONDS = 0.5
RESULTS_HEADING = "## Scale: symbols, depth and takeover"


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    symbols: int
    depth: int = 300
    capture: str | None = None
    """A file of CAPTURES replayed at speed 1 instead of the simulator."""


SCENARIOS = (Scenario("10 symbols", 10), Scenario("100 symbols", 100), Scenario("500 symbols", 500),
             Scenario("depth 1,000", 10, 1_000), Scenario("depth 10,000", 5, 10_000),
             Scenario("capture 2021-04-05", 0, capture="2021-04-05.capture"),
             Scenario("capture 2021-07-22", 0, capture="2021-07-22.capture"))
QUICK_SCENARIOS = (Scenario("10 symbols", 10), Scenario("100 symbols", 100))


@dataclass(slots=True)
class Run:
    """One scenario under one code variant."""

    scenario: str
    variant: str
    symbols: int
    seconds: float = 0.0
    frames: float = 0.0
    rows: float = 0.0
    mongo_bytes: float = 0.0
    cycle_p50: float | None = None
    cycle_p99: float | None = None
    cycle_mean: float | None = None
    cpu_us: dict[str, float] = field(default_factory=dict)
    """CPU µs per L2 frame applied, by process."""
    xreadgroup_calls_per_s: float = 0.0
    xreadgroup_us_per_call: float = 0.0
    lag: int = 0
    pending: int = 0
    warmup_s: float | None = None
    leases_s: float | None = None
    takeover_s: float | None = None
    error: str = ""

    @property
    def bytes_per_row(self) -> float:
        return self.mongo_bytes / self.rows if self.rows else float("nan")

    @property
    def redis_us_per_frame(self) -> float:
        return self.cpu_us.get("redis-server", float("nan"))


# -- the counting proxy ------------------------------------------------------------------------------


class CountingProxy:
    """A TCP proxy to a local port on its own event loop thread, counting the bytes clients send through it."""

    def __init__(self, target_port: int) -> None:
        self.target_port, self.port = target_port, free_port()
        self.sent = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mongo-proxy", daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            self._loop.close()

    async def _handle(self, client: asyncio.StreamReader, to_client: asyncio.StreamWriter) -> None:
        try:
            upstream, to_server = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            to_client.close()
            return
        await asyncio.gather(self._pump(client, to_server, count=True), self._pump(upstream, to_client, count=False),
                             return_exceptions=True)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, count: bool) -> None:
        try:
            while chunk := await source.read(1 << 16):
                if count:
                    self.sent += len(chunk)
                sink.write(chunk)
                await sink.drain()
        finally:
            sink.close()

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


# -- code variants -----------------------------------------------------------------------------------


@contextlib.contextmanager
def checkout(revision: str, workdir: Path) -> Iterator[Path]:
    """A temporary git worktree of `revision` (detached), removed on the way out."""
    tree = workdir / f"tree-{revision}"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "--quiet", str(tree), revision], check=True)
    try:
        yield tree
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)


class Stack:
    """The processes of one run: the servers, the proxy, the exchange and the services of one code tree."""

    def __init__(self, workdir: Path, tree: Path, scenario: Scenario, names: list[str]) -> None:
        self.workdir, self.tree, self.names = workdir, tree, names
        workdir.mkdir(parents=True)
        self.redis_server = RedisServer(workdir / "redis").start()
        self.mongo_server = MongoServer(workdir / "mongo").start()
        self.proxy = CountingProxy(self.mongo_server.port)
        self.client = redis.Redis.from_url(self.redis_server.url)
        self.mongo: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(self.mongo_server.url)
        self.keys = Keys("scale")
        self.processes: dict[str, ServiceProcess] = {}
        port = free_port()
        self.env = base_env(REDIS_URL=self.redis_server.url, KEY_PREFIX="scale", MONGO_DATABASE="scale",
                            MONGO_CONNECTION_STRING=f"mongodb://127.0.0.1:{self.proxy.port}/?directConnection=true",
                            BITMEX_WS_URL=f"ws://127.0.0.1:{port}/realtime", SYMBOLS=",".join(names),
                            FLUSH_INTERVAL=str(FLUSH_INTERVAL), LEASE_TTL=str(LEASE_TTL), LOG_LEVEL="INFO")
        source = (["--replay", str(CAPTURES / scenario.capture), "--speed", "1"] if scenario.capture else
                  ["--sim", "--rate", str(RATE), "--depth", str(scenario.depth), "--seed", "1"])
        self._start("exchange", ["exchange", *source, "--host", "127.0.0.1", "--port", str(port)], REPO)

    def _start(self, name: str, args: list[str], tree: Path) -> ServiceProcess:
        env = {**self.env, "PYTHONPATH": str(tree)}
        # -P: the working directory (this tree) must not come ahead of PYTHONPATH in the child's sys.path.
        process = start_service(self.workdir, name, *args, env=env,
                                command=[sys.executable, "-P", "-m", "services.cli"])
        self.processes[name] = process
        return process

    def start(self, name: str, role: str) -> ServiceProcess:
        return self._start(name, [role], self.tree)

    def pids(self) -> dict[str, int]:
        pids = {name: process.pid for name, process in self.processes.items() if process.alive()}
        for name, server in (("redis-server", self.redis_server), ("nx-27017", self.mongo_server)):
            if server.process is not None:
                pids[name] = server.process.pid
        return pids

    @property
    def books(self) -> pymongo.collection.Collection[dict[str, Any]]:
        return self.mongo["scale"]["orderbooks"]

    def documents(self, symbols: Sequence[str]) -> dict[str, tuple[str, int]]:
        """(status, epoch) of the documents of `symbols`."""
        return {document["_id"]: (str(document.get("status")), int(document.get("epoch") or 0)) for document
                in self.books.find({"_id": {"$in": list(symbols)}}, {"status": 1, "epoch": 1})}

    def streams_filled(self) -> bool:
        pipe = self.client.pipeline(transaction=False)
        for name in self.names:
            pipe.xlen(self.keys.l2_stream(name))
        return all(length > 0 for length in pipe.execute())

    def backlog(self) -> tuple[int, int]:
        """(lag, pending) of the `l2builder` group over every stream."""
        pipe = self.client.pipeline(transaction=False)
        for name in self.names:
            pipe.xinfo_groups(self.keys.l2_stream(name))
        lag = pending = 0
        for groups in pipe.execute(raise_on_error=False):
            for group in groups if isinstance(groups, list) else ():
                if group["name"] == L2BUILDER_GROUP.encode():
                    lag += int(group["lag"] or 0)
                    pending += int(group["pending"])
        return lag, pending

    def xreadgroup(self) -> tuple[float, float]:
        """(calls, µs) of XREADGROUP so far."""
        stats = self.client.info("commandstats").get("cmdstat_xreadgroup", {})
        return float(stats.get("calls", 0)), float(stats.get("usec", 0))

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):
            if process.alive():
                process.terminate(20)
        self.proxy.stop()
        self.mongo.close()
        self.client.close()
        self.redis_server.stop()
        self.mongo_server.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {name} ---\n{process.logs()[-1500:]}" for name, process in self.processes.items())


def capture_symbols(path: Path) -> list[str]:
    """The symbols of the orderBookL2 partials of a capture."""
    found: set[str] = set()
    for _, text in iter_capture(path):
        if text.startswith('{"table":"orderBookL2"') and '"action":"partial"' in text[:80]:
            found.update(row["symbol"] for row in json.loads(text)["data"])
    return sorted(found)


class Unconfirmed:
    """Symbols whose document has not yet been seen `live` (above a given epoch): each poll reads only
    those, since every document read costs the MongoDB server the whole document, projection or not."""

    def __init__(self, stack: Stack, symbols: Sequence[str], above: dict[str, int] | None = None) -> None:
        self.stack, self.waiting, self.above = stack, set(symbols), above or {}

    def __call__(self) -> bool:
        for symbol, (status, epoch) in self.stack.documents(sorted(self.waiting)).items():
            if status == "live" and epoch > self.above.get(symbol, -1):
                self.waiting.discard(symbol)
        return not self.waiting


def wait_for(predicate: Any, timeout: float) -> float | None:
    """Seconds until `predicate()` holds (polled every POLL_SECONDS), None after `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(POLL_SECONDS)
    return None


def measure(workdir: Path, scenario: Scenario, variant: str, tree: Path, window: float) -> Run:
    names = capture_symbols(CAPTURES / scenario.capture) if scenario.capture else symbol_names(scenario.symbols)
    run = Run(scenario.name, variant, len(names))
    stack = Stack(workdir, tree, scenario, names)
    try:
        stack.start("top10", "top10")
        stack.start("ingest", "ingest")
        wait_until(stack.streams_filled, 120, "a partial in every stream")
        builders = [stack.start("l2builder-a", "l2builder"), stack.start("l2builder-b", "l2builder")]
        run.warmup_s = wait_for(Unconfirmed(stack, names), 180)
        if run.warmup_s is None:
            run.error = "not every book live after the warm-up"
        time.sleep(2)
        _window(stack, run, builders, window)
        _takeover(stack, run, builders)
    except Exception as exc:
        run.error = f"{type(exc).__name__}: {exc}"
        print(stack.logs()[-6000:], file=sys.stderr)
    finally:
        stack.stop()
    return run


def _window(stack: Stack, run: Run, builders: list[ServiceProcess], window: float) -> None:
    services = {builder.name: builder for builder in builders}

    def observed() -> tuple[int, float, float]:
        """(bytes sent to MongoDB, XREADGROUP calls, µs of XREADGROUP) over the window."""
        sent, (calls, usec) = stack.proxy.sent, stack.xreadgroup()
        time.sleep(window)
        calls_after, usec_after = stack.xreadgroup()
        return stack.proxy.sent - sent, calls_after - calls, usec_after - usec

    measured, (run.mongo_bytes, calls, usec) = measure_window(stack.pids(), services, observed)
    run.seconds = measured.seconds
    run.lag, run.pending = stack.backlog()

    def total(sample: str) -> float:
        return sum(measured.count(name, sample) for name in services)

    run.frames = total("bookstream_l2builder_frames_applied_total")
    run.rows = total("bookstream_l2builder_rows_applied_total")
    run.cpu_us = {name: spent / max(run.frames, 1) * 1e6 for name, spent in measured.cpu.items()}
    run.xreadgroup_calls_per_s = calls / run.seconds
    run.xreadgroup_us_per_call = usec / max(calls, 1)
    cycles = [measured.buckets(name, CYCLE) for name in services]
    if all(cycles):
        merged = [(bound, sum(buckets[index][1] for buckets in cycles)) for index, (bound, _) in enumerate(cycles[0])]
        if merged[-1][1]:
            run.cycle_p50, run.cycle_p99 = quantile(merged, 0.5), quantile(merged, 0.99)
    writes = total("bookstream_l2builder_flush_seconds_count")
    run.cycle_mean = run.seconds * len(builders) / writes if writes else None


def _takeover(stack: Stack, run: Run, builders: list[ServiceProcess]) -> None:
    survivor, victim = builders
    _, body = victim.health()
    theirs = json.loads(body)["symbols"] if body else []
    epochs = {symbol: epoch for symbol, (_, epoch) in stack.documents(theirs).items()}
    victim.kill()
    killed = time.monotonic()

    def holds_all() -> bool:
        _, detail = survivor.health()
        return bool(detail) and json.loads(detail)["owned"] == run.symbols

    run.leases_s = wait_for(holds_all, 60)
    live = wait_for(Unconfirmed(stack, theirs, epochs), 60)
    run.takeover_s = None if live is None else time.monotonic() - killed


# -- the report --------------------------------------------------------------------------------------


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f} s"


def table(runs: Sequence[Run]) -> list[str]:
    header = ("scenario", "code", "bytes to MongoDB per changed row", "flush cycle p50 / p99",
              "CPU µs per L2 frame: " + " / ".join(PROCESSES), "XREADGROUP calls/s, µs per call",
              "lag / pending at end", "warm-up to all live", "after kill -9: all leases / all live")
    rows = []
    for run in runs:
        cycle = (f"{run.cycle_p50:.2f} / {run.cycle_p99:.2f} s" if run.cycle_p50 is not None else
                 f"mean {run.cycle_mean:.2f} s" if run.cycle_mean is not None else "-")
        rows.append((run.scenario, run.variant + (f" ({run.error})" if run.error else ""),
                     f"{run.bytes_per_row:,.0f}", cycle,
                     " / ".join(f"{run.cpu_us.get(name, float('nan')):,.0f}" for name in PROCESSES),
                     f"{run.xreadgroup_calls_per_s:,.0f}, {run.xreadgroup_us_per_call:,.0f}",
                     f"{run.lag:,} / {run.pending:,}", _s(run.warmup_s), f"{_s(run.leases_s)} / {_s(run.takeover_s)}"))
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows)]


def section(runs: Sequence[Run], figure: str | None, quick: bool, baseline: str) -> list[str]:
    lines = [RESULTS_HEADING, "",
             f"`python -m bench.scale{' --quick' if quick else ''}`: `exchange` (the simulator at {RATE:,} changes/s "
             "over all symbols, depth 300 per side unless said, or a real capture at its own pace) -> ingest -> "
             f"top10 and two l2builders (FLUSH_INTERVAL {FLUSH_INTERVAL} s, LEASE_TTL {LEASE_TTL:g} s), each "
             f"scenario once with this tree's code and once with `{baseline}` (the baseline revision) run from "
             "a temporary git worktree. Bytes to MongoDB are counted on the wire by a proxy and divided by the "
             "rows the l2builders applied; CPU is per L2 frame applied in the window; lag / pending are the "
             "`l2builder` group's undelivered / delivered-but-not-durable entries at the end of the window; "
             "warm-up runs from the l2builders' start (streams already holding their partials) until every "
             "document is `live` (polled every 0.5 s, reading only the documents not yet seen live); takeover "
             "from `kill -9` of one l2builder until the survivor holds every "
             "lease, and until every document of the dead one's symbols is `live` under a new epoch (`-`: not "
             "within 60 s; a book that no longer changes, as at the end of a capture, is not written again). "
             "The flush cycle is the `bookstream_l2builder_flush_cycle_seconds` histogram where the code has it, "
             "else the mean from the number of bulk writes.", ""]
    if quick:
        lines += ["**Quick run: short windows, a smoke test; do not quote these numbers.**", ""]
    if figure:
        lines += [f"![scale]({figure})", ""]
    return [*lines, *table(runs), ""]


def write_section(path: Path, lines: list[str]) -> None:
    """Replace the section of RESULTS.md headed by `lines[0]` (from that heading to the next `## `) with `lines`,
    or insert them ahead of "How to run" where there is none yet. bench.cluster writes its section so too."""
    text = path.read_text() if path.exists() else "# bookstream benchmark results\n"
    body = text.split("\n")
    if lines[0] in body:
        start = body.index(lines[0])
        end = next((index for index in range(start + 1, len(body)) if body[index].startswith("## ")), len(body))
        body[start:end] = lines
    else:
        index = next((index for index, line in enumerate(body) if line == "## How to run"), len(body))
        body[index:index] = lines
    path.write_text("\n".join(body))


def run(workdir: Path, quick: bool, baseline: str = BASELINE, log: Any = print) -> list[Run]:
    scenarios = QUICK_SCENARIOS if quick else SCENARIOS
    window = 5.0 if quick else 15.0
    runs: list[Run] = []
    with checkout(baseline, workdir) as baseline_tree:
        for number, scenario in enumerate(scenarios):
            if scenario.capture and not (CAPTURES / scenario.capture).exists():
                log(f"scale: {CAPTURES / scenario.capture} not found, skipped")
                continue
            for variant, tree in (("this tree", REPO), (baseline, baseline_tree)):
                found = measure(workdir / f"run{number}-{len(runs)}", scenario, variant, tree,
                                min(window, 12.0) if scenario.capture else window)
                runs.append(found)
                log(f"scale: {scenario.name}, {variant}: {json.dumps(asdict(found))}")
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 and 100 symbols, short windows (under 2 minutes)")
    parser.add_argument("--baseline", default=BASELINE, help=f"the revision to compare with [{BASELINE}]")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                        help="where RESULTS.md and scale.png are [bench/]")
    args = parser.parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        runs = run(Path(tmp), args.quick, args.baseline)
    from bench import plots  # matplotlib only once there is something to draw

    figure = plots.scale(runs, args.out / "scale.png")
    lines = section(runs, figure, args.quick, args.baseline)
    write_section(args.out / "RESULTS.md", lines)
    print("\n".join(table(runs)))
    print(f"bench.scale: {len(runs)} runs in {time.monotonic() - started:,.0f} s")
    return 1 if any(found.error for found in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
