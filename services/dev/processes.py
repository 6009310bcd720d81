"""Child processes of `bookstream dev`: started in process groups of their own, stopped group by group.

A group of its own keeps the terminal's Ctrl-C away from the children, so `bookstream dev` decides the
order they stop in (services flush to the servers, so the servers go last). On Linux each child also asks
the kernel for a signal when its parent dies, so even a `kill -9` of `bookstream dev` leaves nothing behind:
SIGTERM for the servers (Redis finishes its append-only file), SIGKILL for the services, whose clean stop
would only wait for servers that are stopping at the same moment.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
BIN_DIR = Path(sys.executable).parent


def _die_with_parent(signum: int) -> Callable[[], None]:
    """A `preexec_fn` asking the kernel to send `signum` to the child when its parent dies (Linux only)."""
    def request() -> None:
        if _LIBC is not None:
            _LIBC.prctl(PR_SET_PDEATHSIG, signum)

    return request


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port(preferred: int = 0) -> int:
    """`preferred` when it is free (the usual port makes `redis-cli` work without -p), else any free port."""
    if preferred and port_is_free(preferred):
        return preferred
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


def find_binary(name: str) -> str | None:
    """`name` on PATH, else next to this interpreter (where `scripts/ensure-redis-server` links one)."""
    return shutil.which(name) or shutil.which(name, path=str(BIN_DIR))


def bookstream_argv(subcommand: str) -> list[str]:
    script = BIN_DIR / "bookstream"
    return [str(script), subcommand] if script.exists() else [sys.executable, "-m", "services.cli", subcommand]


@dataclass
class Child:
    """One started process; its output goes to `log_path`."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    metrics_port: int | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def exit_code(self) -> int | None:
        return self.process.poll()

    def signal_group(self, signum: int) -> None:
        # Only while the leader is not reaped: until then its pid, hence the group id, cannot be reused.
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signum)

    def health(self) -> str:
        """"exited N", "healthy", "unhealthy" (503) or "starting" (nothing answers yet)."""
        code = self.exit_code()
        if code is not None:
            return f"exited {code}"
        if not self.metrics_port:
            return "running"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/healthz", timeout=0.5):
                return "healthy"
        except urllib.error.HTTPError:
            return "unhealthy"
        except OSError:
            return "starting"


def spawn(name: str, argv: Sequence[str], log_dir: Path, env: dict[str, str] | None = None,
          metrics_port: int | None = None, death_signal: int = signal.SIGKILL) -> Child:
    log_path = log_dir / f"{name}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   env=env, start_new_session=True, preexec_fn=_die_with_parent(death_signal))
    return Child(name, process, log_path, metrics_port)


def wait_for(ready: Callable[[], bool], child: Child, timeout: float, cancelled: Callable[[], bool]) -> None:
    """Poll `ready` until true; raise RuntimeError if the child exits or `timeout` passes first."""
    deadline = time.monotonic() + timeout
    while not ready():
        code = child.exit_code()
        if code is not None:
            raise RuntimeError(f"{child.name} exited with code {code}; see {child.log_path}")
        if cancelled():
            raise InterruptedError(f"stopped while waiting for {child.name}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{child.name} not ready after {timeout:.0f}s; see {child.log_path}")
        time.sleep(0.1)


def stop_group(children: Sequence[Child], grace_s: float, hurry: Callable[[], bool]) -> None:
    """SIGTERM every child's group, wait up to `grace_s` (or until `hurry()`), then SIGKILL what is left."""
    for child in children:
        child.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while any(child.exit_code() is None for child in children) and time.monotonic() < deadline and not hurry():
        time.sleep(0.05)
    for child in children:
        child.signal_group(signal.SIGKILL)
        child.process.wait()
