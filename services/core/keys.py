"""Redis key and stream names of the contract in DESIGN.md, in one place.

Per-symbol keys wrap the symbol in braces (`bitmex:l2:{XBTUSD}`): a Redis Cluster hash tag, so a symbol's
streams, top-10 key, lease and epoch share one slot and a Lua script or a pipeline may touch them together.
Set-wide keys (`symbols`, `control`, `activity:<kind>`, `l2builder:members`, `alive:<session>`) each live
in a slot of their own: no command ever names one of them together with another key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SYMBOL_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,32}")
"""What a symbol may look like: it becomes part of every per-symbol key, a log field and a document `_id`."""
SESSION_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
"""What an ingest session id may look like: it becomes part of a Redis key (the session's liveness key), a
log field and a document, so one read from a stream entry or a key is checked against this first."""

ACTIVITY_KINDS = frozenset({"l2", "ob10"})
"""The stream kinds whose appends are announced on an activity stream (services.core.activity)."""
TOP10_GROUP = "top10"
L2BUILDER_GROUP = "l2builder"
BOOKS_COLLECTION = "orderbooks"
"""The MongoDB collection of l2builder's books, one document per symbol: `bookstream status` reads it too."""
# Resync requests are only useful for seconds; the bound keeps a forgotten control stream small.
CONTROL_MAXLEN = 10_000
INGEST_ALIVE_TTL_MS = 3000
"""Life of an ingest session's liveness key; ingest renews it every INGEST_ALIVE_RENEW seconds while its
session's data is landing (the venue heard from recently, the publisher not stuck), so its absence means the
session is gone (ingest killed, its host cut off, its venue silent, its publishing stuck)."""
INGEST_ALIVE_RENEW = 1.0
SESSION_LOST_AFTER = 1.0
"""How long consumers must see a session's liveness key absent before they call the session lost. It covers
only the moment between a new session's first entries and its first liveness write, which travel apart:
ingest writes the key as soon as the session connects, before it even subscribes, so the entries can only
overtake it when the key's write is slow in Redis. Short, because it adds to the time a dead session's books
stay live: renewal stops, the key expires, then this grace and a consumer's check interval pass."""


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "bitmex"

    def l2_stream(self, symbol: str) -> str:
        return f"{self.prefix}:l2:{{{symbol}}}"

    def ob10_stream(self, symbol: str) -> str:
        return f"{self.prefix}:ob10:{{{symbol}}}"

    def table_stream(self, table: str, symbol: str) -> str:
        """The stream of another table's frames (e.g. `trade`), published only when ingest is told to."""
        return f"{self.prefix}:{table}:{{{symbol}}}"

    def top10(self, symbol: str) -> str:
        """The cached orderBook10 hash, and the PUBLISH channel announcing its changes (in its symbol's slot)."""
        return f"{self.prefix}:top10:{{{symbol}}}"

    def activity(self, kind: str) -> str:
        """The activity stream of the `kind` (`l2`, `ob10`) streams: which symbols just got entries
        (services.core.activity)."""
        return f"{self.prefix}:activity:{kind}"

    def stream_activity(self, stream: str) -> str | None:
        """The activity stream that announces entries of `stream`, None for a stream without one."""
        kind = stream[len(self.prefix) + 1:].partition(":")[0]
        return self.activity(kind) if kind in ACTIVITY_KINDS else None

    @property
    def control(self) -> str:
        return f"{self.prefix}:control"

    @property
    def symbols(self) -> str:
        return f"{self.prefix}:symbols"

    def ingest_alive(self, session: str) -> str:
        """The liveness key of one ingest session (a string with a short TTL: ingest's instance name)."""
        return f"{self.prefix}:alive:{session}"

    def lease(self, symbol: str) -> str:
        return f"{self.prefix}:lease:{{{symbol}}}"

    def epoch(self, symbol: str) -> str:
        return f"{self.prefix}:epoch:{{{symbol}}}"

    @property
    def l2builder_members(self) -> str:
        return f"{self.prefix}:l2builder:members"

    def symbol_of(self, stream: str) -> str:
        """The symbol inside a per-symbol key's braces."""
        start, end = stream.find("{"), stream.rfind("}")
        if start < 0 or end <= start:
            raise ValueError(f"not a per-symbol key: {stream!r}")
        return stream[start + 1:end]
