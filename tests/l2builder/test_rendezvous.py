"""Rendezvous hashing: one owner per symbol, an even spread, and minimal movement when members change."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.l2builder.rendezvous import assigned, owner, weight

SYMBOLS = [f"SYM{i}" for i in range(300)]


def owners(members: list[str]) -> dict[str, str | None]:
    return {symbol: owner(symbol, members) for symbol in SYMBOLS}


def test_weights_are_stable_across_processes() -> None:
    assert weight("l2builder-1", "XBTUSD") == weight("l2builder-1", "XBTUSD")
    assert weight("l2builder-1", "XBTUSD") != weight("l2builder-2", "XBTUSD")
    assert weight("a", "bc") != weight("ab", "c")  # the separator keeps the pair unambiguous


def test_every_symbol_has_exactly_one_owner_and_the_spread_is_even() -> None:
    members = ["a", "b", "c"]
    mine = [assigned(member, SYMBOLS, members) for member in members]
    assert set().union(*mine) == set(SYMBOLS)
    assert sum(len(part) for part in mine) == len(SYMBOLS)
    assert all(70 <= len(part) <= 130 for part in mine), [len(part) for part in mine]
    assert owner("XBTUSD", []) is None


def test_the_order_of_members_does_not_matter() -> None:
    assert owners(["a", "b", "c"]) == owners(["c", "a", "b"])


@given(members=st.lists(st.text("abcdefgh", min_size=1, max_size=6), min_size=1, max_size=6, unique=True),
       newcomer=st.text("xyz", min_size=1, max_size=4))
def test_a_join_or_leave_moves_only_the_symbols_that_must_move(members: list[str], newcomer: str) -> None:
    before = owners(members)
    after = owners([*members, newcomer])
    moved = {symbol for symbol in SYMBOLS if before[symbol] != after[symbol]}
    assert all(after[symbol] == newcomer for symbol in moved)
    assert owners(members) == before  # and leaving again restores exactly the old assignment


def test_an_instance_counts_itself_even_before_its_heartbeat_is_visible() -> None:
    assert assigned("me", SYMBOLS, []) == set(SYMBOLS)
    assert assigned("me", SYMBOLS, ["other"]) == {s for s in SYMBOLS if owner(s, ["me", "other"]) == "me"}
