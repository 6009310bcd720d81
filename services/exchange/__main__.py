"""`python -m services.exchange`: the same as `bookstream exchange`."""

import sys

from services.cli import main

raise SystemExit(main(["exchange", *sys.argv[1:]]))
