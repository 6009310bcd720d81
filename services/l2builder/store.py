"""MongoDB book documents: how a state is written and read back, and the monotonic, fenced writes.

One document per symbol (README, MongoDB contract), in layout 2 (services.core.bookdoc): every level in
the `levels` map, the best ones in `bids`/`asks`. `version` encodes (epoch, stream id) as one string that
sorts like the tuple. A flush writes each book one of two ways, both atomic on the one document:

- whole: `ReplaceOne({"_id": sym, "version": {"$lt": v}}, {"_id": sym, ...}, upsert=True)`. If the stored
  version is lower the filter matches and the document is replaced; if it is equal or higher the filter
  matches nothing, the upsert tries to insert a second `_id` and fails with 11000. So a retry, a replay or a
  zombie owner with an older epoch can never move a book backwards. A book is written whole when no
  acknowledged write of the same book is stored to build on (a new partial, a restore of a document that
  cannot be built on, an old-layout or foreign document, a whole write of unknown outcome), and when
  `full_write_reason` says so (a delta as large as the book, too many tombstones, a book near the size
  limit).
- delta: `UpdateOne({"_id": sym, "version": {"$in": stored}}, {"$set": ..., "$currentDate": ...})`, no upsert,
  where `stored` are the versions the document may hold: the last acknowledged write's and those of the
  writes of unknown outcome since (a lost acknowledgement). The delta sets the levels changed since the
  acknowledged write (`levels.<id>`, null for a removed one: a tombstone, which a whole write clears), the
  best levels when they changed, and every other field.
  Applying it to any of those versions gives the same document, and to nothing else: a document some other
  writer changed in between is never patched. A delta that matched nothing is read back: already written
  (our version is stored), a newer owner (a higher version), or anything else (`rebase`: write it whole).

A stored `version` that is missing or not a string was written by someone else, and counts as older than
any real one: the 11000 it causes is followed at once by the same write with `takeover_filter`, so the
owner takes such a document over instead of failing on it for ever.

Dates: nx-27017 stores a datetime set by an update on an existing document as text, while a replacement
(which carries `_id`, or nx-27017's upsert would invent one) keeps real BSON dates on both servers. So a
delta sets `updated_at` with `$currentDate` (a real date on both, by the server's clock), and carries
`received_us` (epoch microseconds, an integer on every server) beside `received_at`, which is then text on
nx-27017; restores read `received_us`.

An 11000 is ambiguous on its own: it is also what a retried write gets when its first attempt did land.
`write` reads the stored versions back to tell "already written" from "a newer owner wrote" (and from a
foreign document).

pymongo encodes a whole batch before sending it, and a real MongoDB refuses a document over 16 MiB, so one
book that cannot be stored (too large, or an integer beyond 64 bits) would fail every write for ever:
`write` checks each document first and sets such books aside (`too_large`, `unwritable`); a book whose
document might be near the limit is written whole, so that check sees it.
What the flusher does with a write's result is decided in services.l2builder.flusher.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import bson
from bson.errors import InvalidDocument
from pymongo import AsyncMongoClient, ReplaceOne, UpdateOne
from pymongo.errors import BulkWriteError, ConfigurationError

from services.core.book import L2Book
from services.core.bookdoc import (
    DEFAULT_TOP_LEVELS,
    LAYOUT,
    LEVELS,
    book_levels,
    level_changes,
    level_map,
    tombstones,
)
from services.core.entries import EntryError, parse_stream_id
from services.core.keys import BOOKS_COLLECTION
from services.l2builder.symbol_state import FlushTicket, StaleKind, SymbolState, TopLevels, Written, stale_reason
from services.runtime.config import ConfigError, mask_url
from services.runtime.health import safe_error

DUPLICATE_KEY = 11000
MAX_DOCUMENT_BYTES = 16_000_000
"""The largest book document written: MongoDB refuses documents over 16 MiB (maxBsonObjectSize, 16777216
bytes); the rest is headroom for the update command that wraps the document."""
LEVEL_BYTES_MAX = 47
"""The most BSON bytes one `[price, size, id]` level of `bids`/`asks` takes (a double and two int64, under
an array index of up to seven digits)."""
MAP_LEVEL_BYTES_MAX = 61
"""The most BSON bytes one entry of the level map takes (an id of up to 20 digits, then `["Sell", double,
int64]`); with `LEVEL_BYTES_MAX` it bounds a book's size without encoding its levels."""
FIELDS_BYTES_MAX = 2048
"""A bound on the BSON bytes of a document's other fields, for `document_bound` (a stale reason is cut to
a few hundred characters, the other fields are short)."""
TOMBSTONES_MIN = 1000
"""Removed levels (nulls) a level map may hold before a whole write compacts it, or as many as the book
has levels if that is more: the map stays at most twice the book, and compacting costs little per change."""
UTC = dt.UTC
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)

