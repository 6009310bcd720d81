"""Command line of `bookstream l2builder`: settings in, the service run until SIGTERM."""

from __future__ import annotations

import argparse

from services.l2builder.worker import L2Builder
from services.runtime.config import add_settings_arguments, load_settings
from services.runtime.lifecycle import run_service


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_settings_arguments(parser, "l2builder")


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    builder = L2Builder(settings)
    return run_service("l2builder", settings, builder.main, builder.health)
