"""`python -m services.top10`: the same as `bookstream top10`."""

import sys

from services.cli import main

raise SystemExit(main(["top10", *sys.argv[1:]]))
