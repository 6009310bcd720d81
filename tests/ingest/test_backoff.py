"""Reconnect delays: capped, jittered, exponential; HTTP 429 obeys Retry-After or backs off longer."""

from __future__ import annotations

import email.utils

import pytest

from services.ingest.backoff import (
    MAX_DELAY,
    RATE_LIMITED_MIN_DELAY,
    RETRY_AFTER_JITTER,
    ReconnectBackoff,
    parse_retry_after,
)


@pytest.mark.parametrize("draw", [0.0, 0.5, 1.0])
def test_delays_double_within_their_jitter_band_up_to_the_cap(draw: float) -> None:
    backoff = ReconnectBackoff(base=0.5, rng=lambda: draw)
    delays = [backoff.next_delay() for _ in range(12)]
    for attempt, delay in enumerate(delays):
        ceiling = min(MAX_DELAY, 0.5 * 2 ** attempt)
        assert ceiling / 2 <= delay <= ceiling
    assert max(delays) <= MAX_DELAY
    assert delays[-1] >= MAX_DELAY / 2


def test_reset_starts_again_from_the_base() -> None:
    backoff = ReconnectBackoff(base=0.5, rng=lambda: 1.0)
    for _ in range(5):
        backoff.next_delay()
    backoff.reset()
    assert backoff.next_delay() == 0.5


def test_rate_limited_obeys_retry_after_never_less() -> None:
    backoff = ReconnectBackoff(rng=lambda: 1.0)
    assert 7.0 <= backoff.rate_limited(7.0) <= 7.0 * 1.1
    assert ReconnectBackoff(rng=lambda: 0.0).rate_limited(7.0) == 7.0


def test_rate_limited_without_retry_after_waits_much_longer_than_a_normal_failure() -> None:
    backoff = ReconnectBackoff(base=0.5, rng=lambda: 0.0)
    assert backoff.rate_limited(None) >= RATE_LIMITED_MIN_DELAY / 2
    assert ReconnectBackoff(base=0.5, rng=lambda: 0.0).next_delay() < RATE_LIMITED_MIN_DELAY / 2


def test_parse_retry_after_reads_seconds_and_http_dates() -> None:
    assert parse_retry_after("3", 0.0) == 3.0
    assert parse_retry_after(" 1.5 ", 0.0) == 1.5
    assert parse_retry_after(email.utils.formatdate(1_000_030, usegmt=True), 1_000_000.0) == 30.0
    assert parse_retry_after(email.utils.formatdate(999_000, usegmt=True), 1_000_000.0) == 0.0
    for invalid in (None, "", "soon", "nan", "inf"):
        assert parse_retry_after(invalid, 0.0) is None


def test_rate_limited_waits_are_capped_whatever_the_venue_asks_then_jittered() -> None:
    assert ReconnectBackoff(rng=lambda: 0.0).rate_limited(1e12, cap=300.0) == 300.0
    jittered = ReconnectBackoff(rng=lambda: 1.0).rate_limited(1e12, cap=300.0)
    assert jittered == pytest.approx(300.0 * (1 + RETRY_AFTER_JITTER))
    assert ReconnectBackoff(rng=lambda: 1.0).rate_limited(None, cap=1.0) == 1.0
    assert ReconnectBackoff(rng=lambda: 0.0).rate_limited(None, cap=1.0) == 0.5
    assert ReconnectBackoff(rng=lambda: 0.0).rate_limited(0.5, cap=1.0) == 0.5


def test_clients_capped_at_the_same_value_do_not_come_back_in_lockstep() -> None:
    draws = iter([0.1 * n for n in range(10)])
    delays = {ReconnectBackoff(rng=lambda: next(draws)).rate_limited(1e12, cap=60.0) for _ in range(10)}
    assert len(delays) == 10
    assert min(delays) == 60.0 and max(delays) <= 60.0 * (1 + RETRY_AFTER_JITTER)