Document = dict[str, Any]


def version_key(epoch: int, stream_id: str | None) -> str:
    """(epoch, stream id) as fixed-width digits, so string order is tuple order (both parts are 64-bit)."""
    ms, seq = parse_stream_id(stream_id) if stream_id else (0, 0)
    return f"{epoch:020d}-{ms:020d}-{seq:020d}"


def version_filter(symbol: str, version: str) -> Document:
    """Matches the document of `symbol` if it holds a version older than `version`."""
    return {"_id": symbol, "version": {"$lt": version}}


def delta_filter(symbol: str, bases: tuple[str, ...]) -> Document:
    """Matches the document of `symbol` if it holds one of the versions `bases` (what a delta builds on)."""
    return {"_id": symbol, "version": bases[0] if len(bases) == 1 else {"$in": list(bases)}}


def takeover_filter(symbol: str, version: str) -> Document:
    """Matches the document of `symbol` if its version is older than `version` or not one of ours.

    Standard operators only, with the same meaning on MongoDB and nx-27017: `$lt` with a string compares
    strings only on MongoDB (type bracketing), `$nor`+`$type` matches a missing or non-string version, and
    the array clause covers an array of strings, which `$type: "string"` matches on MongoDB. nx-27017 runs
    it by scanning the collection, so it is only used after `version_filter` found a foreign document.
    """
    return {"_id": symbol, "$or": [{"version": {"$lt": version}}, {"$nor": [{"version": {"$type": "string"}}]},
                                   {"version": {"$type": "array"}}]}


@dataclass(frozen=True, slots=True)
class Delta:
    """The delta write of one book: `update` applied to its document if that holds a version in `bases`."""

    version: str
    bases: tuple[str, ...]
    update: Document


def _top(book: L2Book, top_levels: int) -> TopLevels:
    bids, asks = book.top(top_levels)
    return [list(level) for level in bids], [list(level) for level in asks]


def _fields(state: SymbolState, book: L2Book, epoch: int, top_levels: int) -> Document:
    """Every field of the document but the levels, the best levels and `updated_at`."""
    bid_depth, ask_depth = book.depth
    received = state.received_us
    return {"bid_depth": bid_depth, "ask_depth": ask_depth, "truncated": max(bid_depth, ask_depth) > top_levels,
            "timestamp": book.timestamp, "received_us": received, "stream_id": state.stream_id,
            "session": state.session, "seq": state.seq, "epoch": epoch, "status": str(state.status),
            "reason": state.reason, "version": version_key(epoch, state.stream_id),
            "received_at": None if received is None else dt.datetime.fromtimestamp(received / 1e6, UTC)}


def book_document(state: SymbolState, epoch: int, now: dt.datetime,
                  top_levels: int = DEFAULT_TOP_LEVELS) -> Document:
    """The whole document for `state` as written by the owner of `epoch`, but for its `_id`; a stale state
    keeps its last levels (see `SymbolState.mark_stale`)."""
    book = state.shown_book
    bids, asks = _top(book, top_levels)
    return {"layout": LAYOUT, "bids": bids, "asks": asks, **_fields(state, book, epoch, top_levels),
            "updated_at": now, LEVELS: level_map(book)}


