"""The read loop's round trip, built and taken apart by name: acknowledgements, writes, gap marks, the read.

One `RedisWire` call carries, in this order, the XACKs of the batch written last time, the EVALSHAs of
the writes and gap marks of the batch read last time, and the next XREADGROUP; the replies come back in
the same order, each error in its place (services.runtime). Keeping the layout here, beside the function
that splits the replies, means the loop never counts positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from services.core.keys import TOP10_GROUP
from services.runtime.redis_wire import Command
from services.runtime.scripts import ScriptCall
from services.top10.scripts import MARK_GAP, STORE_TOP10
from services.top10.snapshots import Acks


@dataclass(frozen=True, slots=True)
class RoundTripReplies:
    acks: list[Any]
    stores: list[Any]
    """One reply per write (`store_top10.lua`), in the order of the calls."""
    gap_marks: list[Any]
    """One reply per gap mark (`mark_gap.lua`), in the order of the calls."""
    read: Any
    """The XREADGROUP reply (or its error)."""


@dataclass(frozen=True, slots=True)
class RoundTrip:
    commands: list[Command]
    acks: int
    stores: int
    gap_marks: int

    def split(self, replies: Sequence[Any]) -> RoundTripReplies:
        """The replies of `commands`, by what each command was."""
        if len(replies) != len(self.commands):
            raise ValueError(f"{len(replies)} replies to {len(self.commands)} commands")
        stores_end = self.acks + self.stores
        marks_end = stores_end + self.gap_marks
        return RoundTripReplies(acks=list(replies[:self.acks]), stores=list(replies[self.acks:stores_end]),
                                gap_marks=list(replies[stores_end:marks_end]), read=replies[marks_end])


def round_trip(acks: Acks, store_calls: Sequence[ScriptCall], gap_calls: Sequence[ScriptCall],
               read: Command) -> RoundTrip:
    """The commands of one round trip. The scripts make the order of snapshot writes and gap marks
    irrelevant (stream ids decide); the acknowledgements and the writes go before the read, so they are
    done before it blocks."""
    ack_commands: list[Command] = [("XACK", stream, TOP10_GROUP, *ids) for stream, ids in acks.items()]
    commands = [*ack_commands, *(STORE_TOP10.command(*call) for call in store_calls),
                *(MARK_GAP.command(*call) for call in gap_calls), read]
    return RoundTrip(commands, len(ack_commands), len(store_calls), len(gap_calls))
