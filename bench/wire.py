"""Benchmark of the Redis clients: CPU of this process per round trip, `RedisWire` beside redis-py.

`python -m bench.wire` starts a private redis-server and sends the same round trips through three clients,
one after the other in one run, on the event loop the services use (uvloop):

- `redis-py`: `redis.asyncio.Redis.from_url` as it comes, each round trip a non-transactional pipeline;
- `redis-py pool`: the same through `services.runtime.redis_client.connect` (commands packed by hiredis,
  XREADGROUP replies left raw), the client the services use for housekeeping;
- `RedisWire`: the lean connection of the hot loops, one `call` per round trip.

The round trips are those of the hot loops: an XREADGROUP of 10 new entries (l2builder's reader), an XACK
of 1,000 ids (l2builder's flusher), a pipeline of 10 EVALSHA calls with a key and 12 arguments each
(top10's writes), and a batch of 500 entries appended by `xadd_batch.lua` or by 500 pipelined XADDs
(ingest's publisher; per entry). What is measured is `time.process_time()` of this process, so Redis's own
work is left out; the best of `--repeat` runs counts, because neighbours only ever add time. The last
line is the summary: `<round trip>_<client>_us=<CPU µs>` for every pair.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis

from services.runtime import lifecycle, redis_client
from services.runtime.redis_wire import Command, RedisWire
from testkit.harness import RedisServer

STREAM, GROUP = "bench:wire:l2", "bench"
READ_COUNT, ACK_IDS, EVAL_CALLS, BATCH = 10, 1_000, 10, 500
SCRIPT = "return redis.call('HSET', KEYS[1], unpack(ARGV))"
"""A stand-in for top10's store_top10.lua: what is measured is the client's side of EVALSHA."""
XADD_BATCH = (Path(__file__).resolve().parent.parent / "services" / "ingest" / "xadd_batch.lua").read_text()
CLIENTS = ("redis-py", "redis-py pool", "RedisWire")
RoundTrip = Callable[[Sequence[Command]], Awaitable[list[Any]]]


def redispy_round_trip(client: redis_client.RedisClient) -> RoundTrip:
    async def call(commands: Sequence[Command]) -> list[Any]:
        async with client.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            return list(await pipe.execute(raise_on_error=False))
    return call


def workloads(sha: str, batch_sha: str, groups: dict[str, str]) -> dict[str, Callable[[str, int], list[Command]]]:
    """Round trip name -> (client, round number) -> its commands."""
    ids = [f"1-{number}" for number in range(ACK_IDS)]
    fields = [str(number) for number in range(12)]
    entry = ("action", "update", "data", '[{"symbol":"XBTUSD","id":8799,"side":"Buy","size":100}]', "recv_us", "1")
    keys = [f"bench:wire:batch:{number % 20}" for number in range(BATCH)]
    # MAXLEN, no activity signal (its count and its streams' MAXLEN), then the entries.
    batch_args = [str(1000), "0", "1000", *(item for _ in range(BATCH) for item in (str(len(entry) // 2), *entry))]
    return {
        "xreadgroup": lambda client, _: [("XREADGROUP", "GROUP", groups[client], "reader", "COUNT", READ_COUNT,
                                          "STREAMS", STREAM, ">")],
        "xack": lambda client, _: [("XACK", STREAM, groups[client], *ids)],
        "evalsha": lambda client, number: [("EVALSHA", sha, 1, f"bench:wire:top10:{number % 50}", *fields)
                                           for _ in range(EVAL_CALLS)],
        "batch_script": lambda client, _: [("EVALSHA", batch_sha, BATCH, *keys, *batch_args)],
        "batch_xadds": lambda client, _: [("XADD", key, "MAXLEN", "~", 1000, "*", *entry) for key in keys],
    }


PER_ENTRY = {"batch_script": BATCH, "batch_xadds": BATCH}
"""Round trips reported per entry rather than per round trip; they run a tenth as many times, each being
a batch's work for Redis."""


async def measure(call: RoundTrip, commands: Callable[[int], list[Command]], rounds: int) -> float:
    """CPU µs of this process per round trip, after a tenth as many unmeasured ones."""
    for number in range(rounds // 10):
        await call(commands(number))
    started = time.process_time()
    for number in range(rounds):
        replies = await call(commands(number))
        assert not any(isinstance(reply, Exception) for reply in replies), replies
    return (time.process_time() - started) / rounds * 1e6


async def run(url: str, rounds: int, repeat: int) -> dict[tuple[str, str], float]:
    setup = redis.Redis.from_url(url)
    sha, batch_sha = str(setup.script_load(SCRIPT)), str(setup.script_load(XADD_BATCH))
    reads = (rounds + rounds // 10 + 1) * repeat * READ_COUNT
    pipe = setup.pipeline(transaction=False)
    for number in range(reads):
        pipe.xadd(STREAM, {"action": "update", "data": f'[{{"id":{number}}}]'})
        if number % 5000 == 4999:
            pipe.execute()
    pipe.execute()
    groups = {}
    for name in CLIENTS:
        groups[name] = f"{GROUP}-{name}"
        setup.xgroup_create(STREAM, groups[name], id="0")
    setup.close()
    plain = aioredis.Redis.from_url(url)
    pool = redis_client.connect(url, 5.0, "bench-wire")
    wire = RedisWire(url, 5.0, "bench-wire")
    calls = {"redis-py": redispy_round_trip(plain), "redis-py pool": redispy_round_trip(pool), "RedisWire": wire.call}
    results: dict[tuple[str, str], float] = {}
    try:
        for trip, commands in workloads(sha, batch_sha, groups).items():
            for name, call in calls.items():
                trip_rounds = max(rounds // 10, 10) if trip in PER_ENTRY else rounds
                runs = [await measure(call, functools.partial(commands, name), trip_rounds)
                        for _ in range(repeat)]
                results[trip, name] = min(runs) / PER_ENTRY.get(trip, 1)
    finally:
        wire.close()
        await plain.aclose()
        await pool.aclose()
    return results


def report(results: dict[tuple[str, str], float], rounds: int, repeat: int) -> list[str]:
    trips = list(dict.fromkeys(trip for trip, _ in results))
    lines = [f"CPU µs of the client process, best of {repeat} x {rounds} round trips (batch_*: per entry)",
             f"{'round trip':<14}" + "".join(f"{name:>16}" for name in CLIENTS) + f"{'redis-py/RedisWire':>20}"]
    for trip in trips:
        ratio = results[trip, "redis-py"] / results[trip, "RedisWire"]
        lines.append(f"{trip:<14}" + "".join(f"{results[trip, name]:>16.1f}" for name in CLIENTS) + f"{ratio:>19.1f}x")
    script, xadds = results["batch_script", "RedisWire"], results["batch_xadds", "RedisWire"]
    lines.append(f"RedisWire, {BATCH} entries: xadd_batch.lua {script:.1f} µs per entry, pipelined XADDs "
                 f"{xadds:.1f} µs per entry ({xadds / script:.1f}x)")
    lines.append(" ".join(f"{trip}_{name.replace('-', '').replace(' ', '_').lower()}_us={value:.1f}"
                          for (trip, name), value in results.items()))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.wire", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1000, help="measured round trips per client and run [1000]")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the best is kept [3]")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-wire-") as tmp:
        server = RedisServer(Path(tmp)).start()
        try:
            with asyncio.Runner(loop_factory=lifecycle._loop_factory()) as runner:
                results = runner.run(run(server.url, args.rounds, args.repeat))
        finally:
            server.stop()
    print("\n".join(report(results, args.rounds, args.repeat)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
