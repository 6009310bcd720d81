"""`bookstream ingest` options beyond the shared settings: recording and extra tables."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from services.ingest.cli import add_arguments, options_from
from services.runtime.config import ConfigError, load_settings


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


def test_retry_after_max_is_a_validated_setting_with_a_flag() -> None:
    assert load_settings(parse("--retry-after-max", "1.5"), {}).retry_after_max == 1.5
    assert load_settings(parse(), {}).retry_after_max == 300.0
    for bad in ("-1", "soon", "inf"):
        with pytest.raises(ConfigError, match="RETRY_AFTER_MAX"):
            load_settings(parse(), {"RETRY_AFTER_MAX": bad})


def test_the_help_documents_the_exit_codes() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert "3 stopped with entries lost" in parser.format_help()
