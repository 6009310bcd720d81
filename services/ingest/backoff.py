"""Reconnect delays: capped exponential backoff with jitter, and the venue's HTTP 429 `Retry-After`.

Jitter spreads the reconnects of many clients cut off by the same outage, so they don't hit the venue
in lockstep. A 429 is the venue's connection rate limit speaking: its `Retry-After` is obeyed (never
undercut, jitter only adds), and without one the wait starts from a much higher floor, because retrying
at the normal pace is exactly what earns more 429s. A venue's wait is obeyed only up to RETRY_AFTER_MAX:
a hostile or broken venue asking for 10^12 s must not park ingest for ever. The jitter applies to the
capped wait, not before the cap: otherwise every client told to wait longer than the cap would wait
exactly the cap, and come back in lockstep.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Final

from services.core.backoff import Backoff

BASE_DELAY: Final = 0.5
MAX_DELAY: Final = 30.0
RATE_LIMITED_MIN_DELAY: Final = 10.0
RATE_LIMITED_MAX_DELAY: Final = 300.0
RETRY_AFTER_JITTER: Final = 0.1


class ReconnectBackoff(Backoff):
    """The delay before each connection attempt; `reset()` once a connection has proved healthy."""

    def __init__(self, base: float = BASE_DELAY, cap: float = MAX_DELAY,
                 rng: Callable[[], float] = random.random) -> None:
        super().__init__(base, cap, rng)

    def rate_limited(self, retry_after: float | None, cap: float = RATE_LIMITED_MAX_DELAY) -> float:
        """The delay after an HTTP 429 (or a 429 error frame): the venue's `Retry-After`, if any, up to `cap`
        (RETRY_AFTER_MAX) whatever the venue asks for, plus up to RETRY_AFTER_JITTER of it; without one,
        a jittered backoff from the rate-limited floor, never more than `cap`."""
        self.failures += 1
        if retry_after is not None:
            return min(cap, retry_after) * (1 + self._rng() * RETRY_AFTER_JITTER)
        ceiling = min(cap, RATE_LIMITED_MAX_DELAY, max(RATE_LIMITED_MIN_DELAY, self.base * 2.0 ** (self.failures + 2)))
        return ceiling / 2 + self._rng() * ceiling / 2


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a `Retry-After` header: delta-seconds or an HTTP date; None if absent or invalid."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - now
        except (TypeError, ValueError, IndexError):
            return None
    if seconds != seconds or seconds == float("inf"):
        return None
    return max(0.0, seconds)
