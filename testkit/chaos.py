"""Fault drills: the whole pipeline under seeded chaos, then proof that nothing was lost.

A drill runs `exchange -> ingest -> top10 + l2builder` on Redis and MongoDB servers of its own and, while
the exchange publishes, does at random but reproducibly (one seeded RNG) what production does to a
deployment: `kill -9` and restart service instances, restart Redis and MongoDB, cut the websocket again
and again, answer the reconnects with HTTP 429, send malformed frames and slip corrupt entries into the
streams. Then it lets the market go quiet and waits until every MongoDB book and every top10 key equals
the exchange's truth, every book that went stale is live again after its resync, and no stream entry is
left pending. The report counts what was done and what was found; mismatches must be 0.

`tests/drills` runs short drills; `bench/soak.py` runs the same drills longer with more chaos.
"""

from __future__ import annotations

import random
import re
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson
import pymongo
import redis

from services.core.bookdoc import book_levels
from services.core.capture import iter_capture
from services.core.keys import L2BUILDER_GROUP, TOP10_GROUP, Keys
from testkit.harness import MongoServer, RedisServer, ServiceProcess, base_env, free_port
from testkit.l2feeds import capture_frames, reconstruct

Start = Callable[..., ServiceProcess]
"""Starts `bookstream <args>` (`env=`, `healthy=`, `name=` keywords), as the `run_service` fixture does."""
Levels = dict[str, list[list[Any]]]
"""`{"bids": [...], "asks": [...]}`, best first: `[price, size, id]` for a book, `[price, size]` for a top 10."""

ROLES = ("ingest", "top10", "l2builder")
SERVICE_SETTINGS = {
    # Short enough that takeovers, claims and resyncs happen within a drill, as they would within minutes.
    "LEASE_TTL": "2", "CLAIM_IDLE": "1", "RESUBSCRIBE_INTERVAL": "1", "LOG_LEVEL": "INFO",
}
LOGGED_EVENTS = (  # (role, event, label in the report, field that splits the count)
    ("ingest", "connected", "ingest sessions", None),
    ("ingest", "connect_rate_limited", "429s met", None),
    ("ingest", "malformed_frame", "malformed frames skipped", None),
    ("top10", "malformed_entry", "top10 entries rejected", None),
    ("top10", "entries_claimed", "top10 claims", None),
    ("l2builder", "book_stale", "stale", "kind"),
    ("l2builder", "book_live", "live again", None),
    ("l2builder", "resync_requested", "resyncs requested", None),
)
CORRUPT_L2_ENTRY = {"table": "orderBookL2", "action": "update", "frame": '{"table":"orderBookL2","data":[{'}
CORRUPT_OB10_ENTRY = {"table": "orderBook10", "action": "update", "frame": "<html>502</html>", "session": "drill",
                      "seq": "1", "recv_us": "0"}


@dataclass(frozen=True, slots=True)
class ChaosPlan:
    """How long and how hard to shake the pipeline; `weights` says how often each fault is chosen."""

    seed: int
    seconds: float
    pause: tuple[float, float] = (0.3, 1.2)
    top10_instances: int = 2
    l2builder_instances: int = 2
    storm: int = 3
    """Most drops or malformed frames (x3) in one action."""
    rejects: int = 3
    """Most 429s in one action."""
    retry_after: float | None = 0.2
    """Retry-After of the 429s. None leaves it out: ingest then waits 5-10 s, then longer, as it must."""
    settle_seconds: float = 90.0
    weights: dict[str, int] = field(default_factory=lambda: {
        "kill_ingest": 3, "kill_top10": 3, "kill_l2builder": 3, "restart_redis": 1, "restart_mongo": 1,
        "drop": 2, "reject": 1, "malformed": 2, "corrupt": 1})


class Truth(Protocol):
    """What the pipeline must end with, once the exchange has published everything."""

    def books(self) -> dict[str, Levels]: ...

    def top10(self) -> dict[str, Levels]: ...


