"""Benchmark of `bookstream exchange --sim`: how many orderBookL2 frames per second it makes and delivers.

`python -m bench.exchange` starts the real command (`bookstream exchange --sim --symbols 20`) once per
case and connects reader processes, each subscribed to the whole `orderBookL2` table, that count what
they receive over `--seconds` after a warm-up. A case reports the rate the market reached (from the
server's `/healthz`), the rate each reader received, whether a reader was dropped as too slow, and the
server's CPU time per frame, which does not depend on what else the machine is doing: one core at
100% would sustain 1e6 / (CPU us per frame) frames/s. Rate 0 means as fast as the server can. The
machine has two cores shared by the server and the readers, so rates with several readers are a floor.

The last line is the summary: the highest rate sustained with one reader and with three, and the
CPU cost per frame with one reader.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from multiprocessing.connection import Connection

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bench.processes import cpu_seconds
from testkit.harness import bookstream_argv, free_port, wait_until

CASES = ((5_000, 1), (20_000, 1), (0, 1), (20_000, 3))


@dataclass(frozen=True)
class Result:
    rate: int
    readers: int
    generated_per_s: float
    received_per_s: list[float]
    dropped: int
    cpu_us_per_frame: float

    def line(self) -> str:
        target = "max" if self.rate == 0 else f"{self.rate}"
        received = ", ".join(f"{value:,.0f}" for value in self.received_per_s)
        return (f"rate={target:>6} readers={self.readers} generated={self.generated_per_s:>9,.0f}/s "
                f"received=[{received}]/s dropped={self.dropped} server_cpu={self.cpu_us_per_frame:.1f}us/frame")


def health(port: int) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as reply:
        body: dict[str, object] = json.load(reply)
        return body


def reader(port: int, warmup: float, seconds: float, out: Connection) -> None:
    """A reader process: frames received during `seconds` after `warmup`, or -1 if it was dropped."""

    async def count() -> float:
        async with connect(f"ws://127.0.0.1:{port}/realtime?subscribe=orderBookL2", max_size=None,
                           compression=None, close_timeout=1) as ws:
            start = time.monotonic()
            while time.monotonic() - start < warmup:
                await ws.recv(decode=False)
            frames, start = 0, time.monotonic()
            try:
                while time.monotonic() - start < seconds:
                    await ws.recv(decode=False)
                    frames += 1
            except ConnectionClosed:
                return -1.0
            return frames / (time.monotonic() - start)

    out.send(asyncio.run(count()))


def run_case(rate: int, readers: int, warmup: float, seconds: float) -> Result:
    port = free_port()
    server = subprocess.Popen([*bookstream_argv(), "exchange", "--sim", "--host", "127.0.0.1", "--port", str(port),
                               "--symbols", "20", "--rate", str(rate), "--metrics-port", "0",
                               "--log-level", "WARNING"], stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _answers(port), 30, "the exchange")
        context = multiprocessing.get_context("spawn")
        pipes, processes = [], []
        for _ in range(readers):
            receiving, sending = context.Pipe(duplex=False)
            process = context.Process(target=reader, args=(port, warmup, seconds, sending))
            process.start()
            pipes.append(receiving)
            processes.append(process)
        time.sleep(warmup)
        before, cpu_before, started = int(str(health(port)["changes"])), cpu_seconds(server.pid), time.monotonic()
        time.sleep(seconds)
        made = int(str(health(port)["changes"])) - before
        cpu = cpu_seconds(server.pid) - cpu_before
        generated = made / (time.monotonic() - started)
        received = [float(pipe.recv()) for pipe in pipes]
        for process in processes:
            process.join(10)
        return Result(rate, readers, generated, [value for value in received if value >= 0],
                      sum(value < 0 for value in received), cpu / max(made, 1) * 1e6)
    finally:
        server.terminate()
        server.wait(10)


def _answers(port: int) -> bool:
    try:
        health(port)
    except OSError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per case [5]")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring [1]")
    args = parser.parse_args()
    results = []
    for rate, readers in CASES:
        result = run_case(rate, readers, args.warmup, args.seconds)
        results.append(result)
        print(result.line(), flush=True)

    def sustained(readers: int) -> float:
        """The best generated rate that every reader received in full (within 2%)."""
        kept = [result.generated_per_s for result in results if result.readers == readers and not result.dropped
                and all(value >= 0.98 * result.generated_per_s for value in result.received_per_s)]
        return max(kept, default=0.0)

    flat_out = next(result for result in results if result.rate == 0)
    print(f"exchange --sim: sustained {sustained(1):,.0f} frames/s with 1 reader, "
          f"{sustained(3):,.0f} frames/s with 3 readers (20 symbols, 2 cores shared with the readers); "
          f"server CPU {flat_out.cpu_us_per_frame:.1f} us/frame = {1e6 / flat_out.cpu_us_per_frame:,.0f} "
          f"frames/s per core")


if __name__ == "__main__":
    main()
