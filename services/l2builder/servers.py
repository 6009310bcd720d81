"""The health of the two servers l2builder depends on, as /healthz and the log see it.

Every round trip that succeeds proves its server reachable (`ok`); the first failure after a success logs
`<name>_unavailable` and the first success after failures `<name>_recovered`, so an outage is two lines
however long it lasts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from services.runtime.health import safe_error
from services.runtime.logs import EventLog


class Dependency:
    def __init__(self, name: str, log: EventLog, count: Callable[[str], None]) -> None:
        """`count(operation)` counts every failure (the service's error metric)."""
        self.name, self._log, self._count = name, log, count
        self.ok_at = time.monotonic()
        self._down_since: float | None = None

    def ok(self) -> None:
        self.ok_at = time.monotonic()
        if self._down_since is not None:
            self._log.info(f"{self.name}_recovered", down_seconds=round(self.ok_at - self._down_since, 3))
            self._down_since = None

    def failed(self, operation: str, exc: BaseException, **fields: Any) -> None:
        self._count(operation)
        if self._down_since is None:
            self._down_since = time.monotonic()
            self._log.warning(f"{self.name}_unavailable", operation=operation, error=safe_error(exc), **fields)

    def age(self, now: float) -> float:
        """Seconds since the server last answered."""
        return now - self.ok_at