def _levels(rows: list[dict[str, Any]]) -> Levels:
    bids = sorted(([row["price"], row["size"], row["id"]] for row in rows if row["side"] == "Buy"),
                  key=lambda level: -level[0])
    asks = sorted(([row["price"], row["size"], row["id"]] for row in rows if row["side"] == "Sell"),
                  key=lambda level: level[0])
    return {"bids": bids, "asks": asks}


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return orjson.loads(reply.read())


class SimTruth:
    """The simulator's own books (`GET /api/v1/orderBook/L2?depth=0`); its top 10 is their first levels."""

    def __init__(self, port: int, symbols: Sequence[str]) -> None:
        self.port, self.symbols = port, symbols

    def books(self) -> dict[str, Levels]:
        return {symbol: _levels(_get_json(f"http://127.0.0.1:{self.port}/api/v1/orderBook/L2?symbol={symbol}"
                                          "&depth=0")) for symbol in self.symbols}

    def top10(self) -> dict[str, Levels]:
        return {symbol: {side: [level[:2] for level in levels[:10]] for side, levels in book.items()}
                for symbol, book in self.books().items()}


class CaptureTruth:
    """A real capture's books at its end, reconstructed here without the book engine, and its last
    orderBook10 rows; for a symbol it has none of (the 2021 captures have none at all), the top 10 of its
    final book, which the replay derives orderBook10 from."""

    def __init__(self, path: Path) -> None:
        self._books, _ = reconstruct(capture_frames(path))
        self.symbols = sorted(self._books)
        self._top10: dict[str, Levels] = {
            symbol: {side: [level[:2] for level in levels[:10]] for side, levels in book.items()}
            for symbol, book in self._books.items()}
        for _, text in iter_capture(path):
            if text.startswith('{"table":"orderBook10"'):
                for row in orjson.loads(text)["data"]:
                    self._top10[row["symbol"]] = {"bids": row["bids"], "asks": row["asks"]}

    def books(self) -> dict[str, Levels]:
        return self._books

    def top10(self) -> dict[str, Levels]:
        return self._top10


class Stack:
    """The services of one drill on its own servers: one exchange, one ingest, top10 and l2builder
    instances. Chaos kills instances through it; it restarts them as an orchestrator would."""

    def __init__(self, start: Start, redis_server: RedisServer, mongo_server: MongoServer, prefix: str,
                 database: str, symbols: Sequence[str], exchange_args: Sequence[str], plan: ChaosPlan) -> None:
        self.start, self.redis_server, self.mongo_server = start, redis_server, mongo_server
        self.keys, self.database, self.symbols, self.plan = Keys(prefix), database, list(symbols), plan
        self.exchange_port = free_port()
        self.exchange_args = [*exchange_args, "--host", "127.0.0.1", "--port", str(self.exchange_port)]
        self.env = base_env(REDIS_URL=redis_server.url, MONGO_CONNECTION_STRING=mongo_server.url, KEY_PREFIX=prefix,
                            MONGO_DATABASE=database, BITMEX_WS_URL=f"ws://127.0.0.1:{self.exchange_port}/realtime",
                            SYMBOLS=",".join(symbols), **SERVICE_SETTINGS)
        self.instances: dict[str, list[ServiceProcess]] = {role: [] for role in ROLES}
        self.started: dict[str, list[ServiceProcess]] = {role: [] for role in ROLES}
        """Every instance ever started, killed ones included, for what their logs say."""
        self.exchange: ServiceProcess | None = None
        self.crashes: set[str] = set()
        self._generation = 0

    def up(self) -> None:
        self.exchange = self.start("exchange", *self.exchange_args, env=self.env, name="exchange")
        for role, count in (("l2builder", self.plan.l2builder_instances), ("top10", self.plan.top10_instances),
                            ("ingest", 1)):
            for slot in range(count):
                self.instances[role].append(self._launch(role, f"{role}-{slot}", healthy=True))

    def _launch(self, role: str, name: str, healthy: bool) -> ServiceProcess:
        self._generation += 1
        process = self.start(role, env={**self.env, "INSTANCE_NAME": name}, healthy=healthy,
                             name=f"{name}.{self._generation}")
        self.started[role].append(process)
        return process

    def logged(self) -> Counter[str]:
        """What the services' logs say happened, counted."""
        counts: Counter[str] = Counter()
        for role, event, label, field_name in LOGGED_EVENTS:
            for process in self.started[role]:
                for line in process.logs().splitlines():
                    if f" event={event} " in f"{line} ":
                        found = re.search(rf" {field_name}=(\S+)", line) if field_name else None
                        counts[label + (f" {found.group(1)}" if found else "")] += 1
        return counts

    def kill_and_restart(self, role: str, rng: random.Random) -> None:
        """`kill -9` one instance of `role`; restart it after a moment under its old name or a new one."""
        slot = rng.randrange(len(self.instances[role]))
        victim = self.instances[role][slot]
        self._note_crash(victim)
        victim.kill()
        time.sleep(rng.uniform(0.0, 1.0))
        name = victim.env["INSTANCE_NAME"] if rng.random() < 0.5 else f"{role}-{slot}-{self._generation}"
        self.instances[role][slot] = self._launch(role, name, healthy=False)

    def crashed(self) -> list[str]:
        """Instances that died without being killed, so far: each is a bug the drill reports."""
        for process in [self.exchange, *(process for group in self.instances.values() for process in group)]:
            if process is not None:
                self._note_crash(process)
        return sorted(self.crashes)

    def _note_crash(self, process: ServiceProcess) -> None:
        if not process.alive():
            self.crashes.add(f"{process.name} (exit {process.process.returncode})")

    def fault(self, name: str, **query: float) -> None:
        arguments = "&".join(f"{key}={value}" for key, value in query.items())
        _get_json(f"http://127.0.0.1:{self.exchange_port}/_faults/{name}?{arguments}")

    def exchange_status(self) -> dict[str, Any]:
        status: dict[str, Any] = _get_json(f"http://127.0.0.1:{self.exchange_port}/healthz")
        return status

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_server.url, decode_responses=True, socket_timeout=5)

    def documents(self, fields: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
        """The book documents by symbol (only `fields` of them when given)."""
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            self.mongo_server.url, serverSelectionTimeoutMS=2000)
        try:
            found = client[self.database]["orderbooks"].find({}, list(fields) if fields else None)
            return {document["_id"]: document for document in found}
        finally:
            client.close()


