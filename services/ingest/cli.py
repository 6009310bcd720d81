"""Command line of `bookstream ingest`: the shared settings plus recording and extra tables."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from services.core.bitmex import L2_TABLES, ORDERBOOK10_TABLE
from services.ingest.service import EXIT_ENTRIES_LOST, IngestOptions, IngestService
from services.runtime.config import ConfigError, add_settings_arguments, load_settings
from services.runtime.lifecycle import run_service

TABLE_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")


EXIT_CODES = (f"exit codes: 0 stopped cleanly; 1 an internal task died; 2 configuration error; "
              f"{EXIT_ENTRIES_LOST} stopped with entries lost (Redis did not take them before the drain timeout)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXIT_CODES
    add_settings_arguments(parser, "ingest")
    group = parser.add_argument_group("ingest")
    group.add_argument("--record", metavar="FILE", type=Path,
                       help="also write every received frame to FILE in the capture format (appended to)")
    group.add_argument("--record-rotate-mb", metavar="MB", type=float, default=0.0,
                       help="with --record, start a new file FILE_STEM.<UTC time>.EXT after this many MB (0 = never)")
    group.add_argument("--record-rotate-seconds", metavar="S", type=float, default=0.0,
                       help="with --record, start a new file after this many seconds (0 = never)")
    group.add_argument("--extra-tables", metavar="LIST", default="",
                       help="other tables to subscribe per symbol and publish to <prefix>:<table>:{SYM}, "
                            "e.g. trade,quote (default: none)")


def options_from(args: argparse.Namespace) -> IngestOptions:
    """The ingest options of `args`; ConfigError (exit code 2) on an invalid value."""
    if args.record_rotate_mb < 0 or args.record_rotate_seconds < 0:
        raise ConfigError("--record-rotate-mb and --record-rotate-seconds must be >= 0")
    tables = tuple(dict.fromkeys(name.strip() for name in args.extra_tables.split(",") if name.strip()))
    for table in tables:
        if not TABLE_PATTERN.fullmatch(table):
            raise ConfigError(f"--extra-tables: invalid table name {table!r}")
        if table in L2_TABLES or table == ORDERBOOK10_TABLE:
            raise ConfigError(f"--extra-tables: {table} is a book table, published already (see L2_TABLE)")
    return IngestOptions(record=args.record, record_rotate_bytes=int(args.record_rotate_mb * 1_000_000),
                         record_rotate_seconds=args.record_rotate_seconds, extra_tables=tables)


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    service = IngestService(settings, options_from(args))
    return run_service("ingest", settings, service.main, service.health)
