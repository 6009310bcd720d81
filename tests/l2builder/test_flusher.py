"""What the flusher decides, without servers: whole write or delta, and what to do with a write's result."""

from __future__ import annotations

from services.core.bitmex import TableFrame
from services.core.book import L2Book
from services.l2builder.flusher import FlushAction, FlushDecision, flush_decisions
from services.l2builder.store import (
    FIELDS_BYTES_MAX,
    LEVEL_BYTES_MAX,
    MAP_LEVEL_BYTES_MAX,
    MAX_DOCUMENT_BYTES,
    TOMBSTONES_MIN,
    WriteResult,
    full_write_reason,
)
from services.l2builder.symbol_state import FlushTicket, StaleKind, Written


def test_flush_decisions_follow_the_write_result() -> None:
    result = WriteResult(written=["OK"], superseded={"OLD": "v9"}, failed={"BAD": "E11000"},
                         too_large={"BIG": 17_000_000}, unwritable={"ODD": "int too large"})
    decisions = flush_decisions(["OK", "OLD", "BAD", "BIG", "ODD"], result)
    assert {symbol: decision.action for symbol, decision in decisions.items()} == {
        "OK": FlushAction.ACKNOWLEDGE, "OLD": FlushAction.DROP, "BAD": FlushAction.RETRY,
        "BIG": FlushAction.MARK_STALE, "ODD": FlushAction.MARK_STALE}
    assert decisions["BAD"].detail == "E11000" and decisions["OLD"].detail == "stored version v9"
    assert decisions["BIG"].stale_kind is StaleKind.TOO_LARGE
    assert decisions["BIG"].detail == "17000000 bytes, over the 16000000-byte limit"
    assert decisions["ODD"].stale_kind is StaleKind.UNWRITABLE and "int too large" in str(decisions["ODD"].detail)
    # A write that raised decided nothing: every symbol it carried retries, each after its own backoff.
    assert flush_decisions(["OK", "BIG"], None) == dict.fromkeys(["OK", "BIG"], FlushDecision(FlushAction.RETRY))


def test_an_empty_write_decides_nothing() -> None:
    assert flush_decisions([], WriteResult()) == {} and flush_decisions([], None) == {}


def test_a_delta_that_found_no_document_to_build_on_is_rewritten_whole_at_once() -> None:
    decisions = flush_decisions(["GONE"], WriteResult(rebase={"GONE": "no document"}))
    assert decisions == {"GONE": FlushDecision(FlushAction.REWRITE, detail="no document")}


def ticket(book: L2Book, changed: set[int], base: bool) -> FlushTicket:
    written = Written(book, book.loads, ["v1"]) if base else None
    return FlushTicket("XBTUSD", True, [], book, book.loads, changed, written)


def test_a_book_is_written_whole_without_a_base_for_a_large_delta_or_near_the_size_limit() -> None:
    book = L2Book("XBTUSD")
    rows = [{"symbol": "XBTUSD", "id": ident, "side": "Buy", "size": 1, "price": float(ident)}
            for ident in range(1, 11)]
    book.apply(TableFrame("orderBookL2", "partial", "XBTUSD", rows))
    assert full_write_reason(ticket(book, {1, 2}, base=False), 25) == "no_base"
    assert full_write_reason(ticket(book, {1, 2}, base=True), 25) is None
    assert full_write_reason(ticket(book, set(range(1, 6)), base=True), 25) is None
    assert full_write_reason(ticket(book, set(range(1, 7)), base=True), 25) == "compaction"
    many_removed = ticket(book, {1}, base=True)
    assert many_removed.base is not None
    many_removed.base.tombstones = TOMBSTONES_MIN
    assert full_write_reason(many_removed, 25) is None
    many_removed.base.tombstones = TOMBSTONES_MIN + 1  # the map holds more removed levels than allowed
    assert full_write_reason(many_removed, 25) == "compaction"
    # Fits, with one level a side in the arrays and one changed level in the map.
    levels = (MAX_DOCUMENT_BYTES - FIELDS_BYTES_MAX - 2 * LEVEL_BYTES_MAX) // MAP_LEVEL_BYTES_MAX - 1
    deep = L2Book("XBTUSD")
    deep.apply(TableFrame("orderBookL2", "partial", "XBTUSD", [
        {"symbol": "XBTUSD", "id": ident, "side": "Buy", "size": 1, "price": float(ident)}
        for ident in range(1, levels + 1)]))
    assert full_write_reason(ticket(deep, {1}, base=True), 1) is None
    assert full_write_reason(ticket(deep, {1}, base=True), 25) == "size_check"
