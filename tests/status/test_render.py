"""The terminal view prints what Redis and MongoDB hold as inert text: no escape sequence, no rich markup."""

from __future__ import annotations

import io
from dataclasses import replace

from rich.console import Console

from services.core.keys import L2BUILDER_GROUP
from services.status.render import printable, render_status
from services.status.snapshot import Consumer, Instances, Problem, Snapshot
from tests.status.factories import book, group, snapshot, stream, symbol

HOSTILE = "evil\x1b[2J\x1b]0;pwned\x07\r\n\x00\x9b\u202e[link=http://x]click[/link]"


def rendered(*args: object) -> str:
    out = io.StringIO()
    Console(file=out, width=300, color_system=None, force_terminal=False).print(*args)
    return out.getvalue()


def hostile_snapshot() -> Snapshot:
    consumer = Consumer(HOSTILE, 3, 99.0)
    sym = symbol(l2=stream("p:l2:{XBTUSD}", L2BUILDER_GROUP,
                           groups=(group(L2BUILDER_GROUP, consumers=(consumer,)),), last_session=HOSTILE),
                 book=book(status="stale", reason=HOSTILE))
    base = snapshot(sym)
    return replace(base, instances=Instances((HOSTILE,), (HOSTILE,), (HOSTILE,)),
                   problems=(Problem("book_stale", "error", "XBTUSD", "book", f"book is stale: {HOSTILE}"),))


def test_printable_escapes_every_text_of_a_snapshot() -> None:
    clean = printable(hostile_snapshot())
    escaped = "evil\\x1b[2J\\x1b]0;pwned\\x07\\r\\n\\x00\\x9b\\u202e"
    assert clean.instances.ingest[0].startswith(escaped)
    assert clean.symbols[0].l2 is not None and clean.symbols[0].l2.groups[0].consumers[0].name.startswith(escaped)
    assert clean.problems[0].detail == f"book is stale: {clean.symbols[0].book.reason if clean.symbols[0].book else ''}"
    assert clean.symbols[0].book is not None and clean.symbols[0].book.best_bid == (100.0, 5.0)  # numbers untouched


def test_the_status_table_shows_hostile_names_escaped() -> None:
    text = rendered(render_status(hostile_snapshot()))
    for raw in ("\x1b", "\x07", "\x00", "\x9b", "\u202e", "\r"):
        assert raw not in text
    assert "evil\\x1b[2J" in text
    assert "[link=http://x]click[/link]" in text  # shown as written, not read as markup
