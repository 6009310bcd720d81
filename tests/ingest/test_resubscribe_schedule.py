"""Resubscribe requests: at most one per symbol per interval, deferred rather than lost, merged when waiting."""

from __future__ import annotations

from services.ingest.control import ResubscribeSchedule


def test_first_request_is_due_at_once() -> None:
    schedule = ResubscribeSchedule(5.0)
    assert schedule.request("A", 100.0) == "scheduled"
    assert schedule.take_due(100.0) == ["A"]
    assert schedule.take_due(100.0) == []


def test_a_request_within_the_interval_is_deferred_to_its_end() -> None:
    schedule = ResubscribeSchedule(5.0)
    schedule.request("A", 100.0)
    schedule.take_due(100.0)
    assert schedule.request("A", 102.0) == "deferred"
    assert schedule.next_due() == 105.0
    assert schedule.take_due(104.9) == []
    assert schedule.take_due(105.0) == ["A"]


def test_requests_for_a_waiting_symbol_are_merged_and_symbols_are_independent() -> None:
    schedule = ResubscribeSchedule(5.0)
    schedule.request("A", 100.0)
    schedule.take_due(100.0)
    assert schedule.request("A", 101.0) == "deferred"
    assert schedule.request("A", 102.0) == "merged"
    assert schedule.request("B", 102.0) == "scheduled"
    assert schedule.take_due(102.0) == ["B"]
    assert schedule.take_due(106.0) == ["A"]


def test_interval_zero_never_defers() -> None:
    schedule = ResubscribeSchedule(0.0)
    for now in (1.0, 1.0, 1.0):
        assert schedule.request("A", now) == "scheduled"
        assert schedule.take_due(now) == ["A"]
