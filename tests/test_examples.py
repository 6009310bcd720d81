"""The scripts of `examples/`, run as a user runs them, against real servers and the real services.

Each example gets its settings from the environment, as documented, and the test checks what it printed
against the truth: the exchange's own book (REST), the top10 hash, the MongoDB document.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pymongo
import redis

from services.core.bookdoc import book_levels
from testkit.harness import ServiceProcess, free_port, wait_until
from tests.conftest import RunService

REPO = Path(__file__).resolve().parents[1]
SYMBOLS = ("XBTUSD", "ETHUSD")


def run_example(name: str, *args: str, env: dict[str, str], timeout: float = 60) -> tuple[int, str]:
    done = subprocess.run([sys.executable, str(REPO / "examples" / name), *args], env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, done.stdout


def start_pipeline(run_service: RunService, env: dict[str, str],
                   *exchange_flags: str) -> tuple[int, dict[str, str], dict[str, ServiceProcess]]:
    """The exchange simulator, ingest, top10 and l2builder on this test's servers: `(exchange port, the
    settings a user of the stack has, the processes)`."""
    port = free_port()
    run_service("exchange", "--sim", "--host", "127.0.0.1", "--port", str(port), "--symbols", ",".join(SYMBOLS),
                "--seed", "5", *exchange_flags, env=env, name="exchange")
    env = {**env, "BITMEX_WS_URL": f"ws://127.0.0.1:{port}/realtime", "SYMBOLS": ",".join(SYMBOLS)}
    processes = {name: run_service(name, env=env, name=name) for name in ("ingest", "top10", "l2builder")}
    return port, env, processes


def exchange_book(port: int, symbol: str) -> tuple[list[list[Any]], list[list[Any]]]:
    """`(bids, asks)` as `[price, size]` best first, from the exchange's REST truth."""
    url = f"http://127.0.0.1:{port}/api/v1/orderBook/L2?symbol={symbol}&depth=0"
    with urllib.request.urlopen(url, timeout=5) as reply:
        rows: list[dict[str, Any]] = json.load(reply)
    bids = sorted(([row["price"], row["size"]] for row in rows if row["side"] == "Buy"), key=lambda lv: -lv[0])
    asks = sorted(([row["price"], row["size"]] for row in rows if row["side"] == "Sell"), key=lambda lv: lv[0])
    return bids, asks


def test_top10_example_reads_the_key_and_follows_its_updates(
        run_service: RunService, service_env: dict[str, str], redis_url: str, key_prefix: str) -> None:
    _, env, _ = start_pipeline(run_service, service_env, "--rate", "200")
    client: redis.Redis = redis.Redis.from_url(redis_url, decode_responses=True)
    key = f"{key_prefix}:top10:{{XBTUSD}}"
    wait_until(lambda: bool(client.exists(key)), 30, "the first top-10 snapshot")

    code, output = run_example("top10.py", "XBTUSD", "--updates", "3", "--seconds", "30", env=env)
    assert code == 0, output
    lines = output.splitlines()
    level = r"\d+(\.\d+)? x \d+"
    assert re.fullmatch(rf"XBTUSD now: bid {level}  ask {level}  levels 10/10  at \S+Z  \S+.*", lines[0]), lines
    updates = [line for line in lines if line.startswith("XBTUSD update ")]
    assert [line.split(":")[0] for line in updates] == [f"XBTUSD update {n}" for n in (1, 2, 3)], lines
    assert lines[-1] == "3 updates"
    bids = json.loads(client.hget(key, "bids") or "[]")
    assert bids, "the cache the example read is the service's"

    code, output = run_example("top10.py", "NOSUCH", "--seconds", "1", env=env)
    assert code == 0 and "no snapshot yet" in output and output.splitlines()[-1] == "0 updates", output


def test_book_and_consumer_group_examples_on_live_and_stale_books(
        run_service: RunService, service_env: dict[str, str], mongo_url: str, mongo_database: str) -> None:
    port, env, processes = start_pipeline(run_service, service_env, "--rate", "1000", "--max-frames", "1500")
    books: pymongo.collection.Collection[dict[str, Any]] = pymongo.MongoClient(mongo_url)[mongo_database]["orderbooks"]

    def settled() -> bool:
        documents = {document["_id"]: document for document in books.find()}
        return len(documents) == len(SYMBOLS) and all(
            document["status"] == "live"
            and ([level[:2] for level in book_levels(document)["bids"]],
                 [level[:2] for level in book_levels(document)["asks"]])
            == exchange_book(port, symbol) for symbol, document in documents.items())

    wait_until(settled, 60, "every book live and equal to the exchange's, the market stopped", interval=0.25)
    bids, asks = exchange_book(port, "XBTUSD")

    code, output = run_example("book.py", "XBTUSD", "--depth", "5", env=env)
    assert code == 0, output
    lines = output.splitlines()
    assert lines[0].startswith("XBTUSD: live, written ") and lines[0].endswith(f"{len(bids)} bids, {len(asks)} asks")
    best = re.search(r"best bid (\S+)  best ask (\S+)  spread", lines[1])
    assert best is not None and (float(best[1]), float(best[2])) == (bids[0][0], asks[0][0]), lines
    assert len(lines) == 3 + 5, lines
    for line, bid, ask in zip(lines[3:], bids, asks, strict=False):
        assert [float(part) for part in line.split() if part != "|"] == [bid[1], bid[0], ask[0], ask[1]], line
    code, output = run_example("book.py", "--all", env=env)
    assert code == 0 and [line.split(",")[0] for line in output.splitlines()] == ["ETHUSD: live", "XBTUSD: live"]

    code, output = run_example("l2_consumer.py", "--from-start", "--idle-exit", "2", "--group", "example", env=env)
    assert code == 0, output
    assert re.search(r"^XBTUSD partial: \d+ levels, book usable", output, re.MULTILINE), output
    summary = re.search(r"^summary XBTUSD: usable, (\d+) bids (\d+) asks, best bid (\S+) x (\d+) ask (\S+) x (\d+), "
                        r"\d+ entries$", output, re.MULTILINE)
    assert summary is not None, output
    assert [float(value) for value in summary.groups()] == [len(bids), len(asks), *bids[0], *asks[0]], output

    # ingest ends its session: a gap marker on every stream, and l2builder marks the books stale.
    assert processes["ingest"].terminate() == 0

    def stale() -> bool:
        document = books.find_one({"_id": "XBTUSD"}, {"status": 1})
        return document is not None and document["status"] != "live"

    wait_until(stale, 30, "the XBTUSD book stale after ingest left")
    code, output = run_example("book.py", "XBTUSD", "--depth", "5", env=env)
    assert code == 2, output
    # Whether a stale book keeps its last levels or has none, the example says which and does not fail.
    first = output.splitlines()[0]
    assert re.fullmatch(r"XBTUSD: NOT LIVE \(stale: .+\), written .+; (the \d+ bids and \d+ asks below are the "
                        r"last known, not the market now|no levels kept)", first), output
    code, output = run_example("book.py", "--all", env=env)
    assert code == 0 and re.search(r"^XBTUSD: stale \(.+\), written", output, re.MULTILINE), output

    code, output = run_example("l2_consumer.py", "--idle-exit", "2", "--group", "example", "--delete-group",
                               env=env)
    assert code == 0, output
    assert re.search(r"^XBTUSD gap reason=\w+", output, re.MULTILINE), output
    assert "partial" not in output, "the group carried on where it stopped: only the new entries"
    assert re.search(r"^summary XBTUSD: not usable \(gap: \w+\)", output, re.MULTILINE), output

    code, output = run_example("book.py", "NOSUCH", env=env)
    assert code == 1 and "no book" in output

    # A stale document that kept its last levels, as the README shows one.
    books.insert_one({"_id": "KEPT", "bids": [[99.5, 10, 7], [99.0, 3, 8]], "asks": [[100.5, 4, 9]],
                      "status": "stale", "reason": "gap: disconnect", "updated_at": datetime.now(UTC)})
    code, output = run_example("book.py", "KEPT", env=env)
    lines = output.splitlines()
    assert code == 2 and lines[0].startswith("KEPT: NOT LIVE (stale: gap: disconnect), written "), output
    assert lines[0].endswith("the 2 bids and 1 asks below are the last known, not the market now"), output
    assert [line.split() for line in lines[3:]] == [["10", "99.5", "|", "100.5", "4"], ["3", "99.0", "|"]], output