def full_write_reason(ticket: FlushTicket, top_levels: int) -> str | None:
    """Why the book of `ticket` must be written whole (the label of the writes metric), None for a delta.

    `no_base`: no acknowledged write of this book is stored to build on. `compaction`: the delta would
    change more than half the book, so it is no smaller than the whole, or the map holds more removed
    levels than `TOMBSTONES_MIN` and the book. `size_check`: the document could be near MongoDB's limit,
    which only a whole write checks (`unstorable`)."""
    book, base = ticket.book, ticket.base
    if base is None or book is None:
        return "no_base"
    if len(ticket.changed) > len(book) // 2 or base.tombstones > max(TOMBSTONES_MIN, len(book)):
        return "compaction"
    if document_bound(len(book) + base.tombstones + len(ticket.changed), top_levels) > MAX_DOCUMENT_BYTES:
        return "size_check"
    return None


def book_delta(state: SymbolState, ticket: FlushTicket, epoch: int,
               top_levels: int) -> tuple[Delta, TopLevels, int, Document]:
    """The delta that turns the stored document of `ticket.base` into the one of `state`, with the best
    levels, (at most) the tombstones and the other fields it leaves stored.

    Only what differs from the base is sent: the levels changed, the best levels and the other fields when
    they changed (all of them when the base's are unknown), so a flush costs what changed, not the book's
    size nor the document's (the version filter makes "differs from the base" exact)."""
    book, base = ticket.book, ticket.base
    assert book is not None and base is not None
    sets, removed = level_changes(book, ticket.changed)
    top = bids, asks = _top(book, top_levels)
    if base.top is None or base.top[0] != bids:
        sets["bids"] = bids
    if base.top is None or base.top[1] != asks:
        sets["asks"] = asks
    fields = _fields(state, book, epoch, top_levels)
    stored = base.fields
    if stored is None:
        sets.update(fields)
    else:
        sets.update({name: value for name, value in fields.items() if name not in stored or stored[name] != value})
    update: Document = {"$set": sets, "$currentDate": {"updated_at": True}}
    return Delta(fields["version"], tuple(base.versions), update), top, base.tombstones + removed, fields


@dataclass(frozen=True, slots=True)
class PlannedWrite:
    """How one flush writes a book: whole (`document`) or as a `delta`; `kind` is "delta" or the reason
    for a whole write (`full_write_reason`); `version`, `top` and (at most) `tombstones` removed levels are
    what the document holds once written, with its other `fields`."""

    kind: str
    version: str
    top: TopLevels
    tombstones: int
    fields: Document
    document: Document | None = None
    delta: Delta | None = None


def plan_write(state: SymbolState, ticket: FlushTicket, epoch: int, now: dt.datetime,
               top_levels: int) -> PlannedWrite:
    """The write of `ticket` (just taken from `state`) by the owner of `epoch`."""
    reason = full_write_reason(ticket, top_levels)
    if reason is None:
        delta, top, removed, fields = book_delta(state, ticket, epoch, top_levels)
        return PlannedWrite("delta", delta.version, top, removed, fields, delta=delta)
    document = book_document(state, epoch, now, top_levels)
    return PlannedWrite(reason, document["version"], (document["bids"], document["asks"]), 0,
                        _fields(state, state.shown_book, epoch, top_levels), document=document)


