"""The read loop's round trip, built and taken apart by name: acknowledgements, writes, gap marks, reads.

One wire call carries, in this order, the XACKs of the batch written last time, the EVALSHAs of the writes
and gap marks of the batch read last time, the XREADGROUPs of the streams to read now, and the read of the
activity stream (services.core.activity); the replies come back in the same order, each error in its place
(services.runtime). An XREVRANGE learning where the activity stream ends goes first instead: it must
precede the reads it covers. Keeping the layout here, beside the function that splits the replies, means
the loop never counts positions.
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
    reads: list[Any]
    """One XREADGROUP reply (or its error) per read command."""
    signal: Any
    """The activity stream's reply (or its error)."""


@dataclass(frozen=True, slots=True)
class RoundTrip:
    commands: list[Command]
    acks: int
    stores: int
    gap_marks: int
    signal_first: bool

    def split(self, replies: Sequence[Any]) -> RoundTripReplies:
        """The replies of `commands`, by what each command was."""
        if len(replies) != len(self.commands):
            raise ValueError(f"{len(replies)} replies to {len(self.commands)} commands")
        signal, rest = (replies[0], replies[1:]) if self.signal_first else (replies[-1], replies[:-1])
        stores_end = self.acks + self.stores
        marks_end = stores_end + self.gap_marks
        return RoundTripReplies(acks=list(rest[:self.acks]), stores=list(rest[self.acks:stores_end]),
                                gap_marks=list(rest[stores_end:marks_end]), reads=list(rest[marks_end:]),
                                signal=signal)


def round_trip(acks: Acks, store_calls: Sequence[ScriptCall], gap_calls: Sequence[ScriptCall],
               reads: Sequence[Command], signal: Command, signal_first: bool = False) -> RoundTrip:
    """The commands of one round trip. The scripts make the order of snapshot writes and gap marks
    irrelevant (stream ids decide); the acknowledgements and the writes go before the reads, so they are
    done before a read blocks, and the activity read goes last, being the one that may block."""
    ack_commands: list[Command] = [("XACK", stream, TOP10_GROUP, *ids) for stream, ids in acks.items()]
    commands = [*ack_commands, *(STORE_TOP10.command(*call) for call in store_calls),
                *(MARK_GAP.command(*call) for call in gap_calls), *reads]
    if signal_first:
        commands.insert(0, signal)
    else:
        commands.append(signal)
    return RoundTrip(commands, len(ack_commands), len(store_calls), len(gap_calls), signal_first)
