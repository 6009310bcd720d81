"""Rendezvous (highest random weight) hashing: which live instance should own each symbol.

Every instance computes the same answer from the same member list with no coordination, and when a member
joins or leaves only the symbols that member wins or held change owner: each symbol goes to the member with
the highest hash of (member, symbol), so adding or removing one member cannot change the comparison
between any two others. That is what makes a rebalance move only the symbols that must move.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def weight(member: str, symbol: str) -> int:
    """A stable pseudo-random weight; blake2b rather than `hash()`, which differs between processes."""
    digest = hashlib.blake2b(f"{member}\x00{symbol}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(symbol: str, members: Iterable[str]) -> str | None:
    """The member that should own `symbol` (ties broken by name), or None when there is no member."""
    best: tuple[int, str] | None = None
    for member in members:
        candidate = (weight(member, symbol), member)
        if best is None or candidate > best:
            best = candidate
    return None if best is None else best[1]


def assigned(me: str, symbols: Iterable[str], members: Iterable[str]) -> set[str]:
    """The symbols `me` should own among `symbols`, given the live `members` (which should include `me`)."""
    everyone = set(members) | {me}
    return {symbol for symbol in symbols if owner(symbol, everyone) == me}
