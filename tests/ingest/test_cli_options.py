"""`bookstream ingest` options beyond the shared settings: recording and extra tables."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from services.common.config import ConfigError
from services.ingest.cli import add_arguments, options_from


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_recording_and_extra_tables_become_options() -> None:
    options = options_from(parse("--record", "out/x.capture", "--record-rotate-mb", "1.5",
                                 "--record-rotate-seconds", "60", "--extra-tables", "trade, quote,trade"))
    assert options.record == Path("out/x.capture")
    assert (options.record_rotate_bytes, options.record_rotate_seconds) == (1_500_000, 60.0)
    assert options.extra_tables == ("trade", "quote")


def test_defaults_record_nothing_and_publish_only_the_book_tables() -> None:
    options = options_from(parse())
    assert (options.record, options.extra_tables, options.record_rotate_bytes) == (None, (), 0)


@pytest.mark.parametrize("argv", [("--extra-tables", "orderBook10"), ("--extra-tables", "bad name"),
                                  ("--record-rotate-mb", "-1")])
def test_invalid_options_are_configuration_errors(argv: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError):
        options_from(parse(*argv))
