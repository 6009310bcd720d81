"""The benchmarks' child processes: `bookstream` services with a metrics port, and their CPU time."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from testkit.harness import ServiceProcess, free_port

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