def restore_state(symbol: str, document: Document | None, resync_interval: float, now: float) -> SymbolState:
    """The state to continue from: the stored book and position, or a fresh state when there is none.

    A stored document that cannot be turned back into an exact book keeps its position but is stale (and
    asks for a partial at once): continuing from the start of the stream instead could apply its
    entries twice. A layout-2 book is what the next delta builds on; any other is written whole next.
    """
    if document is None:
        return SymbolState(symbol, resync_interval)
    received_us = document.get("received_us")
    position: dict[str, Any] = {"stream_id": document.get("stream_id"), "session": document.get("session"),
                                "seq": document.get("seq") or 0,
                                "received_us": int(received_us) if isinstance(received_us, int)
                                and not isinstance(received_us, bool) else stored_epoch_us(document.get("received_at"))}
    book = None
    kind: StaleKind | None = None
    reason = document.get("reason")
    if not isinstance(document.get("version"), str):
        # Written by someone else: neither its levels nor its position can be trusted. The stream is read
        # from its start and the book waits for a partial.
        kind, reason = StaleKind.INVALID_DOCUMENT, stale_reason(StaleKind.INVALID_DOCUMENT,
                                                           "foreign document: no version written by l2builder")
        position.update(stream_id=None, session=None, seq=0)
    elif not _valid_position(position):
        # Without a trustworthy position the stream is read from its start; the book waits for a partial,
        # so nothing read before it is applied, let alone twice.
        kind, reason = StaleKind.INVALID_DOCUMENT, stale_reason(StaleKind.INVALID_DOCUMENT,
                                                           f"stored position is invalid: {position['stream_id']!r}")
        position.update(stream_id=None, session=None, seq=0)
    else:
        try:
            # Layout 1 arrays may say they were cut (`truncated`); layout 2 keeps every level in its map.
            shape = document if document.get("layout") is None else {"timestamp": document.get("timestamp")}
            book = L2Book.from_document(symbol, {**shape, **book_levels(document)})
        except ValueError as exc:
            if document.get("status") == "live":
                kind, reason = StaleKind.INVALID_DOCUMENT, stale_reason(StaleKind.INVALID_DOCUMENT,
                                                                   f"stored book is invalid: {exc}")
        if document.get("status") != "live":
            kind = StaleKind.RESTORED  # its levels, if valid, stay in the document until the next partial
    state = SymbolState.restored(symbol, resync_interval, now, book=book, stale_kind=kind, reason=reason,
                                 **position)
    if book is not None and document.get("layout") == LAYOUT and state.shown_book is book:
        state.written = Written(book, book.loads, [document["version"]], tombstones=tombstones(document))
    return state


def stored_epoch_us(stored: object) -> int | None:
    """A stored time in epoch microseconds: a BSON datetime (naive means UTC, pymongo's default), or its
    text, which is what some MongoDB-protocol servers (nx-27017) give back for a datetime set by an update."""
    if isinstance(stored, str):
        try:
            stored = dt.datetime.fromisoformat(stored)
        except ValueError:
            return None
    if not isinstance(stored, dt.datetime):
        return None
    aware = stored if stored.tzinfo else stored.replace(tzinfo=UTC)
    return (aware - EPOCH) // dt.timedelta(microseconds=1)


def _valid_position(position: dict[str, Any]) -> bool:
    stream_id, seq = position["stream_id"], position["seq"]
    if not isinstance(seq, int) or seq < 0:
        return False
    if stream_id is None:
        return True
    if not isinstance(stream_id, str):
        return False
    try:
        parse_stream_id(stream_id)
    except EntryError:
        return False
    return True


def document_bound(levels: int, top_levels: int) -> int:
    """A bound on the BSON size of a document of `levels` levels, `top_levels` per side in its arrays."""
    return FIELDS_BYTES_MAX + levels * MAP_LEVEL_BYTES_MAX + 2 * top_levels * LEVEL_BYTES_MAX


def document_size(document: Document, exact: bool = False) -> int:
    """The BSON size of `document`, or (unless `exact`) a bound on it at most `MAX_DOCUMENT_BYTES` when that
    proves it fits: encoding a book of many levels twice per flush (here, then in pymongo) would cost more
    than the write. Raises InvalidDocument or OverflowError when BSON cannot encode what it encodes."""
    bids, asks, levels = document.get("bids"), document.get("asks"), document.get(LEVELS)
    if not exact and isinstance(bids, list) and isinstance(asks, list) and isinstance(levels, dict):
        others = bson.encode({name: value for name, value in document.items() if name not in ("bids", "asks", LEVELS)})
        bound = len(others) + 3 * 16 + len(levels) * MAP_LEVEL_BYTES_MAX + (len(bids) + len(asks)) * LEVEL_BYTES_MAX
        if bound <= MAX_DOCUMENT_BYTES:
            return bound
    return len(bson.encode(document))


def unstorable(documents: dict[str, Document], exact: bool = False) -> tuple[dict[str, int], dict[str, str]]:
    """The documents that cannot be stored, by symbol: too large (with their size), and not encodable as
    BSON (with the problem). Without `exact`, levels that the size bound admits are not encoded, so a value
    BSON cannot hold among them is only found by `exact`."""
    too_large: dict[str, int] = {}
    unwritable: dict[str, str] = {}
    for symbol, document in documents.items():
        try:
            size = document_size(document, exact)
        except (InvalidDocument, OverflowError) as exc:
            unwritable[symbol] = f"not encodable as BSON: {exc}"
            continue
        if size > MAX_DOCUMENT_BYTES:
            too_large[symbol] = size
    return too_large, unwritable


