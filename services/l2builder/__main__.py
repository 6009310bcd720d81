"""`python -m services.l2builder`: the same as `bookstream l2builder`."""

import sys

from services.cli import main

raise SystemExit(main(["l2builder", *sys.argv[1:]]))
