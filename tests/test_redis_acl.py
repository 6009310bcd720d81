"""Every service runs under exactly the Redis ACL that docs/redis-acl.md documents.

The rules are read from the page itself, so the documentation cannot drift from the code: each service
gets a user of its own with those rules (for this test's key prefix), the whole pipeline runs under them
until every book and top-10 key is live, and Redis's own `ACL LOG` must show no command or key it denied
to any of them. A command a service needs that the page forgets fails this test; so does a key outside
the documented patterns.
"""

from __future__ import annotations

import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pymongo
import pytest
import redis

from testkit.harness import RedisServer, bookstream_argv, free_port, wait_until
from tests.conftest import RunService

REPO = Path(__file__).resolve().parents[1]
ACL_PAGE = REPO / "docs" / "redis-acl.md"
SERVICES = ("ingest", "top10", "l2builder", "status")
SYMBOLS = ("XBTUSD", "ETHUSD")


def documented_rules(service: str, key_prefix: str, password: str) -> list[str]:
    """The `ACL SETUSER` rules of `service` from the page, for `key_prefix` and `password`."""
    match = re.search(rf"^```acl {service}\n(.*?)^```", ACL_PAGE.read_text(), re.M | re.S)
    assert match is not None, f"docs/redis-acl.md has no acl block for {service}"
    rules = match.group(1).replace("bitmex:", f"{key_prefix}:").split()
    return [f">{password}" if rule.startswith(">") else rule for rule in rules]


def test_the_page_documents_every_service() -> None:
    for service in SERVICES:
        rules = documented_rules(service, "bitmex", "x")
        assert "-@all" in rules and "resetkeys" in rules, f"{service}: start from nothing, then allow"
        assert not any(rule in ("~*", "allkeys", "+@all", "allcommands") for rule in rules), service


@pytest.fixture
def acl_users(redis_server: RedisServer, key_prefix: str) -> Iterator[dict[str, str]]:
    """A Redis URL per service, each as a user with exactly its documented rules."""
    admin = redis.Redis.from_url(redis_server.url)
    host_port = redis_server.url.split("//", 1)[1].split("/", 1)[0]
    urls: dict[str, str] = {}
    for service in SERVICES:
        password = uuid.uuid4().hex
        rules = documented_rules(service, key_prefix, password)
        admin.execute_command("ACL", "SETUSER", f"{key_prefix}-{service}", "reset", *rules)  # type: ignore[no-untyped-call]
        urls[service] = f"redis://{key_prefix}-{service}:{password}@{host_port}/0"
    admin.acl_log_reset()
    yield urls
    admin.close()


def denials(redis_url: str, key_prefix: str) -> list[dict[str, Any]]:
    """What Redis refused to this test's users: command, key or channel, and who asked."""
    admin = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        entries: list[dict[str, Any]] = admin.acl_log()
    finally:
        admin.close()
    found = []
    for fields in entries:
        if str(fields.get("username", "")).startswith(f"{key_prefix}-"):
            found.append({name: fields.get(name) for name in ("username", "reason", "context", "object")})
    return found


def test_every_service_runs_under_its_documented_acl(
        run_service: RunService, service_env: dict[str, str], redis_server: RedisServer,
        acl_users: dict[str, str], key_prefix: str, mongo_url: str, mongo_database: str) -> None:
    port = free_port()
    env = {**service_env, "SYMBOLS": ",".join(SYMBOLS), "BITMEX_WS_URL": f"ws://127.0.0.1:{port}/realtime"}
    run_service("exchange", "--sim", "--host", "127.0.0.1", "--port", str(port), "--symbols", ",".join(SYMBOLS),
                "--rate", "100", "--seed", "11", env=env, name="exchange")
    processes = {service: run_service(service, env={**env, "REDIS_URL": acl_users[service]}, name=service)
                 for service in ("ingest", "top10", "l2builder")}
    books: pymongo.collection.Collection[dict[str, Any]] = pymongo.MongoClient(mongo_url)[mongo_database]["orderbooks"]
    watcher = redis.Redis.from_url(redis_server.url, decode_responses=True)

    def everything_live() -> bool:
        refused = denials(redis_server.url, key_prefix)
        assert refused == [], f"Redis refused what the page does not allow: {refused}"
        live_books = books.count_documents({"_id": {"$in": list(SYMBOLS)}, "status": "live"})
        live_keys = sum(watcher.hget(f"{key_prefix}:top10:{{{symbol}}}", "status") == "live" for symbol in SYMBOLS)
        return live_books == len(SYMBOLS) and live_keys == len(SYMBOLS)

    wait_until(everything_live, 60, "every book and top-10 key live under the documented ACLs", interval=0.5)
    status = subprocess.run([*bookstream_argv(), "status", "--json"], capture_output=True, timeout=60,
                            env={**env, "REDIS_URL": acl_users["status"]}, check=False)
    assert status.stdout, status.stderr.decode(errors="replace")[-2000:]
    document = orjson.loads(status.stdout)
    assert document["redis"]["ok"], document["redis"]
    assert {entry["symbol"] for entry in document["symbols"]} == set(SYMBOLS)
    assert all(entry["owner"]["instance"] for entry in document["symbols"]), document["symbols"]
    assert denials(redis_server.url, key_prefix) == []
    for service, process in processes.items():
        assert process.alive(), f"{service} died under its ACL"
        refused = [line for line in process.logs().splitlines() if "permission" in line.lower()]
        assert refused == [], f"{service} was refused a command: {refused[:3]}"
    watcher.close()
