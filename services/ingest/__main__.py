"""`python -m services.ingest`: the same as `bookstream ingest`."""

import sys

from services.cli import main

raise SystemExit(main(["ingest", *sys.argv[1:]]))
