"""The per-symbol read pause: only the symbols whose own unacknowledged entries reached the bound wait."""

from __future__ import annotations

from services.l2builder.worker import MAX_UNACKED_PER_SYMBOL, split_by_backlog


def test_one_symbol_over_its_bound_never_stops_the_others() -> None:
    unacked = {"STUCK": MAX_UNACKED_PER_SYMBOL, "BUSY": MAX_UNACKED_PER_SYMBOL - 1, "IDLE": 0}
    assert split_by_backlog(unacked, MAX_UNACKED_PER_SYMBOL) == (["BUSY", "IDLE"], ["STUCK"])


def test_many_symbols_under_their_bound_read_whatever_their_total() -> None:
    unacked = {f"S{number}": MAX_UNACKED_PER_SYMBOL - 1 for number in range(10)}
    read, paused = split_by_backlog(unacked, MAX_UNACKED_PER_SYMBOL)
    assert read == list(unacked) and paused == []
