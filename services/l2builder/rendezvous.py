"""Rendezvous hashing with bounded load: which live instance should own each symbol.

Every instance computes the same answer from the same member list and symbol list with no coordination. Plain
rendezvous hashing (each symbol to the member with the highest hash of (member, symbol)) moves only the
symbols that must move when a member joins or leaves, but with few symbols it is lumpy: a handful of symbols
over a few members often leaves one member with nothing. So each member also has a capacity, and the
assignment is a greedy matching under the same weights: take the (member, symbol) pairs from the highest
weight down and give the symbol to the member whenever the symbol is still free and the member still has room.
First every member may take floor(symbols / members), then the leftover symbols go one per member; so every
member ends with floor or ceil of the even share. The matching depends only on the weights, never on the order
of the lists, and a pair that wins under plain rendezvous hashing still wins unless its member is full of
symbols it weighs higher, which keeps the symbols that move on a membership change close to the share the
change must move.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable


def weight(member: str, symbol: str) -> int:
    """A stable pseudo-random weight; blake2b rather than `hash()`, which differs between processes."""
    digest = hashlib.blake2b(f"{member}\x00{symbol}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def assignment(symbols: Iterable[str], members: Iterable[str]) -> dict[str, str]:
    """The owner of every symbol among the `members`; empty when there is no member."""
    return dict(_assignment(tuple(sorted(set(symbols))), tuple(sorted(set(members)))))


@functools.lru_cache(maxsize=64)
def _assignment(symbols: tuple[str, ...], members: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    if not members:
        return ()
    pairs = sorted(((weight(member, symbol), member, symbol) for member in members for symbol in symbols),
                   reverse=True)
    owners: dict[str, str] = {}
    load = dict.fromkeys(members, 0)
    floor = len(symbols) // len(members)
    for capacity in (floor, floor + 1):
        for _, member, symbol in pairs:
            if symbol not in owners and load[member] < capacity:
                owners[symbol] = member
                load[member] += 1
    return tuple(sorted(owners.items()))


def assigned(me: str, symbols: Iterable[str], members: Iterable[str]) -> set[str]:
    """The symbols `me` should own among `symbols`, given the live `members` (which should include `me`)."""
    everyone = set(members) | {me}
    return {symbol for symbol, member in assignment(symbols, everyone).items() if member == me}
