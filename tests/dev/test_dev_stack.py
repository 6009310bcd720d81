"""`bookstream dev` for real: books within 30 seconds, `status` finds it, and SIGINT leaves no process behind."""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from services.dev.state import read_state
from testkit.harness import base_env, bookstream_argv, wait_until

BOOKS_WITHIN_S = 30.0


def group_members(groups: set[int]) -> list[str]:
    """Live processes (zombies excluded) whose process group is one of `groups`, from /proc."""
    found = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat_file.read_text()
        except OSError:
            continue
        # Fields after the command name, which is in parentheses and may itself contain spaces.
        state, _ppid, pgid = text[text.rindex(")") + 2:].split()[:3]
        if int(pgid) in groups and state != "Z":
            found.append(f"{stat_file.parent.name}: {text[:80]}")
    return found


class Output:
    """Collects a child's stdout lines on a thread, so the test can wait for one without blocking."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.lines: list[str] = []
        assert process.stdout is not None
        stream = process.stdout
        self._thread = threading.Thread(target=lambda: self.lines.extend(line.decode() for line in stream),
                                        daemon=True)
        self._thread.start()

    def wait_for(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((line for line in list(self.lines) if text in line), None)
            if found is not None:
                return found
            time.sleep(0.2)
        raise AssertionError(f"no {text!r} within {timeout:.0f}s; output:\n{''.join(self.lines[-20:])}")


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Output, dict[str, str]]]:
    env = base_env(XDG_RUNTIME_DIR=str(tmp_path))
    for name in ("MONGO_DATABASE", "COLUMNS"):
        env.pop(name, None)
    with (tmp_path / "dev.err").open("wb") as errors:
        process = subprocess.Popen(
            [*bookstream_argv(), "dev", "--symbols", "XBTUSD,ETHUSD", "--rate", "50", "--redis-port", "0",
             "--mongo-port", "0"], stdout=subprocess.PIPE, stderr=errors, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True)
    try:
        yield process, Output(process), env
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(40)
            except subprocess.TimeoutExpired:
                process.kill()  # its children get SIGTERM from the kernel (PR_SET_PDEATHSIG)
                process.wait()
        print((tmp_path / "dev.err").read_text(errors="replace")[-5000:])


def test_dev_shows_books_then_stops_everything_on_sigint(
        dev: tuple[subprocess.Popen[bytes], Output, dict[str, str]], tmp_path: Path) -> None:
    process, output, env = dev
    line = output.wait_for("books live 2/2", BOOKS_WITHIN_S)
    assert "XBTUSD " in line and "ETHUSD " in line

    state = read_state(tmp_path / "bookstream" / "dev.json")
    assert state is not None and state.pid == process.pid
    assert set(state.processes) == {"redis-server", "nx-27017", "exchange", "ingest", "top10", "l2builder"}

    def status_document() -> dict[str, Any]:
        status = subprocess.run([*bookstream_argv(), "status", "--json"], capture_output=True, env=env, timeout=30)
        loaded: dict[str, Any] = orjson.loads(status.stdout)
        return loaded

    # top10 joins the group of a new ob10 stream at its next discovery pass, a moment after books go live.
    wait_until(lambda: all(entry["ob10"]["groups"] for entry in status_document()["symbols"]), 15,
               "top10 to join the group of every ob10 stream")
    document = status_document()
    assert document["source"] == "dev" and document["redis"]["url"] == state.redis_url
    for entry in document["symbols"]:
        assert entry["owner"]["instance"] == "dev-l2builder"
        assert entry["book"]["status"] == "live" and entry["book"]["bid_depth"] > 0
        assert [group["name"] for group in entry["l2"]["groups"]] == ["l2builder"]
        assert [group["name"] for group in entry["ob10"]["groups"]] == ["top10"]
    assert document["instances"]["l2builder"] == ["dev-l2builder"]

    groups = {state.pid, *state.processes.values()}  # every child leads a process group of its own
    assert len(group_members(groups)) >= len(groups)
    process.send_signal(signal.SIGINT)
    assert process.wait(40) == 0
    assert group_members(groups) == []
    assert not (tmp_path / "bookstream" / "dev.json").exists()
    assert not Path(state.data_dir).exists()


def test_children_die_with_bookstream_dev_even_when_it_is_killed(
        dev: tuple[subprocess.Popen[bytes], Output, dict[str, str]], tmp_path: Path) -> None:
    process, output, _env = dev
    output.wait_for("processes ok", BOOKS_WITHIN_S)
    state = read_state(tmp_path / "bookstream" / "dev.json")
    assert state is not None
    groups = set(state.processes.values())
    process.kill()  # no chance to clean up: the kernel signals the children (PR_SET_PDEATHSIG)
    process.wait()
    wait_until(lambda: group_members(groups) == [], 15, "the children of a killed `bookstream dev` to exit")
    shutil.rmtree(state.data_dir)  # what a killed process cannot clean up itself
