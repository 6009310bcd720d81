"""The pure core stays pure: no module of `services/core` imports I/O libraries or the runtime.

The core (protocol, book, stream codec, keys, decisions) is what the unit tests exercise without servers;
one import of asyncio or a client library there would quietly make it a runtime module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "services" / "core"
FORBIDDEN = ("asyncio", "redis", "hiredis", "pymongo", "bson", "motor", "websockets", "uvloop", "socket", "ssl",
             "prometheus_client", "services.runtime", "services.ingest", "services.top10", "services.l2builder",
             "services.status", "services.exchange", "services.dev")


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def forbidden(module: str) -> bool:
    return any(module == name or module.startswith(f"{name}.") for name in FORBIDDEN)


@pytest.mark.parametrize("path", sorted(CORE.glob("*.py")), ids=lambda path: path.name)
def test_a_core_module_imports_no_io(path: Path) -> None:
    assert sorted(filter(forbidden, imported_modules(path))) == []


def test_the_check_sees_what_it_forbids(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import asyncio\nfrom redis.asyncio import Redis\nfrom services.runtime.logs import EventLog\n"
                      "import orjson\nfrom services.core.book import L2Book\n")
    assert sorted(filter(forbidden, imported_modules(sample))) == ["asyncio", "redis.asyncio", "services.runtime.logs"]


def test_the_core_is_not_empty() -> None:
    assert {path.stem for path in CORE.glob("*.py")} >= {"bitmex", "book", "entries", "keys", "orderbook10"}