class Chaos:
    """Seeded random faults on a stack, each one counted."""

    def __init__(self, stack: Stack, plan: ChaosPlan) -> None:
        self.stack, self.plan = stack, plan
        self.rng = random.Random(plan.seed)
        self.done: Counter[str] = Counter()
        self.stale_seen: set[tuple[str, str]] = set()
        """(symbol, reason) of the books seen stale at some point: each must be live again at the end."""

    def run(self) -> None:
        deadline = time.monotonic() + self.plan.seconds
        for action in self._schedule():
            if time.monotonic() >= deadline:
                return
            getattr(self, action)()
            time.sleep(self.rng.uniform(*self.plan.pause))
            self._look_for_stale_books()

    def _schedule(self) -> Iterator[str]:
        """Rounds of every fault, each as often as its weight, shuffled: even a short drill does each once."""
        round_ = [action for action, weight in self.plan.weights.items() for _ in range(weight)]
        while True:
            self.rng.shuffle(round_)
            yield from round_

    def _look_for_stale_books(self) -> None:
        try:
            documents = self.stack.documents(("status", "reason"))
        except pymongo.errors.PyMongoError:
            return  # MongoDB is being restarted
        for symbol, document in documents.items():
            if document.get("status") != "live":
                self.stale_seen.add((symbol, str(document.get("reason"))))

    def kill_ingest(self) -> None:
        self.stack.kill_and_restart("ingest", self.rng)
        self.done["kill ingest"] += 1

    def kill_top10(self) -> None:
        self.stack.kill_and_restart("top10", self.rng)
        self.done["kill top10"] += 1

    def kill_l2builder(self) -> None:
        self.stack.kill_and_restart("l2builder", self.rng)
        self.done["kill l2builder"] += 1

    def restart_redis(self) -> None:
        self.stack.redis_server.restart(down_for=self.rng.uniform(0.2, 1.5))
        self.done["restart redis"] += 1

    def restart_mongo(self) -> None:
        self.stack.mongo_server.restart(down_for=self.rng.uniform(0.2, 1.5))
        self.done["restart mongo"] += 1

    def drop(self) -> None:
        for _ in range(self.rng.randint(1, self.plan.storm)):
            self.stack.fault("drop")
            self.done["drop"] += 1
            time.sleep(self.rng.uniform(0.2, 1.0))

    def reject(self) -> None:
        """Arm some 429s, then drop the connection so that ingest's reconnects meet them."""
        count = self.rng.randint(1, self.plan.rejects)
        if self.plan.retry_after is None:
            self.stack.fault("reject", count=count)
        else:
            self.stack.fault("reject", count=count, retry_after=self.plan.retry_after)
        self.stack.fault("drop")
        self.done["429"] += count
        self.done["drop"] += 1

    def malformed(self) -> None:
        count = self.rng.randint(1, 3 * self.plan.storm)
        self.stack.fault("malformed", count=count)
        self.done["malformed frame"] += count

    def corrupt(self) -> None:
        """An entry no ingest would write, in one symbol's streams: its book must go stale, then resync."""
        symbol = self.rng.choice(self.stack.symbols)
        client = self.stack.redis()
        client.xadd(self.stack.keys.l2_stream(symbol), CORRUPT_L2_ENTRY)  # type: ignore[arg-type]
        client.xadd(self.stack.keys.ob10_stream(symbol), CORRUPT_OB10_ENTRY)  # type: ignore[arg-type]
        client.close()
        self.done["corrupt entry"] += 1


