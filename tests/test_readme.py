"""The README and docs/ stay true to the code: every setting, subcommand, metric and status problem is
documented, every page is linked, and the README's Python snippet survives every state it documents."""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib
import io
import re
from pathlib import Path
from typing import Any

import pymongo
import redis
from prometheus_client import REGISTRY

from services.cli import SUBCOMMANDS
from services.runtime.config import SETTINGS

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
DOCS = REPO / "docs"
METRIC_MODULES = ("services.exchange.server", "services.exchange.client", "services.exchange.simulator",
                  "services.ingest.metrics", "services.top10.metrics", "services.l2builder.metrics")
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)\s]*)?\)")


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


def exported_metrics() -> dict[str, tuple[str, list[str] | None]]:
    """Every bookstream metric the services register: documented name -> (type, label names or None when
    a custom collector does not declare them)."""
    for module in METRIC_MODULES:
        importlib.import_module(module)
    declared = {collector._name: list(collector._labelnames)
                for collector in REGISTRY._collector_to_names
                if hasattr(collector, "_labelnames") and hasattr(collector, "_name")}
    exported: dict[str, tuple[str, list[str] | None]] = {}
    for metric in REGISTRY.collect():
        if metric.name.startswith("bookstream_"):
            name = f"{metric.name}_total" if metric.type == "counter" else metric.name
            exported[name] = (metric.type, declared.get(metric.name))
    return exported


def documented_metrics() -> dict[str, tuple[str, list[str]]]:
    rows = re.finditer(r"^\| `(bookstream_\w+)` \| (\w+) \| ([^|]*) \|", (DOCS / "metrics.md").read_text(), re.M)
    return {row.group(1): (row.group(2), re.findall(r"`(\w+)`", row.group(3))) for row in rows}


def test_every_metric_is_documented_with_its_type_and_labels() -> None:
    exported, documented = exported_metrics(), documented_metrics()
    assert len(exported) > 60
    for name, (kind, labels) in sorted(exported.items()):
        assert name in documented, f"metric {name} is not in docs/metrics.md"
        assert documented[name][0] == kind, f"{name} is a {kind}, docs/metrics.md says {documented[name][0]}"
        if labels is not None:
            assert documented[name][1] == labels, f"{name} has labels {labels}, docs say {documented[name][1]}"
    assert not set(documented) - set(exported), f"documented but not exported: {set(documented) - set(exported)}"
    assert "docs/metrics.md" in README


def test_every_status_problem_is_documented() -> None:
    kinds = set(re.findall(r'Problem\("(\w+)"', (REPO / "services" / "status" / "problems.py").read_text()))
    table = "\n".join(line for line in (DOCS / "status.md").read_text().splitlines() if line.startswith("| `"))
    assert len(kinds) > 10
    for kind in sorted(kinds):
        assert f"`{kind}`" in table, f"status problem {kind} is not in docs/status.md"


def test_every_docs_page_is_linked_and_every_link_resolves() -> None:
    pages = sorted(DOCS.glob("*.md"))
    assert pages
    linked = {match.group(1) for match in LINK.finditer(README)}
    for page in pages:
        assert f"docs/{page.name}" in linked, f"docs/{page.name} is not linked from the README"
    for source in [REPO / "README.md", *pages]:
        for match in LINK.finditer(source.read_text()):
            target = match.group(1)
            if "://" in target or target.startswith("mailto:"):
                continue
            assert (source.parent / target).exists(), f"{source.name} links to {target}, which does not exist"


def test_the_readme_stays_a_first_hour_read() -> None:
    assert len(README.splitlines()) <= 330
    assert "a live venue" not in README  # the default BITMEX_WS_URL is a venue that closed
    cookbook = (DOCS / "redis-cli.md").read_text()
    assert not re.search(r"XRANGE \S+ \d{13}", cookbook), "a fixed-time XRANGE returns nothing a day later"


def readme_python_snippet() -> str:
    snippets = re.findall(r"```python\n(.*?)```", README, re.S)
    assert len(snippets) == 1
    return str(snippets[0])


def test_the_readme_snippet_is_safe_on_every_documented_state(
        redis_url: str, mongo_url: str, key_prefix: str, mongo_database: str) -> None:
    client: redis.Redis = redis.Redis.from_url(redis_url, decode_responses=True)
    books: Any = pymongo.MongoClient(mongo_url)[mongo_database]["orderbooks"]
    now = dt.datetime.now(dt.UTC)
    live = {"layout": 2, "bids": [[100.0, 5, 1], [99.5, 2, 2]], "asks": [[100.5, 3, 3]], "bid_depth": 2,
            "ask_depth": 1,
            "levels": {"1": ["Buy", 100.0, 5], "2": ["Buy", 99.5, 2], "3": ["Sell", 100.5, 3], "4": None},
            "status": "live", "reason": None}
    books.insert_many([
        {"_id": "LIVE", **live, "updated_at": now},
        {"_id": "ONESIDED", "layout": 2, "bids": [], "asks": [[1.0, 1, 1]], "bid_depth": 0, "ask_depth": 1,
         "levels": {"1": ["Sell", 1.0, 1]}, "status": "live", "reason": None, "updated_at": now},
        {"_id": "KEPT", **live, "status": "stale", "reason": "ingest_lost: session gone", "updated_at": now},
        {"_id": "EMPTY", "bids": [], "asks": [], "status": "stale", "reason": "too_large: 17 MB", "updated_at": now},
        {"_id": "FIRST", "bids": [], "asks": [], "status": "stale", "reason": "waiting for the first partial",
         "updated_at": now},
    ])
    top: dict[Any, Any] = {"bids": "[[100.0, 5]]", "asks": "[[100.5, 3]]", "timestamp": "2026-12-04T00:00:00.000Z",
                           "session": "s"}
    client.hset(f"{key_prefix}:top10:{{LIVE}}", mapping={**top, "status": "live", "reason": ""})
    client.hset(f"{key_prefix}:top10:{{KEPT}}", mapping={**top, "status": "stale", "reason": "ingest_lost"})
    client.hset(f"{key_prefix}:top10:{{EMPTY}}", mapping={**top, "bids": "[]", "status": "live", "reason": ""})
    snippet = (readme_python_snippet().replace("redis://localhost:6379/0", redis_url)
               .replace("mongodb://localhost:27017", mongo_url).replace('["bitmex"]', f'["{mongo_database}"]')
               .replace('"bitmex:top10:', f'"{key_prefix}:top10:'))
    assert redis_url in snippet and mongo_url in snippet and mongo_database in snippet
    for symbol, expected in (("LIVE", "[100.0, 5, 1] 2 bids"), ("ONESIDED", "None 0 bids"),
                             ("KEPT", "not trustworthy now: ingest_lost"), ("EMPTY", "too_large"),
                             ("FIRST", "waiting for the first partial"), ("NOSUCH", "not trustworthy now")):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(snippet.replace("XBTUSD", symbol), {})  # the README's own code
        assert expected in printed.getvalue(), (symbol, printed.getvalue())
