"""Rate-limited logging of events that hostile or broken input can repeat at line rate.

Every occurrence is still counted by a metric; only the log lines are bounded, so a flood of bad frames or
names cannot fill a disk or drown the other events. The first lines of a burst go through as they come,
the rest are held back, and the next line let through says how many were (its `suppressed` field).
"""

from __future__ import annotations

from typing import Final

BURST: Final = 5
WINDOW: Final = 10.0


class LogLimit:
    """At most `burst` log lines per `window` seconds for one kind of event; times in monotonic seconds."""

    __slots__ = ("_held", "_lines", "_window_start", "burst", "window")

    def __init__(self, burst: int = BURST, window: float = WINDOW) -> None:
        self.burst, self.window = burst, window
        self._window_start = float("-inf")
        self._lines = 0
        self._held = 0

    def admit(self, now: float) -> int | None:
        """None when this occurrence must not be logged; else how many were held back since the last line."""
        if now - self._window_start >= self.window:
            self._window_start, self._lines = now, 0
        if self._lines >= self.burst:
            self._held += 1
            return None
        self._lines += 1
        held, self._held = self._held, 0
        return held
