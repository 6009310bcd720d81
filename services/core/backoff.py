"""Capped exponential backoff with jitter, for every loop that retries a server that is down.

Jitter spreads the retries of many instances cut off by the same outage, so they do not hit the server
in lockstep when it comes back; keeping the delay in the upper half of its ceiling means it never
collapses to zero.
"""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """The delay before each retry; `reset()` once the server answers again. `failures` counts the retries
    since the last reset (worth logging on recovery)."""

    def __init__(self, base: float, cap: float, rng: Callable[[], float] = random.random) -> None:
        self.base, self.cap, self._rng = base, cap, rng
        self.failures = 0

    def reset(self) -> None:
        self.failures = 0

    def next_delay(self) -> float:
        """`base * 2^n` capped, then jittered into its upper half."""
        ceiling = min(self.cap, self.base * 2.0 ** self.failures)
        self.failures += 1
        return ceiling / 2 + self._rng() * ceiling / 2
