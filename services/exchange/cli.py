"""Command line of `bookstream exchange`: a BitMEX-protocol server, simulated (`--sim`) or replayed.

The symbols of `--sim` come from the shared SYMBOLS setting (`--symbols XBTUSD,ETHUSD`), which may also
be a count (`--symbols 50`) of generated names; the chosen names are printed in the start-up line.
"""

from __future__ import annotations

import argparse
import asyncio
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from services.core.capture import CaptureError
from services.exchange.client import DEFAULT_MAX_QUEUE_BYTES
from services.exchange.faults import FaultPlan
from services.exchange.market import Market, make_instrument, symbol_names
from services.exchange.replay import Recording, ReplayFeed, load_recording
from services.exchange.server import ExchangeServer, Feed
from services.exchange.simulator import SimFeed, WallClock
from services.runtime.config import ConfigError, Settings, add_settings_arguments, load_settings
from services.runtime.lifecycle import run_service
from services.runtime.logs import EventLog

MAX_SYMBOLS = 10_000
MAX_DEPTH = 10_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("--sim simulates the symbols of --symbols (the SYMBOLS setting): a comma-separated "
                     "list, or a number of generated symbols. Endpoints on --port: ws /realtime, "
                     "GET /api/v1/orderBook/L2?symbol=S&depth=0 (truth), /healthz, /_faults/{drop,reject,"
                     "malformed,stall,error}.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--sim", action="store_true", help="serve a seeded synthetic market")
    source.add_argument("--replay", metavar="FILE", type=Path, help="serve a capture (<epoch seconds> <frame>)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="listening address, 0.0.0.0 for every interface [default 127.0.0.1]")
    parser.add_argument("--port", type=_integer(0, 65535), default=8080, help="listening port [default 8080]")
    parser.add_argument("--client-queue-bytes", type=_integer(1), default=DEFAULT_MAX_QUEUE_BYTES, metavar="BYTES",
                        help="a client with more deltas than this waiting to be sent is disconnected as too "
                             "slow [16 MiB]")

    sim = parser.add_argument_group("simulator (--sim)")
    sim.add_argument("--rate", type=_number(0), default=500.0,
                     help="orderBookL2 frames per second over all symbols, 0 = as fast as possible [500]")
    sim.add_argument("--seed", type=int, default=1, help="seed of the market [1]")
    sim.add_argument("--depth", type=_integer(1, MAX_DEPTH), default=300, help="levels per side [300]")
    sim.add_argument("--max-frames", type=_integer(0), default=0, metavar="N",
                     help="stop changing the market after N orderBookL2 frames and stay up, 0 = never [0]")
    sim.add_argument("--historical", action="store_true",
                     help="pre-2023 format: no price on update/delete rows, ids derived from the price")
    sim.add_argument("--ob10-throttle", type=_number(0), default=0.0, metavar="SECONDS",
                     help="send orderBook10 at most once per SECONDS per symbol, 0 = on every change [0]")

    replay = parser.add_argument_group("replay (--replay FILE)")
    pace = replay.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=_number(0, exclusive=True), default=1.0,
                      help="playback speed: 2 plays twice as fast as recorded [1]")
    pace.add_argument("--max", action="store_true", help="play as fast as each client reads")
    replay.add_argument("--loop", action="store_true", help="start over at the end of the recording")

    faults = parser.add_argument_group("fault injection (per connection; frames = data frames sent to it)")
    faults.add_argument("--drop-after", type=_integer(0), default=0, metavar="N",
                        help="cut each connection after N frames")
    faults.add_argument("--drop-every", type=_number(0), default=0.0, metavar="SECONDS",
                        help="cut each connection after a random 0.5x-1.5x SECONDS")
    faults.add_argument("--reject", type=_integer(0), default=0, metavar="N",
                        help="answer the first N connection attempts with HTTP 429")
    faults.add_argument("--retry-after", type=_number(0), default=0.0, metavar="SECONDS",
                        help="Retry-After header of those 429 answers")
    faults.add_argument("--malformed-every", type=_integer(0), default=0, metavar="N",
                        help="send a malformed frame after every N frames")
    faults.add_argument("--stall-after", type=_integer(0), default=0, metavar="N",
                        help="after N frames, send nothing for --stall-for seconds")
    faults.add_argument("--stall-for", type=_number(0), default=10.0, metavar="SECONDS", help="[10]")
    faults.add_argument("--error-after", type=_integer(0), default=0, metavar="N",
                        help="send an error frame after N frames")
    add_settings_arguments(parser, "exchange")


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    plan = FaultPlan(drop_after=args.drop_after, drop_every=args.drop_every, reject=args.reject,
                     retry_after=args.retry_after, malformed_every=args.malformed_every,
                     stall_after=args.stall_after, stall_for=args.stall_for, error_after=args.error_after)
    names = _sim_symbols(settings) if args.sim else []
    recording = _recording(args.replay) if args.replay is not None else None
    log = EventLog("exchange")
    servers: list[ExchangeServer] = []

    async def main(stop: asyncio.Event) -> int:
        if recording is not None:
            feed, describe = _replay(args, recording, log)
        else:
            feed, describe = _sim(args, names, log)
        server = ExchangeServer(feed, plan, args.client_queue_bytes, args.seed, log)
        servers.append(server)
        return await server.serve(args.host, args.port, stop, describe)

    def check() -> tuple[bool, dict[str, Any]]:
        return servers[0].health() if servers else (False, {"starting": True})

    return run_service("exchange", settings, main, check)


def _sim_symbols(settings: Settings) -> list[str]:
    symbols = list(settings.symbols)
    if len(symbols) == 1 and symbols[0].isdigit():
        count = int(symbols[0])
        if not 1 <= count <= MAX_SYMBOLS:
            raise ConfigError(f"SYMBOLS: a symbol count must be between 1 and {MAX_SYMBOLS}, got {count}")
        return symbol_names(count)
    return symbols


def _sim(args: argparse.Namespace, names: list[str], log: EventLog) -> tuple[Feed, dict[str, Any]]:
    clock = WallClock()
    market = Market([make_instrument(name, position, args.seed) for position, name in enumerate(names)],
                    args.depth, args.seed, args.historical, clock.text())
    feed = SimFeed(market, args.rate, args.max_frames, args.ob10_throttle, log, clock)
    return feed, {"mode": "sim", "seed": args.seed, "rate": args.rate, "depth": args.depth,
                  "historical": args.historical, "max_frames": args.max_frames, "symbols": ",".join(names)}


def _recording(path: Path) -> Recording:
    try:
        recording = load_recording(path)
    except (OSError, CaptureError) as exc:
        raise ConfigError(f"--replay: {exc}") from None
    if not recording.frames:
        raise ConfigError(f"--replay: {path} holds no table frame")
    return recording


def _replay(args: argparse.Namespace, recording: Recording, log: EventLog) -> tuple[Feed, dict[str, Any]]:
    feed = ReplayFeed(recording, args.speed, not args.max, args.loop, log)
    return feed, {"mode": "replay", "file": str(args.replay), "frames": len(recording.frames),
                  "skipped_lines": recording.skipped, "speed": "max" if args.max else args.speed,
                  "loop": args.loop, "symbols": ",".join(sorted(recording.symbols))}


def _integer(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {raw!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value

    return parse


def _number(minimum: float, exclusive: bool = False) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {raw!r}") from None
        if not math.isfinite(value) or value < minimum or (exclusive and value == minimum):
            raise argparse.ArgumentTypeError(f"must be a finite number {'>' if exclusive else '>='} {minimum}")
        return value

    return parse
