"""The terminal view of a snapshot: one rich table row per symbol, live instances, problems in colour.

A cell turns red (error) or yellow (warning) when a problem is about it, so the eye finds the trouble
before reading the list below the table. Whatever came from Redis or MongoDB (instance and consumer names,
sessions, reasons) may hold terminal escapes: every text is escaped before it reaches the terminal, and
none is read as rich markup.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, TypeVar

from rich import box
from rich.console import Group as Lines
from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from services.core.keys import L2BUILDER_GROUP, TOP10_GROUP
from services.core.text import escape_controls
from services.status.problems import ERROR
from services.status.snapshot import Problem, Snapshot, Stream, SymbolStatus

MISSING = "-"
SEVERITY_STYLE = {ERROR: "bold red", "warning": "yellow"}
T = TypeVar("T")


def printable(value: T) -> T:
    """`value` (a snapshot, or any part of one) with control characters escaped in every text it holds."""
    cleaned: Any = value
    if isinstance(value, str):
        cleaned = escape_controls(value)
    elif isinstance(value, tuple):
        cleaned = tuple(printable(item) for item in value)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        cleaned = dataclasses.replace(value, **{field.name: printable(getattr(value, field.name))
                                                for field in dataclasses.fields(value)})
    return cleaned  # type: ignore[no-any-return]


def age(seconds: float | None) -> str:
    if seconds is None:
        return MISSING
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.0f}h"


def number(value: float) -> str:
    """A price or size without float noise or exponent: 50000.5, 0.00001234, 1200000."""
    return f"{value:.8f}".rstrip("0").rstrip(".")


def rate(stream: Stream | None) -> str:
    return MISSING if stream is None or stream.rate_per_s is None else f"{stream.rate_per_s:.0f}/s"


def _stream_cell(stream: Stream | None, group_name: str) -> str:
    """Two lines: the stream (length, newest entry's age, rate), then its group (lag, pending)."""
    if stream is None:
        return MISSING
    shown = f"{stream.length:,} {age(stream.last_age_s)}"
    if stream.rate_per_s is not None:
        shown += f" {rate(stream)}"
    group = stream.group(group_name)
    if group is None:
        return f"{shown}\nno group"
    lag = "?" if group.lag is None else f"{group.lag:,}"
    return f"{shown}\nlag {lag} pend {group.pending:,}"


def _owner_cell(status: SymbolStatus) -> str:
    owner = status.owner
    epoch = "" if owner.epoch is None else f"\nepoch {owner.epoch}"
    return (owner.instance or MISSING) + epoch


def _book_cell(status: SymbolStatus) -> str:
    book = status.book
    if book is None:
        return MISSING
    return f"{book.status or '?'} {age(book.age_s)}\n{book.bid_depth}/{book.ask_depth} levels"


def _top10_cell(status: SymbolStatus) -> str:
    top10 = status.top10
    if top10 is None:
        return MISSING
    bid, ask = (MISSING if side is None else number(side[0]) for side in (top10.best_bid, top10.best_ask))
    return f"{age(top10.age_s)}\n{bid} | {ask}"


def _style(problems: tuple[Problem, ...], symbol: str, subjects: tuple[str, ...]) -> str:
    """The style of the worst problem about one of `subjects` of `symbol`, "" when there is none."""
    found = {p.severity for p in problems if p.symbol == symbol and p.subject in subjects}
    if not found:
        return ""
    return SEVERITY_STYLE[ERROR] if ERROR in found else SEVERITY_STYLE["warning"]


COLUMNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("symbol", ()), (f"l2 stream\n{L2BUILDER_GROUP} group", ("l2", "l2:group")), ("owner", ("owner",)),
    ("book", ("book",)), (f"ob10 stream\n{TOP10_GROUP} group", ("ob10", "ob10:group")),
    ("top10 key\nbid | ask", ("top10",)))
"""Each column's title and the problem subjects that colour it."""


def symbols_table(snapshot: Snapshot) -> Table:
    table = Table(box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False)
    widest = max((len(status.symbol) for status in snapshot.symbols), default=6)
    for title, subjects in COLUMNS:
        # The symbol never folds; the owner (an instance name of any length) is the column that gives way.
        table.add_column(title, no_wrap=subjects != ("owner",), overflow="fold",
                         min_width=widest if not subjects else 8 if subjects == ("owner",) else None)
    for status in snapshot.symbols:
        cells = (status.symbol, _stream_cell(status.l2, L2BUILDER_GROUP), _owner_cell(status), _book_cell(status),
                 _stream_cell(status.ob10, TOP10_GROUP), _top10_cell(status))
        table.add_row(*(Text(cell, style=_style(snapshot.problems, status.symbol, subjects) if subjects else "bold")
                        for cell, (_title, subjects) in zip(cells, COLUMNS, strict=True)))
    return table


def header(snapshot: Snapshot) -> Text:
    text = Text()
    text.append("bookstream status", style="bold")
    if snapshot.source == "dev":
        text.append(" (the stack of `bookstream dev`)")
    text.append(f"  {time.strftime('%H:%M:%S', time.localtime(snapshot.taken_at_us / 1e6))}  prefix ")
    text.append(snapshot.key_prefix, style="bold")
    text.append("\nredis ")
    text.append(snapshot.redis.url, style="green" if snapshot.redis.ok else SEVERITY_STYLE[ERROR])
    text.append("  mongo ")
    text.append(f"{snapshot.mongo.url} db {snapshot.mongo.database}",
                style="green" if snapshot.mongo.ok else SEVERITY_STYLE[ERROR])
    return text


def instances(snapshot: Snapshot) -> Text:
    text = Text()
    for name, found in (("ingest sessions", snapshot.instances.ingest), ("top10", snapshot.instances.top10),
                        ("l2builder", snapshot.instances.l2builder)):
        text.append(f"{name}: ", style="bold")
        text.append(", ".join(found) if found else "none", style="" if found else "yellow")
        text.append("   ")
    return text


def problems(snapshot: Snapshot) -> RenderableType:
    """Errors first; the detail column wraps, the others stay aligned."""
    if not snapshot.problems:
        return Text("no problems", style="green")
    grid = Table.grid(padding=(0, 1))
    for _ in range(3):
        grid.add_column(no_wrap=True)
    grid.add_column()
    for problem in sorted(snapshot.problems, key=lambda p: p.severity != ERROR):
        grid.add_row(Text(problem.severity, style=SEVERITY_STYLE.get(problem.severity, "")),
                     Text(problem.symbol or "*"), Text(problem.kind), Text(problem.detail))
    return grid


def render_status(snapshot: Snapshot) -> RenderableType:
    snapshot = printable(snapshot)
    if snapshot.symbols:
        body: RenderableType = symbols_table(snapshot)
    elif snapshot.redis.ok:
        body = Text(f"no streams, keys or books under prefix {snapshot.key_prefix!r}", style="yellow")
    else:
        body = Text("")  # the problems below say why there is nothing to show
    return Lines(header(snapshot), body, instances(snapshot), problems(snapshot))
