"""The README stays true to the code: every setting, subcommand and the test command are documented."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

from prometheus_client import REGISTRY

from services.cli import SUBCOMMANDS
from services.common.config import SETTINGS

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def test_every_setting_is_in_the_configuration_table() -> None:
    rows = {match.group(1): match.group(0) for match in re.finditer(r"^\| `([A-Z0-9_]+)` \|.*$", README, re.M)}
    for setting in SETTINGS:
        assert setting.env in rows, f"{setting.env} is missing from the README configuration table"
        assert f"`{setting.flag}`" in rows[setting.env]


def test_every_subcommand_is_documented() -> None:
    for name in SUBCOMMANDS:
        assert f"bookstream {name}" in README, f"`bookstream {name}` is not in the README"


def test_ci_runs_the_readme_test_command() -> None:
    assert "```sh\nmake test\n```" in README
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_every_metric_is_documented() -> None:
    for module in ("services.exchange.server", "services.ingest.metrics", "services.top10.metrics",
                   "services.l2builder.metrics"):
        importlib.import_module(module)
    names = {metric.name for metric in REGISTRY.collect() if metric.name.startswith("bookstream_")}
    assert len(names) > 40
    for name in sorted(names):
        documented = f"`{name}`" in README or f"`{name}_total`" in README
        assert documented, f"metric {name} is not in the README"
