"""Command line of `bookstream dev`: the whole system on this machine, without Docker, in one command.

The first SIGINT, SIGTERM or SIGHUP stops everything cleanly (services first, then the servers); a second
one cuts the grace periods short. Data lives in a temporary directory removed at exit unless --data-dir.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from rich.console import Console
from rich.live import Live

from services.core.keys import SYMBOL_PATTERN
from services.dev.stack import DevStack, StackOptions
from services.dev.state import remove_state, running_state, state_path, write_state
from services.dev.view import compact_line, render_dev
from services.runtime.config import load_settings
from services.status.collect import Collector
from services.status.problems import Thresholds, analyze
from services.status.snapshot import Snapshot

DEFAULT_SYMBOLS = "XBTUSD,ETHUSD,SOLUSDT"
REFRESH_S = 1.0


def _symbols(raw: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))
    if not names or not all(SYMBOL_PATTERN.fullmatch(name) for name in names):
        raise argparse.ArgumentTypeError(f"expected comma-separated symbols, got {raw!r}")
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("MONGO_CONNECTION_STRING, when set, is used instead of starting a MongoDB-protocol server; "
                     "KEY_PREFIX, MONGO_DATABASE and the services' tuning settings (LOG_LEVEL, FLUSH_INTERVAL, ...) "
                     "are read from the environment too.")
    parser.add_argument("--symbols", type=_symbols, default=_symbols(DEFAULT_SYMBOLS),
                        help=f"symbols the simulator trades and the services follow (default {DEFAULT_SYMBOLS})")
    parser.add_argument("--rate", type=float, default=100.0,
                        help="order-book changes per second the simulator makes (default %(default)s)")
    parser.add_argument("--seed", type=int, default=1, help="simulator seed (default %(default)s)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="keep Redis (append-only), MongoDB and logs here instead of a temporary directory")
    parser.add_argument("--no-view", action="store_true",
                        help="print where everything runs, then only report processes that exit")
    parser.add_argument("--redis-port", type=int, default=6379,
                        help="port for Redis if free, else any free port (default %(default)s; 0 = any)")
    parser.add_argument("--mongo-port", type=int, default=27017,
                        help="port for the MongoDB-protocol server if free, else any (default %(default)s; 0 = any)")


class StopRequests:
    """Counts stop signals: the first asks for a clean stop, a second for a fast one."""

    def __init__(self) -> None:
        self.count = 0

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1

    @property
    def requested(self) -> bool:
        return self.count > 0


def run(args: argparse.Namespace) -> int:
    settings = load_settings(None)
    external_mongo = settings.mongo_url if "MONGO_CONNECTION_STRING" in os.environ else None
    path = state_path()
    other = running_state(path)
    if other is not None:
        print(f"bookstream dev: already running (pid {other.pid}, data in {other.data_dir}); stop it first",
              file=sys.stderr)
        return 1
    stop = StopRequests()
    stop.install()
    data_dir = args.data_dir.resolve() if args.data_dir else Path(tempfile.mkdtemp(prefix="bookstream-dev-"))
    stack = DevStack(StackOptions(
        symbols=args.symbols, rate=args.rate, seed=args.seed, data_dir=data_dir, persistent=args.data_dir is not None,
        redis_port=args.redis_port, mongo_port=args.mongo_port, external_mongo_url=external_mongo,
        key_prefix=settings.key_prefix, mongo_database=settings.mongo_database), dict(os.environ))
    code = 0
    try:
        stack.start(cancelled=lambda: stop.requested)
        write_state(path, stack.state())
        print(stack.describe(), flush=True)
        _show(stack, args.no_view, stop)
    except InterruptedError:
        pass
    except (RuntimeError, OSError) as exc:  # a child that failed to start, or the output gone (closed pipe)
        _say(str(exc))
        code = 1
    finally:
        _say("stopping the services, then the servers")
        stack.stop(hurry=lambda: stop.count > 1)
        remove_state(path, os.getpid())
        if args.data_dir is None:
            shutil.rmtree(data_dir, ignore_errors=True)
        _say("stopped" + ("" if args.data_dir is None else f"; data kept in {data_dir}"))
    return code


def _say(message: str) -> None:
    # After SIGHUP the terminal may be gone: a failed write must not keep the children from being stopped.
    with contextlib.suppress(OSError):
        print(f"bookstream dev: {message}", file=sys.stderr, flush=True)


def _sleep_until(deadline: float, stop: StopRequests) -> None:
    while not stop.requested and time.monotonic() < deadline:
        time.sleep(0.05)


def _show(stack: DevStack, no_view: bool, stop: StopRequests) -> None:
    """Refresh the view every second until a stop is requested; report a child that exits."""
    console = Console()
    collector = Collector(stack.redis_url, stack.mongo_url, stack.options.mongo_database, stack.options.key_prefix,
                          source="dev", symbols=stack.options.symbols)
    live = Live(console=console, auto_refresh=False) if console.is_terminal and not no_view else None
    reported: set[str] = set()
    previous: Snapshot | None = None
    try:
        if live is not None:
            live.start()
        while not stop.requested:
            deadline = time.monotonic() + REFRESH_S
            health = stack.health()
            for name, state in health.items():
                if state.startswith("exited") and name not in reported:
                    reported.add(name)
                    console.print(f"bookstream dev: {name} {state}; see {stack.log_dir / (name + '.log')}",
                                  style="bold red", highlight=False, soft_wrap=True)
            if not no_view:
                snapshot = analyze(collector.collect(), previous, Thresholds())
                if live is not None:
                    live.update(render_dev(snapshot, health, stack.describe()), refresh=True)
                else:
                    print(compact_line(snapshot, health), flush=True)
                previous = snapshot
            _sleep_until(deadline, stop)
    finally:
        if live is not None:
            with contextlib.suppress(OSError):
                live.stop()
        collector.close()
