"""A log line per interval for events that hostile input can repeat at will; the metric counts every one."""

from __future__ import annotations

LOG_INTERVAL = 10.0


class LogRateLimit:
    """Lets one event through per `interval` seconds and counts the ones held back in between."""

    __slots__ = ("_held", "_interval", "_next")

    def __init__(self, interval: float = LOG_INTERVAL) -> None:
        self._interval = interval
        self._next = float("-inf")
        self._held = 0

    def allow(self, now: float) -> int | None:
        """None when this event is held back; else how many were held back since the last one let through."""
        if now < self._next:
            self._held += 1
            return None
        held, self._held = self._held, 0
        self._next = now + self._interval
        return held
