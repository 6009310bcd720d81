"""Which top-10 keys to mark stale because the ingest session behind them is gone: the pure part, no I/O.

The service reads each second the `session` and `status` of every key it serves, tracks those sessions with
the shared `SessionTracker` (services.core.liveness) and marks what `keys_to_mark` returns. A key that is
merely quiet keeps a present liveness key, so it stays live.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from typing import NamedTuple

from services.top10.scripts import STALE


class KeyLiveness(NamedTuple):
    """The liveness fields of one top-10 key."""

    session: str
    status: str


def keys_to_mark(keys: Mapping[str, KeyLiveness], lost: Set[str]) -> list[tuple[str, str]]:
    """The (symbol, session) of every key not stale yet whose session is lost."""
    return [(symbol, key.session) for symbol, key in keys.items() if key.status != STALE and key.session in lost]