def unencodable(deltas: dict[str, Delta]) -> dict[str, str]:
    """The deltas BSON cannot encode (an integer beyond 64 bits), by symbol, with the problem."""
    problems: dict[str, str] = {}
    for symbol, delta in deltas.items():
        try:
            bson.encode(delta.update)
        except (InvalidDocument, OverflowError) as exc:
            problems[symbol] = f"not encodable as BSON: {exc}"
    return problems


@dataclass(slots=True)
class WriteResult:
    """Per symbol: written (now durable), superseded (a newer version is stored), failed (retry later),
    rebase (a delta found no document to build on: what is stored instead; write it whole), same version
    (its version is stored with another status or reason: only a new epoch can store it), too large (its
    size: over `MAX_DOCUMENT_BYTES`) or unwritable (BSON cannot encode it); retrying the last two is
    pointless. Neither of them was sent. `stored_before` are the whole writes among `written` refused
    because the document held their version already: what is stored is what an earlier write left."""

    written: list[str] = field(default_factory=list)
    stored_before: list[str] = field(default_factory=list)
    superseded: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    rebase: dict[str, str] = field(default_factory=dict)
    same_version: dict[str, str] = field(default_factory=dict)
    too_large: dict[str, int] = field(default_factory=dict)
    unwritable: dict[str, str] = field(default_factory=dict)


