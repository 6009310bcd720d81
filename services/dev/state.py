"""The state file `bookstream dev` leaves while it runs, so `bookstream status` finds that stack unasked.

It lives in `$XDG_RUNTIME_DIR/bookstream/dev.json` (a per-user tmpfs cleared at logout), else
`~/.cache/bookstream/dev.json`. It may hold a MongoDB URL with a password, so only its owner can read it.
A state whose `bookstream dev` process is gone is ignored: a crash must not point status at dead servers.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import orjson

STATE_VERSION = 1


def state_path(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    runtime = env.get("XDG_RUNTIME_DIR")
    base = Path(runtime) if runtime else Path.home() / ".cache"
    return base / "bookstream" / "dev.json"


@dataclass(frozen=True, slots=True)
class DevState:
    """Where the servers of one `bookstream dev` run listen, and the process ids it started."""

    pid: int
    redis_url: str
    mongo_url: str
    key_prefix: str
    mongo_database: str
    data_dir: str
    processes: dict[str, int] = field(default_factory=dict)
    metrics_ports: dict[str, int] = field(default_factory=dict)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but someone else's
        return True
    return True


def write_state(path: Path, state: DevState) -> None:
    """Write atomically (rename), so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    partial = path.with_suffix(".tmp")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        out.write(orjson.dumps({"version": STATE_VERSION, **_as_dict(state)}, option=orjson.OPT_INDENT_2))
    partial.replace(path)


def _as_dict(state: DevState) -> dict[str, object]:
    return {name: getattr(state, name) for name in DevState.__dataclass_fields__}


def read_state(path: Path) -> DevState | None:
    """The state in `path`, or None when it is absent, unreadable or of another version."""
    try:
        raw = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    if not isinstance(raw, dict) or raw.pop("version", None) != STATE_VERSION:
        return None
    try:
        return DevState(**raw)
    except TypeError:
        return None


def running_state(path: Path | None = None) -> DevState | None:
    """The state of a `bookstream dev` that is still running, else None."""
    state = read_state(path or state_path())
    if state is None or not pid_alive(state.pid):
        return None
    return state


def remove_state(path: Path, pid: int) -> None:
    """Remove the file if it is still ours (another run may have replaced it)."""
    state = read_state(path)
    if state is not None and state.pid == pid:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
