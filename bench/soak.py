"""The fault drills of `tests/drills`, longer and harder: `python -m bench.soak [--seconds S] [--seed N]`.

Same drill logic (`testkit/chaos.py`), with three top10 and three l2builder instances, a faster
market over more symbols, bigger storms and 429s without `Retry-After` (ingest must then back off for
seconds, as the venue demands), on the simulator and on every real capture that is present. Each drill
prints its one-line report; any mismatch makes the command exit with status 1.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.book import CAPTURES
from bench.pipeline import Launcher, launcher
from testkit.chaos import CaptureTruth, ChaosPlan, DrillReport, SimTruth, Stack, Truth, run_drill
from testkit.harness import MongoServer, RedisServer, ServiceProcess

SIM_SYMBOLS = ("XBTUSD", "ETHUSD", "SOLUSDT", "XRPUSDT", "DOGEUSDT", "LINKUSDT", "ADAUSDT", "LTCUSD", "BCHUSD",
               "XBTEUR")
SIM_RATE = 1_000
CAPTURE_SPEED = {"2021-04-05.capture": 6.0, "2021-04-17.capture": 2.0, "2021-07-22.capture": 2.0}
"""Replay speed of each capture: a pass of 20 s at most, so the last one after the chaos ends soon."""


def soak_plan(seed: int, seconds: float) -> ChaosPlan:
    # Two 429s without Retry-After already keep ingest away for 15-25 s: more would mostly measure waiting.
    return ChaosPlan(seed=seed, seconds=seconds, pause=(0.2, 1.0), top10_instances=3, l2builder_instances=3,
                     storm=5, rejects=2, retry_after=None, settle_seconds=180.0)


@contextmanager
def drill_stack(workdir: Path, symbols: tuple[str, ...] | list[str], exchange_args: list[str],
                plan: ChaosPlan) -> Iterator[Stack]:
    """A stack on fresh servers in `workdir`, everything stopped on the way out."""
    redis_server = RedisServer(workdir / "redis").start()
    mongo_server = MongoServer(workdir / "mongo").start()
    try:
        with launcher(workdir) as processes:
            yield Stack(_start_with(processes), redis_server, mongo_server, f"soak{uuid.uuid4().hex[:6]}", "soak",
                        symbols, exchange_args, plan)
    finally:
        redis_server.kill()
        mongo_server.kill()


def _start_with(processes: Launcher) -> Callable[..., ServiceProcess]:
    """The `run_service` calling convention the drills use, on a benchmark launcher."""

    def start(*args: str, env: dict[str, str], healthy: bool = True, name: str, **_: Any) -> ServiceProcess:
        return processes.start(name, *args, env=env, healthy=healthy)

    return start


def run(workdir: Path, seconds: float, seed: int, captures: Sequence[str] = tuple(CAPTURE_SPEED),
        log: Callable[[str], None] = print) -> list[DrillReport]:
    """The simulator drill for `seconds`, then one drill per capture of `captures` for half as long."""
    reports = []
    plan = soak_plan(seed, seconds)
    frames = int(SIM_RATE * (seconds + 10))
    sim_dir = workdir / "sim"
    with drill_stack(sim_dir, SIM_SYMBOLS, ["--sim", "--symbols", ",".join(SIM_SYMBOLS), "--rate", str(SIM_RATE),
                                            "--seed", str(seed), "--max-frames", str(frames)], plan) as stack:
        reports.append(run_drill("soak-simulator", stack, SimTruth(stack.exchange_port, SIM_SYMBOLS)))
    for number, name in enumerate(captures, start=1):
        capture, speed = CAPTURES / name, CAPTURE_SPEED[name]
        if not capture.exists():
            log(f"soak: {capture} not found, its drill skipped")
            continue
        truth: Truth = CaptureTruth(capture)
        capture_plan = soak_plan(seed + number, seconds / 2)
        with drill_stack(workdir / name, sorted(truth.books()), ["--replay", str(capture), "--speed", str(speed)],
                         capture_plan) as stack:
            reports.append(run_drill(f"soak-{name.removesuffix('.capture')}", stack, truth))
    return reports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="chaos seconds of the simulator drill [120]")
    parser.add_argument("--seed", type=int, default=20260923, help="seed of the chaos and of the market")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        reports = run(Path(tmp), args.seconds, args.seed)
    return 1 if any(report.mismatches for report in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