class BookStore:
    """The `orderbooks` collection through pymongo's async client."""

    def __init__(self, url: str, database: str, timeout: float = 5.0) -> None:
        millis = int(timeout * 1000)
        try:
            self.client: AsyncMongoClient[Document] = AsyncMongoClient(
                url, appname="bookstream-l2builder", serverSelectionTimeoutMS=millis, connectTimeoutMS=millis,
                socketTimeoutMS=millis * 4, tz_aware=True)
        except (ConfigurationError, ValueError) as exc:
            # The async client resolves a mongodb+srv:// name at its first operation, so an unknown name is an
            # unreachable MongoDB, retried. What fails here (credentials its auth mechanism requires, say)
            # no retry can fix.
            raise ConfigError(f"MONGO_CONNECTION_STRING={mask_url(url)!r}: {safe_error(exc)}") from None
        self.collection = self.client[database][BOOKS_COLLECTION]

    async def close(self) -> None:
        await self.client.close()

    async def ping(self) -> None:
        await self.client.admin.command("ping")

    async def load(self, symbol: str) -> Document | None:
        return await self.collection.find_one({"_id": symbol})

    async def load_many(self, symbols: list[str]) -> dict[str, Document]:
        """The stored documents of `symbols` by symbol (absent when there is none), in one query."""
        return {document["_id"]: document async for document in self.collection.find({"_id": {"$in": symbols}})}

    async def write(self, documents: dict[str, Document], deltas: dict[str, Delta] | None = None,
                    exact: bool = False) -> WriteResult:
        """One unordered bulk write of every whole document and delta that can be stored (a symbol in one
        of the two only); raises PyMongoError when nothing could be decided."""
        deltas = deltas or {}
        too_large, unwritable = unstorable(documents, exact)
        if exact:
            unwritable.update(unencodable(deltas))
        storable = {symbol: document for symbol, document in documents.items()
                    if symbol not in too_large and symbol not in unwritable}
        patches = {symbol: delta for symbol, delta in deltas.items() if symbol not in unwritable}
        try:
            result = await self._write(storable, patches)
        except (InvalidDocument, OverflowError):
            if exact:
                raise
            # A value BSON cannot hold hid among levels the size bound let through: look at every byte.
            result = await self.write(storable, patches, exact=True)
        result.too_large.update(too_large)
        result.unwritable.update(unwritable)
        return result

    async def _write(self, documents: dict[str, Document], deltas: dict[str, Delta],
                     takeover: bool = False) -> WriteResult:
        """The bulk write itself; `takeover` writes with `takeover_filter` (documents found foreign)."""
        result = WriteResult()
        if not documents and not deltas:
            return result
        whole, patched = list(documents), list(deltas)
        make_filter = takeover_filter if takeover else version_filter
        operations: list[ReplaceOne[Document] | UpdateOne] = [
            ReplaceOne(make_filter(symbol, documents[symbol]["version"]), {"_id": symbol, **documents[symbol]},
                       upsert=True) for symbol in whole]
        operations += [UpdateOne(delta_filter(symbol, deltas[symbol].bases), deltas[symbol].update)
                       for symbol in patched]
        errors: list[dict[str, Any]] = []
        counts: Mapping[str, Any]
        try:
            counts = (await self.collection.bulk_write(operations, ordered=False)).bulk_api_result
        except BulkWriteError as exc:
            counts = exc.details
            errors = counts.get("writeErrors", [])
            if counts.get("writeConcernErrors"):
                raise
        symbols = whole + patched
        rejected = {symbols[error["index"]]: error for error in errors}
        for symbol, error in rejected.items():
            if error.get("code") != DUPLICATE_KEY or symbol in deltas:
                result.failed[symbol] = str(error.get("errmsg", error))
        result.written = [symbol for symbol in whole if symbol not in rejected]
        applied = [symbol for symbol in patched if symbol not in rejected]
        # Each operation matched, upserted or failed, but for a delta that found no base: its own count.
        missed = len(operations) - counts.get("nMatched", 0) - counts.get("nUpserted", 0) - len(errors)
        if missed:
            await self._resolve_deltas(applied, deltas, result)
        else:
            result.written += applied
        duplicates = [symbol for symbol in whole if rejected.get(symbol, {}).get("code") == DUPLICATE_KEY]
        if duplicates:
            await self._resolve_duplicates(duplicates, documents, takeover, result)
        return result

    async def _resolve_deltas(self, symbols: list[str], deltas: dict[str, Delta], result: WriteResult) -> None:
        """Tell, by the stored versions, which of the deltas landed (now or in an earlier attempt)."""
        stored = {doc["_id"]: doc async for doc in self.collection.find({"_id": {"$in": symbols}}, {"version": 1})}
        for symbol in symbols:
            version = stored.get(symbol, {}).get("version")
            if version == deltas[symbol].version:
                result.written.append(symbol)
            elif isinstance(version, str) and version > deltas[symbol].version:
                result.superseded[symbol] = version
            else:
                result.rebase[symbol] = "no document" if symbol not in stored else f"stored version {version!r}"

    async def _resolve_duplicates(self, symbols: list[str], documents: dict[str, Document], takeover: bool,
                                  result: WriteResult) -> None:
        """Tell "already written" from "a newer owner wrote" for whole writes refused with 11000, and take
        foreign documents over. The same version stored with another status or reason is not this write:
        the book changed without a new entry under the same epoch, and acknowledging it would leave it so."""
        stored = {doc["_id"]: doc async for doc in self.collection.find({"_id": {"$in": symbols}},
                                                                       {"version": 1, "status": 1, "reason": 1})}
        foreign = {}
        for symbol in symbols:
            found, document = stored.get(symbol, {}), documents[symbol]
            version = found.get("version")
            if version == document["version"] and (found.get("status"), found.get("reason")) != (
                    document["status"], document["reason"]):
                result.same_version[symbol] = f"stored {found.get('status')!r} at version {version}"
            elif version == document["version"]:
                result.written.append(symbol)
                result.stored_before.append(symbol)
            elif isinstance(version, str) and version > document["version"]:
                result.superseded[symbol] = version
            elif symbol in stored and not isinstance(version, str) and not takeover:
                foreign[symbol] = document
            else:
                result.failed[symbol] = f"duplicate key with stored version {version!r}"
        if foreign:
            taken = await self._write(foreign, {}, takeover=True)
            result.written += taken.written
            result.stored_before += taken.stored_before
            result.superseded.update(taken.superseded)
            result.same_version.update(taken.same_version)
            result.failed.update(taken.failed)
