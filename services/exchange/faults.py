"""Fault injection for tests and drills: what to break, when, on which connection. No I/O here.

Per-connection faults count the data (table) frames queued to that connection, so "after N frames" means
the same thing at any rate and is reproducible. Injections ride in the connection's send queue, in order:
a malformed frame arrives exactly after the frame that triggered it, a stall holds back everything queued
behind it (pongs included), a drop cuts the TCP connection without a closing handshake, as a network
failure would. Connection attempts are rejected with HTTP 429 by a server-wide gate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, NamedTuple

from services.exchange import messages

MALFORMED_FRAMES: Final = (
    b'{"table":"orderBookL2","action":"update","data":[{"symbol":"',  # cut short, as by a broken proxy
    b"<html><body>502 Bad Gateway</body></html>",
    b"[1,2,3]",
)
INJECTED_ERROR: Final = messages.error(
    400, "Injected fault: this error frame was sent by `bookstream exchange` on purpose.")


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """The start-up fault flags; 0 disables a fault."""

    drop_after: int = 0
    drop_every: float = 0.0
    reject: int = 0
    retry_after: float = 0.0
    malformed_every: int = 0
    stall_after: int = 0
    stall_for: float = 0.0
    error_after: int = 0

    @property
    def counts_frames(self) -> bool:
        """True when some fault is triggered by a connection's frame count."""
        return bool(self.drop_after or self.malformed_every or self.stall_after or self.error_after)


class Stall(NamedTuple):
    """Send nothing more on this connection for `seconds`."""

    seconds: float


class Drop(NamedTuple):
    """Cut this connection abruptly."""


Injection = bytes | Stall | Drop
DROP: Final = Drop()


class ConnectionFaults:
    """The frame-count faults of one connection."""

    def __init__(self, plan: FaultPlan) -> None:
        self._plan = plan
        self.frames = 0
        self._malformed = 0

    def after_data_frame(self) -> list[Injection]:
        """Count one more data frame and return what must follow it (usually nothing)."""
        plan = self._plan
        self.frames += 1
        count = self.frames
        injected: list[Injection] = []
        if plan.malformed_every and count % plan.malformed_every == 0:
            injected.append(self.malformed())
        if count == plan.error_after:
            injected.append(INJECTED_ERROR)
        if count == plan.stall_after:
            injected.append(Stall(plan.stall_for))
        if count == plan.drop_after:
            injected.append(DROP)
        return injected

    def malformed(self) -> bytes:
        """The next malformed frame, cycling through the kinds a client may meet."""
        frame = MALFORMED_FRAMES[self._malformed % len(MALFORMED_FRAMES)]
        self._malformed += 1
        return frame


class RejectGate:
    """Answers the next N connection attempts with HTTP 429, as the venue's connection rate limit does."""

    def __init__(self, count: int = 0, retry_after: float = 0.0) -> None:
        self.remaining = count
        self.retry_after = retry_after

    def arm(self, count: int, retry_after: float | None = None) -> None:
        self.remaining += count
        if retry_after is not None:
            self.retry_after = retry_after

    def take(self) -> bool:
        """True when this attempt must be rejected (and counts it)."""
        if self.remaining <= 0:
            return False
        self.remaining -= 1
        return True
