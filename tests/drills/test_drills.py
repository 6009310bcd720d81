"""Fault drills on the simulator and on a replayed real capture: after minutes' worth of kills, server
restarts, connection storms and bad input, every book and top10 key equals the exchange's truth."""

from __future__ import annotations

import os
from pathlib import Path

from testkit.chaos import CaptureTruth, ChaosPlan, SimTruth, Stack, run_drill
from testkit.harness import MongoServer, RedisServer
from tests.conftest import RunService

SEED = int(os.environ.get("BOOKSTREAM_DRILL_SEED", "20260923"))
SIM_SYMBOLS = ("XBTUSD", "ETHUSD", "SOLUSD", "XRPUSD", "DOGEUSD", "LTCUSD")
SIM_RATE = 300
CHAOS_SECONDS = 30.0
CAPTURE = "2021-04-17.capture"


def test_simulator_drill(run_service: RunService, redis_server: RedisServer, mongo_server: MongoServer,
                         key_prefix: str, mongo_database: str) -> None:
    plan = ChaosPlan(seed=SEED, seconds=CHAOS_SECONDS)
    # The market starts with the exchange, so it runs through the start-up and the chaos and then stops.
    frames = int(SIM_RATE * (CHAOS_SECONDS + 8))
    stack = Stack(run_service, redis_server, mongo_server, key_prefix, mongo_database, SIM_SYMBOLS,
                  ["--sim", "--symbols", ",".join(SIM_SYMBOLS), "--rate", str(SIM_RATE),
                   "--seed", str(SEED), "--max-frames", str(frames)], plan)
    report = run_drill("simulator", stack, SimTruth(stack.exchange_port, SIM_SYMBOLS))
    assert report.mismatches == [], report.summary()
    assert report.findings.books_equal == len(SIM_SYMBOLS) == report.findings.top10_equal
    assert sum(report.done.values()) >= 10, "the drill did too little to prove anything"


def test_replayed_capture_drill(run_service: RunService, redis_server: RedisServer, mongo_server: MongoServer,
                                key_prefix: str, mongo_database: str, captures_dir: Path) -> None:
    capture = captures_dir / CAPTURE
    truth = CaptureTruth(capture)
    plan = ChaosPlan(seed=SEED + 1, seconds=CHAOS_SECONDS)
    stack = Stack(run_service, redis_server, mongo_server, key_prefix, mongo_database, truth.symbols,
                  ["--replay", str(capture), "--speed", "3"], plan)
    report = run_drill("capture", stack, truth)
    assert report.mismatches == [], report.summary()
    assert report.findings.books_equal == len(truth.symbols) == 10
    assert sum(report.done.values()) >= 10, "the drill did too little to prove anything"
