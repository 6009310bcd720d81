"""The lifecycle of an owned symbol: the allowed phase moves, and the refusal of any other."""

from __future__ import annotations

import itertools

import pytest

from services.l2builder.owned import Owned
from services.l2builder.ownership import Lease
from services.l2builder.phase import TRANSITIONS, IllegalTransition, Phase, kept_phase, transition

ALLOWED = {
    (Phase.RESTORING, Phase.CATCHING_UP), (Phase.RESTORING, Phase.RELEASING),
    (Phase.CATCHING_UP, Phase.READY), (Phase.CATCHING_UP, Phase.RELEASING),
    (Phase.READY, Phase.CATCHING_UP), (Phase.READY, Phase.RELEASING),
    (Phase.RELEASING, Phase.RESTORING), (Phase.RELEASING, Phase.CATCHING_UP),
}


@pytest.mark.parametrize(("current", "target"), list(itertools.product(Phase, Phase)))
def test_only_the_lifecycle_moves_are_allowed(current: Phase, target: Phase) -> None:
    if (current, target) in ALLOWED:
        assert transition(current, target) is target
    else:
        with pytest.raises(IllegalTransition, match=f"{current.value} -> {target.value}"):
            transition(current, target)


def test_the_table_names_every_phase() -> None:
    assert set(TRANSITIONS) == set(Phase)
    assert {(current, target) for current, targets in TRANSITIONS.items() for target in targets} == ALLOWED


def test_a_symbol_is_read_only_after_its_catch_up() -> None:
    owned = Owned(Lease("XBTUSD", 1, 0.0, 10.0))
    assert owned.phase is Phase.RESTORING and not owned.ready
    with pytest.raises(IllegalTransition):
        owned.move(Phase.READY)  # skipping the catch-up would lose what the group handed out already
    assert owned.phase is Phase.RESTORING, "a refused move leaves the phase as it was"
    for phase in (Phase.CATCHING_UP, Phase.READY, Phase.CATCHING_UP, Phase.READY):  # a hole, refilled
        owned.move(phase)
    assert owned.ready and not owned.releasing


def test_a_hand_off_called_off_catches_up_again() -> None:
    owned = Owned(Lease("XBTUSD", 1, 0.0, 10.0))
    owned.move(Phase.RELEASING)
    assert owned.releasing and not owned.ready
    with pytest.raises(IllegalTransition):
        owned.move(Phase.READY)  # entries read ahead while releasing were never applied
    owned.move(kept_phase(restored=False))
    assert owned.phase.value == "restoring"  # no document loaded yet: load it
    for phase in (Phase.CATCHING_UP, Phase.READY, Phase.RELEASING):
        owned.move(phase)
    owned.move(kept_phase(restored=True))
    assert owned.phase.value == "catching_up"  # from the position it reached
