"""`python -m bench.variant [--asyncio-loop] [--no-gc-freeze] [--gc-threshold N] COMMAND ...`: `bookstream
COMMAND ...` with one speed idea switched off, so a benchmark can measure what it is worth.

Every service runs on uvloop and freezes its start-up objects out of the garbage collector
(`services/runtime/lifecycle.py`), and l2builder collects the youngest generation rarely
(`GC_GEN0_THRESHOLD`), with no switch: production should not have one. This launcher undoes any of them
in its own process before handing over to the normal command line.
"""

from __future__ import annotations

import argparse
import gc
import sys

from services import cli
from services.l2builder import worker
from services.runtime import lifecycle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.variant", description=__doc__.splitlines()[0])
    parser.add_argument("--asyncio-loop", action="store_true", help="the standard asyncio event loop, not uvloop")
    parser.add_argument("--no-gc-freeze", action="store_true", help="skip gc.freeze() after start-up")
    parser.add_argument("--gc-threshold", type=int, default=None, metavar="N",
                        help="l2builder collects the youngest generation every N allocations (Python's default: 700)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the bookstream subcommand and its arguments")
    args = parser.parse_args(argv)
    if args.asyncio_loop:
        lifecycle._loop_factory = lambda: None
    if args.no_gc_freeze:
        gc.freeze = lambda: None
    if args.gc_threshold is not None:
        worker.GC_GEN0_THRESHOLD = args.gc_threshold
    return cli.main(args.command)


if __name__ == "__main__":
    sys.exit(main())
