"""The benchmarks' child processes: `bookstream` services with a metrics port, their CPU time, and a
measured window over a set of them."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from bench.prometheus import Buckets, delta, histogram, metric
from testkit.harness import ServiceProcess, free_port

T = TypeVar("T")

TERMINATE_SECONDS = 30.0
"""Long enough for l2builder's last bulk write and ingest's last XADD on a busy machine, before SIGKILL."""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc (0 where there is no /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # Split after the last ")": the command name in field 2 may itself hold spaces and parentheses.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_service(workdir: Path, name: str, *args: str, env: dict[str, str],
                  command: Sequence[str] | None = None) -> ServiceProcess:
    """Spawn `bookstream <args>` (or `command <args>`) with a free metrics port, logging to `workdir/<name>.log`."""
    port = free_port()
    return ServiceProcess(name, args, {**env, "METRICS_PORT": str(port), "METRICS_HOST": "127.0.0.1"},
                          workdir / f"{name}.log", port, command)


@contextmanager
def service(workdir: Path, name: str, *args: str, env: dict[str, str],
            healthy: bool = False) -> Iterator[ServiceProcess]:
    """A `bookstream` subprocess with a health port (waited for if `healthy`), stopped on the way out."""
    process = start_service(workdir, name, *args, env=env)
    try:
        if healthy:
            process.wait_healthy(30)
        yield process
    except BaseException:
        # The service's log is deleted with the temporary directory: its end is the only clue left.
        print(f"--- last lines of the {name} log ---\n{process.logs()[-3000:]}")
        raise
    finally:
        process.terminate(TERMINATE_SECONDS)


@dataclass(frozen=True, slots=True)
class Window:
    """What a set of processes did over a measured window: CPU seconds of each, and the metrics text of each
    service at either end."""

    seconds: float
    cpu: dict[str, float]
    before: dict[str, str]
    after: dict[str, str]

    def count(self, service: str, sample: str) -> float:
        """How much counter `sample` (see `prometheus.metric`) of `service` grew over the window."""
        return metric(self.after[service], sample) - metric(self.before[service], sample)

    def buckets(self, service: str, name: str, scale: float = 1.0) -> Buckets:
        """Histogram `name` of `service` over the window, bounds multiplied by `scale`."""
        return delta(histogram(self.before[service], name, scale), histogram(self.after[service], name, scale))


def measure_window(pids: Mapping[str, int], services: Mapping[str, ServiceProcess],
                   during: Callable[[], T]) -> tuple[Window, T]:
    """Run `during()` as the window: every process's CPU time read on either side of it, every service's metrics
    scraped outside that, since a scrape of a busy service can take a while."""
    before = {name: process.metrics() for name, process in services.items()}
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    started = time.monotonic()
    result = during()
    cpu_after = {name: cpu_seconds(pid) for name, pid in pids.items()}
    seconds = time.monotonic() - started
    after = {name: process.metrics() for name, process in services.items()}
    return Window(seconds, {name: cpu_after[name] - cpu_before[name] for name in pids}, before, after), result
