"""Command line of `bookstream top10`."""

from __future__ import annotations

import argparse
import sys

from services.common.config import add_settings_arguments, load_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_settings_arguments(parser)


def run(args: argparse.Namespace) -> int:
    load_settings(args)
    print("bookstream top10: not implemented yet", file=sys.stderr)
    return 1
