"""The `bookstream` command: one subcommand per service, each in its own package.

Subcommands are imported only when chosen, so `bookstream --help` stays fast and one service's
dependencies never slow another's start-up.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys
from collections.abc import Sequence
from types import ModuleType

from services.runtime.config import ConfigError

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "ingest": ("services.ingest.cli", "BitMEX websocket -> per-symbol Redis Streams"),
    "top10": ("services.top10.cli", "orderBook10 streams -> <prefix>:top10:{SYM} keys (consumer group)"),
    "l2builder": ("services.l2builder.cli", "orderBookL2 streams -> full books in MongoDB (consumer group)"),
    "exchange": ("services.exchange.cli", "BitMEX-protocol websocket server: --sim or --replay FILE"),
    "status": ("services.status.cli", "streams, groups, lag, owners and book freshness (--json)"),
    "dev": ("services.dev.cli", "the whole stack on this machine without Docker, with a live view"),
}


def build_parser(argv: Sequence[str]) -> tuple[argparse.ArgumentParser, ModuleType | None]:
    parser = argparse.ArgumentParser(
        prog="bookstream", description="BitMEX order books into Redis and MongoDB, durably and at scale.")
    parser.add_argument("--version", action="version",
                        version=f"bookstream {importlib.metadata.version('bookstream')}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((arg for arg in argv if not arg.startswith("-")), None)
    module = None
    for name, (module_name, summary) in SUBCOMMANDS.items():
        sub = commands.add_parser(name, help=summary, description=summary)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_arguments(sub)
    return parser, module


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser, module = build_parser(args_list)
    args = parser.parse_args(args_list)
    assert module is not None  # argparse rejected any other command already
    try:
        code: int = module.run(args)
    except ConfigError as exc:
        print(f"bookstream {args.command}: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    raise SystemExit(main())
