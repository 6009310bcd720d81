"""The levels of a MongoDB book document: the level map, the changes a delta writes, and the one reader.

Layout 2 (`"layout": 2`) keeps every level in `levels`, a map from the level id (decimal text) to
`[side, price, size]` (side "Buy" or "Sell"), so that a write can `$set` only the levels that changed
(`levels.<id>` is a field name, never an array index: `levels` is an embedded document). A level removed
since the document was last written whole is `null` (a tombstone) rather than `$unset`: nx-27017 silently
ignores the `$unset` of an update with 64 fields or more, and a `$set` of null has the same meaning on
every server. A whole write leaves no tombstones. Beside it
`bids`/`asks` hold the best levels only, best first, as `[price, size, id]`, with `bid_depth`/`ask_depth`
counting the whole book and `truncated` saying the arrays were cut. A document without `layout` is
layout 1: `bids`/`asks` are the whole book and there is no map.

`book_levels` reads the whole book of either layout, best first; it is the one reader for restores,
tests, benchmarks and examples alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from services.core.book import BUY, SELL, L2Book, Level

LAYOUT: Final = 2
"""The layout l2builder writes; a document of any other layout is read as layout 1 only without `layout`."""
LEVELS: Final = "levels"
DEFAULT_TOP_LEVELS: Final = 10
"""Levels per side in `bids`/`asks` unless configured (BOOK_TOP_LEVELS): the depth of orderBook10, the
venue's own top; a delta rewrites the arrays whenever the top changed, so with few changes per book and
flush their size is most of what a flush sends (the whole book is in `levels`)."""

LevelValue = list[Any]
"""One entry of the level map: `[side, price, size]`."""


def level_value(side: str, level: Level) -> LevelValue:
    return [side, level[0], level[1]]


def level_map(book: L2Book) -> dict[str, LevelValue]:
    """Every level of `book` as the `levels` map of a layout-2 document."""
    bids, asks = book.top(None)
    levels = {str(level[2]): level_value(BUY, level) for level in bids}
    levels.update((str(level[2]), level_value(SELL, level)) for level in asks)
    return levels


def level_changes(book: L2Book, ids: Iterable[int]) -> tuple[dict[str, Any], int]:
    """What a delta `$set`s for the changed `ids`, as dotted paths into the level map: the levels `book`
    holds, and a tombstone (None) for the others; with the number of tombstones. These are current values,
    so sending them again is harmless."""
    sets: dict[str, Any] = {}
    removed = 0
    find = book.level
    for ident in ids:
        found = find(ident)
        if found is None:
            sets[f"{LEVELS}.{ident}"] = None
            removed += 1
        else:
            sets[f"{LEVELS}.{ident}"] = level_value(found[0], found[1])
    return sets, removed


def tombstones(document: Mapping[str, Any]) -> int:
    """The removed levels (None) a layout-2 document's map still holds."""
    levels = document.get(LEVELS)
    return sum(value is None for value in levels.values()) if isinstance(levels, Mapping) else 0


def book_levels(document: Mapping[str, Any]) -> dict[str, list[list[Any]]]:
    """The whole book of a stored document, `{"bids": [[price, size, id], ...], "asks": [...]}` best first.

    Layout 2 is read from its level map, tombstones skipped (checked against `bid_depth`/`ask_depth`), layout 1 from its
    arrays as stored. Raises ValueError for a document of another layout or a malformed map; the values
    themselves are checked by `L2Book.from_document`.
    """
    layout = document.get("layout")
    if layout is None:
        return {"bids": _plain_levels(document.get("bids")), "asks": _plain_levels(document.get("asks"))}
    if layout != LAYOUT or type(layout) is not int:
        raise ValueError(f"unknown document layout {layout!r}")
    levels = document.get(LEVELS)
    if not isinstance(levels, Mapping):
        raise ValueError(f"{LEVELS} is missing or not a map")
    bids: list[list[Any]] = []
    asks: list[list[Any]] = []
    for key, value in levels.items():
        if value is None:
            continue
        if not (isinstance(key, str) and key.isascii() and key.isdigit() and key == str(int(key))):
            raise ValueError(f"level id {key!r} is not a decimal integer")
        if not isinstance(value, list) or len(value) != 3 or value[0] not in (BUY, SELL):
            raise ValueError(f"level {key} is not [side, price, size]: {value!r}")
        side, price, size = value
        (bids if side == BUY else asks).append([price, _plain(size), int(key)])
    try:
        bids.sort(key=lambda level: -level[0])
        asks.sort(key=lambda level: level[0])
    except TypeError:
        raise ValueError("a level price is not a number") from None
    if (len(bids), len(asks)) != (document.get("bid_depth"), document.get("ask_depth")):
        raise ValueError(f"{LEVELS} holds {len(bids)} bids and {len(asks)} asks, the document says"
                         f" {document.get('bid_depth')!r} and {document.get('ask_depth')!r}")
    return {"bids": bids, "asks": asks}


def _plain(value: Any) -> Any:
    """An integer subclass (BSON `Int64`, which pymongo returns beyond 32 bits) as a plain `int`."""
    return int(value) if isinstance(value, int) and type(value) is not int and type(value) is not bool else value


def _plain_levels(levels: Any) -> Any:
    if not isinstance(levels, list):
        return levels
    return [[_plain(value) for value in level] if isinstance(level, list) else level for level in levels]
