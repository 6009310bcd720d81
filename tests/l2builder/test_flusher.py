"""What the flusher decides from a write's result, without servers."""

from __future__ import annotations

from services.l2builder.flusher import FlushAction, FlushDecision, flush_decisions
from services.l2builder.store import WriteResult
from services.l2builder.symbol_state import StaleKind


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
