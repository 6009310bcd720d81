"""Whether a dependency (Redis, MongoDB) answers: one health helper and one vocabulary for every service.

A change is logged once, never per retry: `<dependency>_unavailable` (operation, error) when an operation
fails while the dependency was up or before anything succeeded, `<dependency>_recovered` (operation, down_s)
when an operation succeeds again. The operation (a loop's kind of work: publish, read, claim, flush...) is
a field of both events and the label of both metrics: every failure counts in `errors(operation)`
(`bookstream_<service>_<dependency>_errors_total{operation}`), and `up(operation)` is 1 or 0.

What is up or down is the caller's choice. Per operation (the default: ingest, top10), where each loop has
its own connection or command and one may fail while another works: each operation goes down and recovers
on its own, and `describe` and `problems` give the /healthz detail per operation. Per server
(`per_operation=False`: l2builder), where every operation goes to the same server and any answer proves it
back: one state, so an outage is two lines however many operations fail during it. Either way
`failing_for(operation)` says how long one operation has failed without a success in between: per server,
an operation on a connection of its own (l2builder's reads) may fail while the others prove the server up.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge

from services.runtime.health import safe_error
from services.runtime.logs import EventLog


@dataclass(slots=True)
class OperationHealth:
    up: bool | None
    """None until the operation first succeeded or failed."""
    since: float
    """Monotonic time of the last change (or of the start)."""
    error: str
    """The last failure's safe description (empty while up)."""


class DependencyHealth:
    """The up/down state of one dependency; time is `time.monotonic()` throughout."""

    def __init__(self, dependency: str, log: EventLog, errors: Callable[[str], Counter] | None = None,
                 up: Callable[[str], Gauge] | None = None, *, per_operation: bool = True) -> None:
        """`errors(operation)` and `up(operation)` are the metric children to count in (e.g. `Counter.labels`);
        `up` only per operation, where each operation has a state to show."""
        if up is not None and not per_operation:
            raise ValueError("an up gauge per operation needs health per operation")
        self.dependency = dependency
        self._log, self._errors, self._up = log, errors, up
        self._per_operation = per_operation
        self._operations: dict[str, OperationHealth] = {}
        self.last_ok_at = time.monotonic()
        """When any operation last succeeded (the start, before any did)."""
        self.last_error = ""
        """`<operation>: <safe error>` of the last failure of any operation, kept after recovery."""
        self._failing_since: dict[str, float] = {}
        """Per operation, its first failure since its last success (absent while it succeeds)."""

    def operation(self, name: str) -> OperationHealth:
        """The state of `name` (unknown until it first succeeds or fails); per server, the server's state."""
        key = name if self._per_operation else self.dependency
        found = self._operations.get(key)
        if found is None:
            found = self._operations[key] = OperationHealth(None, time.monotonic(), "")
        return found

    def failing_for(self, operation: str, now: float) -> float:
        """Seconds since `operation` began failing without a success since; 0.0 while it is not failing."""
        since = self._failing_since.get(operation)
        return 0.0 if since is None else now - since

    def succeeded(self, operation: str) -> None:
        state = self.operation(operation)
        self.last_ok_at = now = time.monotonic()
        self._failing_since.pop(operation, None)
        if state.up is True:
            return
        if state.up is False:
            self._log.info(f"{self.dependency}_recovered", operation=operation, down_s=round(now - state.since, 3))
        state.up, state.since, state.error = True, now, ""
        if self._up is not None:
            self._up(operation).set(1)

    def failed(self, operation: str, exc: BaseException) -> None:
        state = self.operation(operation)
        self._failing_since.setdefault(operation, time.monotonic())
        state.error = safe_error(exc)
        self.last_error = f"{operation}: {state.error}"
        if self._errors is not None:
            self._errors(operation).inc()
        if state.up is False:
            return
        self._log.error(f"{self.dependency}_unavailable", operation=operation, error=state.error)
        state.up, state.since = False, time.monotonic()
        if self._up is not None:
            self._up(operation).set(0)

    def describe(self, operations: tuple[str, ...] = ()) -> dict[str, Any]:
        """`{operation: {"up", "for_s", "error"}}` for `operations` (default: every one seen so far)."""
        now = time.monotonic()
        shown = operations or tuple(self._operations)
        return {name: {"up": state.up, "for_s": round(now - state.since, 3), "error": state.error}
                for name, state in ((name, self.operation(name)) for name in shown)}

    def problems(self, operations: tuple[str, ...] = ()) -> list[str]:
        """One /healthz problem per operation down: `<dependency> unavailable (<operation>): <error>`."""
        return [f"{self.dependency} unavailable ({name}): {state.error}"
                for name, state in ((name, self.operation(name)) for name in operations or tuple(self._operations))
                if state.up is False]
