"""The lifecycle of one owned symbol, from taking its lease to handing it off, without I/O.

A symbol is first RESTORING (its stored document is loading), then CATCHING_UP (XRANGE from its stored
position up to what the group already handed out, then whatever a read-ahead delivered meanwhile), then
READY: only a ready symbol is read with XREADGROUP. A hole in what the group delivers, or a failed read
that may still have been served, sends it back to CATCHING_UP. RELEASING means it must move to another
instance: it is no longer read or caught up, and is released once what was read from it is settled. A
hand-off called off (the membership moved back) restores it again, from its document when none was
loaded yet, else from the position it reached.

Losing the lease is no phase: the symbol is forgotten at once, in whatever phase it was.
"""

from __future__ import annotations

import enum


class Phase(enum.Enum):
    RESTORING = "restoring"
    CATCHING_UP = "catching_up"
    READY = "ready"
    RELEASING = "releasing"


TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.RESTORING: frozenset({Phase.CATCHING_UP, Phase.RELEASING}),
    Phase.CATCHING_UP: frozenset({Phase.READY, Phase.RELEASING}),
    Phase.READY: frozenset({Phase.CATCHING_UP, Phase.RELEASING}),
    Phase.RELEASING: frozenset({Phase.RESTORING, Phase.CATCHING_UP}),
}
"""The phases each phase may move to; anything else is a bug in the caller."""


class IllegalTransition(RuntimeError):
    """A move the lifecycle does not allow, e.g. READY straight after RESTORING (skipping the catch-up)."""


def transition(current: Phase, target: Phase) -> Phase:
    """`target`, when `current` may move there; raises IllegalTransition otherwise."""
    if target not in TRANSITIONS[current]:
        raise IllegalTransition(f"{current.value} -> {target.value}")
    return target


def kept_phase(restored: bool) -> Phase:
    """Where a symbol whose hand-off is called off goes: back to catching up from the position it reached
    when its document was `restored`, else back to loading it."""
    return Phase.CATCHING_UP if restored else Phase.RESTORING
