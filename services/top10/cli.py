"""Command line of `bookstream top10`."""

from __future__ import annotations

import argparse

from services.runtime.config import add_settings_arguments, load_settings
from services.runtime.lifecycle import run_service
from services.top10.service import Top10Service


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_settings_arguments(parser, "top10")


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    service = Top10Service(settings)
    return run_service("top10", settings, service.main, service.health)
