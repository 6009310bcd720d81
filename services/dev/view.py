"""What `bookstream dev` shows while it runs: a live table on a terminal, one compact line a second otherwise.

Both are drawn from a `bookstream status` snapshot, so the view and `bookstream status` never disagree; like
`bookstream status`, they escape every text that came from Redis or MongoDB before it reaches the terminal.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from rich import box
from rich.console import Group as Lines
from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from services.core.keys import L2BUILDER_GROUP, TOP10_GROUP
from services.status.render import MISSING, SEVERITY_STYLE, age, number, printable, problems, rate
from services.status.snapshot import Level, Snapshot, Stream, SymbolStatus

MAX_PROBLEM_LINES = 6
HEALTH_STYLE = {"healthy": "green", "running": "green", "starting": "yellow", "unhealthy": "bold red"}


def _lag(stream: Stream | None, group_name: str) -> int | None:
    group = stream.group(group_name) if stream else None
    return None if group is None else group.lag


def _prices(status: SymbolStatus) -> tuple[str, str]:
    """Best bid and ask prices: from the top10 key, the freshest source, else from the MongoDB book."""
    sources = [source for source in (status.top10, status.book) if source is not None]
    bid = next((source.best_bid for source in sources if source.best_bid is not None), None)
    ask = next((source.best_ask for source in sources if source.best_ask is not None), None)
    return _price(bid), _price(ask)


def _price(level: Level | None) -> str:
    return MISSING if level is None else number(level[0])


def _book_style(status: SymbolStatus) -> str:
    if status.book is None:
        return "yellow"
    return "green" if status.book.status == "live" else SEVERITY_STYLE["error"]


def _books_count(snapshot: Snapshot) -> tuple[int, int]:
    live = sum(1 for status in snapshot.symbols if status.book is not None and status.book.status == "live")
    return live, len(snapshot.symbols)


def _total_rate(streams: list[Stream | None]) -> str:
    rates = [stream.rate_per_s for stream in streams if stream is not None and stream.rate_per_s is not None]
    return f"{sum(rates):.0f}" if rates else MISSING


def _rates(snapshot: Snapshot) -> str:
    return (f"frames/s l2 {_total_rate([status.l2 for status in snapshot.symbols])} "
            f"ob10 {_total_rate([status.ob10 for status in snapshot.symbols])}")


def render_dev(snapshot: Snapshot, health: Mapping[str, str], banner: str) -> RenderableType:
    snapshot = printable(snapshot)
    table = Table(box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False)
    for title in ("symbol", "bid", "ask", "book", "depth", "age", "l2/s", "ob10/s", "lag"):
        table.add_column(title, no_wrap=True, justify="left" if title in ("symbol", "book") else "right")
    for status in snapshot.symbols:
        book = status.book
        lags = (_lag(status.l2, L2BUILDER_GROUP), _lag(status.ob10, TOP10_GROUP))
        table.add_row(
            Text(status.symbol, style="bold"), *_prices(status),
            Text((book.status or "?") if book else "no book", style=_book_style(status)),
            f"{book.bid_depth}/{book.ask_depth}" if book else MISSING, age(book.age_s if book else None),
            rate(status.l2), rate(status.ob10), "/".join(MISSING if lag is None else str(lag) for lag in lags))
    processes = Text("processes  ", style="bold")
    for name, state in health.items():
        processes.append(f"{name} ")
        processes.append(state, style=HEALTH_STYLE.get(state, "bold red"))
        processes.append("  ")
    live, total = _books_count(snapshot)
    summary = Text(f"books live {live}/{total}   {_rates(snapshot)}   lag = {L2BUILDER_GROUP}/{TOP10_GROUP} "
                   "entries to read", style="bold")
    shown = problems(snapshot) if len(snapshot.problems) <= MAX_PROBLEM_LINES else Text(
        f"{len(snapshot.problems)} problems: run `bookstream status` to see them", style="yellow")
    return Lines(Text(banner), table, summary, processes, shown)


def compact_line(snapshot: Snapshot, health: Mapping[str, str], max_symbols: int = 3) -> str:
    """One line a second for logs and pipes, e.g.
    `12:00:01 books live 2/2 | frames/s l2 40 ob10 40 | lag l2builder 0 top10 0 | XBTUSD 60000.5/60001 25/25
    | problems 0 | processes ok`.
    """
    snapshot = printable(snapshot)
    live, total = _books_count(snapshot)
    l2_lag = sum(lag for status in snapshot.symbols if (lag := _lag(status.l2, L2BUILDER_GROUP)) is not None)
    top10_lag = sum(lag for status in snapshot.symbols if (lag := _lag(status.ob10, TOP10_GROUP)) is not None)
    parts = [f"{time.strftime('%H:%M:%S', time.localtime(snapshot.taken_at_us / 1e6))} books live {live}/{total}",
             _rates(snapshot), f"lag {L2BUILDER_GROUP} {l2_lag} {TOP10_GROUP} {top10_lag}"]
    for status in snapshot.symbols[:max_symbols]:
        depth = f"{status.book.bid_depth}/{status.book.ask_depth}" if status.book else MISSING
        bid, ask = _prices(status)
        parts.append(f"{status.symbol} {bid}/{ask} {depth}")
    parts.append(f"problems {len(snapshot.problems)}")
    unwell = [f"{name} {state}" for name, state in health.items() if state not in ("healthy", "running")]
    parts.append("processes " + (", ".join(unwell) if unwell else "ok"))
    return " | ".join(parts)
