"""`python -m services.status`: the same as `bookstream status`."""

import sys

from services.cli import main

raise SystemExit(main(["status", *sys.argv[1:]]))
