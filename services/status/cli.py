"""Command line of `bookstream status`: one snapshot as a table or JSON, once or every few seconds.

With none of REDIS_URL, MONGO_CONNECTION_STRING, KEY_PREFIX, MONGO_DATABASE given (flag or environment),
it looks at the stack a running `bookstream dev` announced in its state file before falling back to the
defaults, so `bookstream status` in a second terminal just works.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import replace

from rich.console import Console
from rich.live import Live

from services.dev.state import running_state
from services.runtime.config import SETTINGS, Settings, add_settings_arguments, load_settings
from services.status.collect import Collector
from services.status.problems import Thresholds, analyze
from services.status.render import render_status
from services.status.snapshot import Snapshot

LOCATION_FIELDS = ("redis_url", "mongo_url", "key_prefix", "mongo_database")
EPILOG = """exit status: 0 no problems, 1 problems found (or Redis unreachable), 2 configuration error.
--json prints the schema documented in services/status/snapshot.py (bookstream.status/1); with --watch,
one document per line."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    parser.add_argument("--watch", nargs="?", type=float, const=2.0, default=None, metavar="SECONDS",
                        help="refresh every SECONDS (default 2) until Ctrl-C; lag growth is judged between samples")
    parser.add_argument("--lag-high", type=int, default=Thresholds().lag_high, metavar="ENTRIES",
                        help="report a group with at least this many entries left to read (default %(default)s)")
    add_settings_arguments(parser, "status")


def resolve_settings(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> tuple[Settings, str]:
    """The settings to use and where they came from: "settings" (flags/env/defaults) or "dev"."""
    env = os.environ if environ is None else environ
    settings = load_settings(args, env)
    env_names = {setting.field: setting.env for setting in SETTINGS}
    if any(getattr(args, f"setting_{name}", None) is not None or env_names[name] in env for name in LOCATION_FIELDS):
        return settings, "settings"
    dev = running_state()
    if dev is None:
        return settings, "settings"
    return replace(settings, redis_url=dev.redis_url, mongo_url=dev.mongo_url, key_prefix=dev.key_prefix,
                   mongo_database=dev.mongo_database), "dev"


def thresholds(settings: Settings, lag_high: int) -> Thresholds:
    # A consumer is presumed dead well after others were allowed to claim its entries.
    return Thresholds(stale_after_s=settings.health_stale_after, lag_high=lag_high,
                      dead_idle_s=max(30.0, 3 * settings.claim_idle))


def run(args: argparse.Namespace) -> int:
    settings, source = resolve_settings(args)
    limits = thresholds(settings, args.lag_high)
    collector = Collector(settings.redis_url, settings.mongo_url, settings.mongo_database, settings.key_prefix,
                          source=source)
    try:
        if args.watch is None:
            snapshot = analyze(collector.collect(), None, limits)
            _emit(snapshot, args.json, _console())
            return 1 if snapshot.problems else 0
        return _watch(collector, limits, max(args.watch, 0.2), args.json)
    finally:
        collector.close()


def _emit(snapshot: Snapshot, as_json: bool, console: Console) -> None:
    if as_json:
        try:
            sys.stdout.buffer.write(snapshot.to_json() + b"\n")
            sys.stdout.flush()
        except BrokenPipeError:  # `--json --watch | head`: leave quietly, as rich does for the table
            console.on_broken_pipe()
    else:
        console.print(render_status(snapshot))


def _console() -> Console:
    """A terminal's own width; a pipe or file gets a wide table rather than 80 folded columns."""
    console = Console()
    return console if console.is_terminal or "COLUMNS" in os.environ else Console(width=160)


def _watch(collector: Collector, limits: Thresholds, interval: float, as_json: bool) -> int:
    console = _console()
    previous: Snapshot | None = None
    live = Live(console=console, auto_refresh=False) if console.is_terminal and not as_json else None
    try:
        if live is not None:
            live.start()
        while True:
            snapshot = analyze(collector.collect(), previous, limits)
            if live is not None:
                live.update(render_status(snapshot), refresh=True)
            else:
                _emit(snapshot, as_json, console)
            previous = snapshot
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0
    finally:
        if live is not None:
            live.stop()
