"""The state file of `bookstream dev` and its view, without starting anything."""

from __future__ import annotations

import os
import stat
import subprocess
from dataclasses import replace
from pathlib import Path

from rich.console import Console

from services.dev.state import DevState, read_state, remove_state, running_state, state_path, write_state
from services.dev.view import compact_line, render_dev
from services.status.snapshot import Instances, Owner, Problem, Snapshot
from tests.status.factories import book, snapshot, symbol


def test_state_path_prefers_the_runtime_dir(tmp_path: Path) -> None:
    assert state_path({"XDG_RUNTIME_DIR": str(tmp_path)}) == tmp_path / "bookstream" / "dev.json"
    assert state_path({}) == Path.home() / ".cache" / "bookstream" / "dev.json"


def test_state_round_trip_is_private_and_only_counts_while_its_process_lives(tmp_path: Path) -> None:
    path = tmp_path / "bookstream" / "dev.json"
    state = DevState(pid=os.getpid(), redis_url="redis://127.0.0.1:1/0", mongo_url="mongodb://u:secret@h",
                     key_prefix="bitmex", mongo_database="bitmex", data_dir=str(tmp_path),
                     processes={"redis-server": 1}, metrics_ports={"ingest": 9100})
    write_state(path, state)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it may hold a password
    assert read_state(path) == state
    assert running_state(path) == state

    gone = subprocess.Popen(["true"])
    gone.wait()
    write_state(path, replace(state, pid=gone.pid))
    assert read_state(path) is not None and running_state(path) is None

    remove_state(path, pid=os.getpid())  # no longer ours: left alone
    assert path.exists()
    remove_state(path, pid=gone.pid)
    assert not path.exists()


def test_unreadable_or_foreign_state_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "dev.json"
    assert read_state(path) is None
    path.write_text("{not json")
    assert read_state(path) is None
    path.write_text('{"version": 99, "pid": 1}')
    assert read_state(path) is None


def test_compact_line_summarises_books_rates_lag_and_processes() -> None:
    snap = snapshot(symbol("XBTUSD"), symbol("ETHUSD", book=book(status="stale", reason="gap"),
                                               owner=Owner(None, None, None)))
    line = compact_line(snap, {"ingest": "healthy", "top10": "healthy", "l2builder": "exited 1"})
    assert "books live 1/2" in line
    assert "XBTUSD 100/100.5 25/25" in line
    assert "problems 0" in line  # compact_line shows the snapshot's problems, analyze() fills them
    assert "processes l2builder exited 1" in line
    assert "\n" not in line


def test_dev_view_shows_prices_and_process_health() -> None:
    console = Console(record=True, width=160)
    console.print(render_dev(snapshot(symbol("XBTUSD")), {"ingest": "healthy", "top10": "starting"}, "banner text"))
    text = console.export_text()
    assert "banner text" in text and "XBTUSD" in text and "100.5" in text
    assert "ingest healthy" in text and "top10 starting" in text


HOSTILE = "evil\x1b[2J\x1b]0;pwned\x07\r\n\x00\x9b\u202e[link=http://x]click[/link]"
RAW_CONTROLS = ("\x1b", "\x07", "\x00", "\x9b", "\u202e", "\r")


def hostile_snapshot() -> Snapshot:
    """Symbol, book status, reason and instance names as a hostile writer of Redis or MongoDB could set them."""
    sym = symbol(HOSTILE, book=book(status=HOSTILE, reason=HOSTILE), owner=Owner(HOSTILE, 1, 5.0))
    return replace(snapshot(sym), instances=Instances((HOSTILE,), (HOSTILE,), (HOSTILE,)),
                   problems=(Problem("book_stale", "error", HOSTILE, "book", f"book is stale: {HOSTILE}"),
                             Problem("owner_lost", "error", HOSTILE, "owner", f"owner {HOSTILE} lost")))


def test_dev_view_and_compact_line_print_hostile_texts_escaped() -> None:
    console = Console(record=True, width=300, color_system=None)
    console.print(render_dev(hostile_snapshot(), {"ingest": "healthy"}, "banner"))
    shown = {"view": console.export_text(), "line": compact_line(hostile_snapshot(), {"ingest": "healthy"})}
    for name, text in shown.items():
        for raw in RAW_CONTROLS:
            assert raw not in text, (name, raw)
        assert "evil\\x1b[2J\\x1b]0;pwned\\x07" in text, name
    assert "\n" not in shown["line"]
    assert "book is stale: evil\\x1b[2J" in shown["view"]  # the problems' details too
    assert "[link=http://x]click[/link]" in shown["view"]  # shown as written, not read as markup
