"""`python -m services.dev`: the same as `bookstream dev`."""

import sys

from services.cli import main

raise SystemExit(main(["dev", *sys.argv[1:]]))
