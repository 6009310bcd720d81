"""The `bookstream` console script and `python -m services.<name>` entry points, run for real."""

from __future__ import annotations

import subprocess
import sys

import pytest

from services.cli import SUBCOMMANDS
from tests.harness import base_env, bookstream_argv


def run(argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=base_env(**env))


def test_help_lists_every_subcommand() -> None:
    result = run([*bookstream_argv(), "--help"])
    assert result.returncode == 0
    for name in ("ingest", "top10", "l2builder", "exchange", "status"):
        assert name in result.stdout
    assert set(SUBCOMMANDS) >= {"ingest", "top10", "l2builder", "exchange", "status"}


@pytest.mark.parametrize(
    ("command", "env", "variable"),
    [
        ("ingest", {"SYMBOLS": ""}, "SYMBOLS"),
        ("top10", {"REDIS_URL": "notaurl"}, "REDIS_URL"),
        ("l2builder", {"FLUSH_INTERVAL": "-0.5"}, "FLUSH_INTERVAL"),
        ("status", {"REDIS_URL": "redis://user:pa55word@host:bad/0"}, "REDIS_URL"),
    ],
)
def test_invalid_configuration_exits_2_with_one_line(command: str, env: dict[str, str], variable: str) -> None:
    result = run([*bookstream_argv(), command], **env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert variable in lines[0]
    assert "pa55word" not in result.stderr


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_python_dash_m_entry_points(name: str) -> None:
    result = run([sys.executable, "-m", f"services.{name}", "--help"])
    assert result.returncode == 0, result.stderr
    assert "--redis-url" in result.stdout or "--port" in result.stdout or "--symbols" in result.stdout