@dataclass(slots=True)
class Findings:
    """What the pipeline holds compared with the truth."""

    books_equal: int = 0
    top10_equal: int = 0
    stale: dict[str, str] = field(default_factory=dict)
    unsettled_streams: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)

    @property
    def converged(self) -> bool:
        return not (self.stale or self.unsettled_streams or self.mismatches)


def inspect(stack: Stack, truth: Truth) -> Findings:
    """Compare every book and top10 key with the truth, and check that every entry was acknowledged."""
    findings = Findings()
    documents = stack.documents()
    for symbol, expected in truth.books().items():
        document = documents.get(symbol)
        if document is None:
            findings.mismatches.append(f"{symbol}: no MongoDB document")
        elif document.get("status") != "live":
            findings.stale[symbol] = str(document.get("reason"))
            if not document.get("reason"):
                findings.mismatches.append(f"{symbol}: stale without a reason")
        elif book_levels(document) != expected:
            findings.mismatches.append(f"{symbol}: book differs ({_difference(document, expected)})")
        else:
            findings.books_equal += 1
    client = stack.redis()
    try:
        expected_top10 = truth.top10()
        for symbol in stack.symbols:
            stored = client.hgetall(stack.keys.top10(symbol))
            wanted = expected_top10.get(symbol)
            if wanted is None:
                if stored:
                    findings.mismatches.append(f"{symbol}: a top10 key where the feed has no orderBook10")
            elif not stored:
                findings.mismatches.append(f"{symbol}: no top10 key")
            elif {"bids": orjson.loads(stored["bids"]), "asks": orjson.loads(stored["asks"])} != wanted:
                findings.mismatches.append(f"{symbol}: top10 key differs from the book's top 10")
            else:
                findings.top10_equal += 1
        findings.unsettled_streams = list(_unsettled_streams(client, stack))
    finally:
        client.close()
    return findings


def _difference(document: dict[str, Any], expected: Levels) -> str:
    levels = book_levels(document)
    for side in ("bids", "asks"):
        stored, wanted = levels[side], expected[side]
        for position, (have, want) in enumerate(zip(stored, wanted, strict=False)):
            if have != want:
                return f"{side}[{position}] {have} != {want}"
        if len(stored) != len(wanted):
            return f"{len(stored)} {side} != {len(wanted)}"
    return "?"


def _unsettled_streams(client: redis.Redis, stack: Stack) -> Iterator[str]:
    """Streams whose group has not delivered the last entry or still has entries pending."""
    for symbol in stack.symbols:
        for stream, group in ((stack.keys.l2_stream(symbol), L2BUILDER_GROUP),
                              (stack.keys.ob10_stream(symbol), TOP10_GROUP)):
            if not client.exists(stream):
                continue
            last = client.xinfo_stream(stream)["last-generated-id"]
            info = next((g for g in client.xinfo_groups(stream) if g["name"] == group), None)
            if info is None:
                yield f"{stream} (no group {group})"
            elif info["pending"] or info["last-delivered-id"] != last:
                yield f"{stream} ({group}: {info['pending']} pending, delivered {info['last-delivered-id']} of {last})"


