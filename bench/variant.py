"""`python -m bench.variant [--asyncio-loop] [--no-gc-freeze] COMMAND ...`: `bookstream COMMAND ...` with
one of the original design's speed ideas switched off, so a benchmark can measure what it is worth.

Every service runs on uvloop and freezes its start-up objects out of the garbage collector
(`services/runtime/lifecycle.py`), with no switch: production should not have one. This launcher undoes
either in its own process before handing over to the normal command line.
"""

from __future__ import annotations

import argparse
import gc
import sys

from services import cli
from services.runtime import lifecycle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.variant", description=__doc__.splitlines()[0])
    parser.add_argument("--asyncio-loop", action="store_true", help="the standard asyncio event loop, not uvloop")
    parser.add_argument("--no-gc-freeze", action="store_true", help="skip gc.freeze() after start-up")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the bookstream subcommand and its arguments")
    args = parser.parse_args(argv)
    if args.asyncio_loop:
        lifecycle._loop_factory = lambda: None
    if args.no_gc_freeze:
        gc.freeze = lambda: None
    return cli.main(args.command)


if __name__ == "__main__":
    sys.exit(main())