@dataclass(slots=True)
class DrillReport:
    """What a drill did and what it found; `mismatches` must be empty."""

    name: str
    plan: ChaosPlan
    done: Counter[str]
    exchange: dict[str, Any]
    entries: int
    stale_seen: set[tuple[str, str]]
    logged: Counter[str]
    findings: Findings
    books: int
    crashes: list[str]
    settle_seconds: float

    @property
    def mismatches(self) -> list[str]:
        """Everything that must not happen: wrong, missing or stuck state, and crashed services."""
        found = self.findings
        return [*found.mismatches, *(f"{symbol}: still stale ({reason})" for symbol, reason in found.stale.items()),
                *(f"unsettled stream {stream}" for stream in found.unsettled_streams),
                *(f"crashed: {crash}" for crash in self.crashes)]

    def summary(self) -> str:
        done = ", ".join(f"{name}={count}" for name, count in sorted(self.done.items())) or "nothing"
        frames = self.exchange.get("changes", self.exchange.get("frames", "?"))
        causes = Counter(_cause(reason) for _, reason in self.stale_seen)
        stale = ", ".join(f"{cause} x{count}" for cause, count in sorted(causes.items())) or "none"
        logged = ", ".join(f"{name}={count}" for name, count in sorted(self.logged.items()))
        return (f"drill {self.name} seed={self.plan.seed} chaos={self.plan.seconds:.0f}s: {done}; "
                f"exchange frames={frames}, stream entries={self.entries}; logged: {logged}; "
                f"stale in MongoDB: {stale};"
                f" settled in {self.settle_seconds:.1f}s: books equal {self.findings.books_equal}/"
                f"{self.books}, top10 keys equal {self.findings.top10_equal}, crashes={len(self.crashes)}, "
                f"mismatches={len(self.mismatches)}")


def _cause(reason: str) -> str:
    """The words naming why a book is stale, without ids: "malformed entry 17-0: ..." -> "malformed entry"."""
    words = [word for word in reason.split(":")[0].split() if not any(char.isdigit() for char in word)]
    return " ".join(words[:4]).rstrip(",")


def run_drill(name: str, stack: Stack, truth: Truth) -> DrillReport:
    """Start the stack, shake it for `plan.seconds`, let it settle, and report what it ended with.

    Settling waits for the exchange to have published everything, then for every book and key to equal
    the truth with nothing pending; a stale book must come back live through its resync meanwhile.
    """
    plan = stack.plan
    stack.up()
    chaos = Chaos(stack, plan)
    chaos.run()
    settle_started = time.monotonic()
    deadline = settle_started + plan.settle_seconds
    while not stack.exchange_status().get("idle") and time.monotonic() < deadline:
        time.sleep(0.2)  # the market's last changes are still being made or sent
    findings = Findings(mismatches=["the exchange never finished publishing"])
    while time.monotonic() < deadline:
        try:
            findings = inspect(stack, truth)
        except (redis.RedisError, pymongo.errors.PyMongoError, OSError) as exc:
            findings = Findings(mismatches=[f"servers not answering: {exc!r}"])
        chaos.stale_seen.update(findings.stale.items())
        if findings.converged:
            break
        time.sleep(0.25)
    settled = time.monotonic() - settle_started
    client = stack.redis()
    entries = sum(int(client.xlen(key)) for symbol in stack.symbols
                  for key in (stack.keys.l2_stream(symbol), stack.keys.ob10_stream(symbol)))
    client.close()
    report = DrillReport(name, plan, chaos.done, stack.exchange_status(), entries, chaos.stale_seen,
                         stack.logged(), findings, len(truth.books()), stack.crashed(), settled)
    print(report.summary(), flush=True)
    for problem in report.mismatches:
        print(f"  mismatch: {problem}", flush=True)
    return report
