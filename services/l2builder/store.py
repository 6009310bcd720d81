"""MongoDB book documents: how a state is written and read back, and the monotonic filtered upsert.

One document per symbol (DESIGN.md, MongoDB contract). Every write replaces the whole document:
`ReplaceOne({"_id": sym, "version": {"$lt": v}}, {"_id": sym, ...}, upsert=True)` where `v` encodes
(epoch, stream id) as one string that sorts like the tuple. If the stored version is lower the filter
matches and the document is replaced; if it is equal or higher the filter matches nothing, the upsert
tries to insert a second `_id` and fails with 11000. So a retry, a replay or a zombie owner with an older
epoch can never move a book backwards.

A stored `version` that is missing or not a string was written by someone else, and counts as older than
any real one: the 11000 it causes is followed at once by the same write with `takeover_filter`, so the
owner takes such a document over instead of failing on it for ever.

A replacement, not `$set`: nx-27017 stores a datetime set by an update on an existing document as text,
while a replacement (which carries `_id`, or nx-27017's upsert would invent one) keeps real BSON dates on
both servers.

An 11000 is ambiguous on its own: it is also what a retried write gets when its first attempt did land.
`write` reads the stored versions back to tell "already written" from "a newer owner wrote" (and from a
foreign document).

pymongo encodes a whole batch before sending it, and a real MongoDB refuses a document over 16 MiB, so one
book that cannot be stored (too large, or an integer beyond 64 bits) would fail every write for ever:
`write` checks each document first and sets such books aside (`too_large`, `unwritable`).
What the flusher does with a write's result is decided in services.l2builder.flusher.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import bson
from bson.errors import InvalidDocument
from bson.int64 import Int64
from pymongo import AsyncMongoClient, ReplaceOne
from pymongo.errors import BulkWriteError, ConfigurationError

from services.core.book import L2Book
from services.core.entries import EntryError, parse_stream_id
from services.core.keys import BOOKS_COLLECTION
from services.l2builder.symbol_state import StaleKind, SymbolState, stale_reason
from services.runtime.config import ConfigError, mask_url
from services.runtime.health import safe_error

DUPLICATE_KEY = 11000
MAX_DOCUMENT_BYTES = 16_000_000
"""The largest book document written: MongoDB refuses documents over 16 MiB (maxBsonObjectSize, 16777216
bytes); the rest is headroom for the update command that wraps the document."""
LEVEL_BYTES_MAX = 47
"""The most BSON bytes one `[price, size, id]` level of an `L2Book` takes (a double and two int64, under
an array index of up to seven digits); it bounds a book's size without encoding its levels."""
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


def takeover_filter(symbol: str, version: str) -> Document:
    """Matches the document of `symbol` if its version is older than `version` or not one of ours.

    Standard operators only, with the same meaning on MongoDB and nx-27017: `$lt` with a string compares
    strings only on MongoDB (type bracketing), `$nor`+`$type` matches a missing or non-string version, and
    the array clause covers an array of strings, which `$type: "string"` matches on MongoDB. nx-27017 runs
    it by scanning the collection, so it is only used after `version_filter` found a foreign document.
    """
    return {"_id": symbol, "$or": [{"version": {"$lt": version}}, {"$nor": [{"version": {"$type": "string"}}]},
                                   {"version": {"$type": "array"}}]}


def book_document(state: SymbolState, epoch: int, now: dt.datetime) -> Document:
    """The document for `state` as written by the owner of `epoch`, but for its `_id`; a stale state keeps
    its last levels (see `SymbolState.mark_stale`)."""
    book = state.book if state.book.has_partial or state.last_book is None else state.last_book
    levels = book.to_document()
    received = state.received_us
    return {
        "bids": levels["bids"],
        "asks": levels["asks"],
        "timestamp": levels["timestamp"],
        "received_at": None if received is None else dt.datetime.fromtimestamp(received / 1e6, UTC),
        "updated_at": now,
        "stream_id": state.stream_id,
        "session": state.session,
        "seq": state.seq,
        "epoch": epoch,
        "status": str(state.status),
        "reason": state.reason,
        "version": version_key(epoch, state.stream_id),
    }


def restore_state(symbol: str, document: Document | None, resync_interval: float, now: float) -> SymbolState:
    """The state to continue from: the stored book and position, or a fresh state when there is none.

    A stored document that cannot be turned back into an exact book keeps its position but is stale (and
    asks for a partial at once): continuing from the start of the stream instead could apply its
    entries twice.
    """
    if document is None:
        return SymbolState(symbol, resync_interval)
    position: dict[str, Any] = {"stream_id": document.get("stream_id"), "session": document.get("session"),
                                "seq": document.get("seq") or 0,
                                "received_us": stored_epoch_us(document.get("received_at"))}
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
            book = L2Book.from_document(symbol, {**document, "bids": _plain_levels(document.get("bids")),
                                                 "asks": _plain_levels(document.get("asks"))})
        except ValueError as exc:
            if document.get("status") == "live":
                kind, reason = StaleKind.INVALID_DOCUMENT, stale_reason(StaleKind.INVALID_DOCUMENT,
                                                                   f"stored book is invalid: {exc}")
        if document.get("status") != "live":
            kind = StaleKind.RESTORED  # its levels, if valid, stay in the document until the next partial
    return SymbolState.restored(symbol, resync_interval, now, book=book, stale_kind=kind, reason=reason,
                                **position)


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


def document_size(document: Document, exact: bool = False) -> int:
    """The BSON size of `document`, or (unless `exact`) a bound on it at most `MAX_DOCUMENT_BYTES` when that
    proves it fits: encoding a book of many levels twice per flush (here, then in pymongo) would cost more
    than the write. Raises InvalidDocument or OverflowError when BSON cannot encode what it encodes."""
    bids, asks = document.get("bids"), document.get("asks")
    if not exact and isinstance(bids, list) and isinstance(asks, list):
        bound = (len(bson.encode({name: value for name, value in document.items() if name not in ("bids", "asks")}))
                 + 2 * 16 + (len(bids) + len(asks)) * LEVEL_BYTES_MAX)
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


def _plain_levels(levels: Any) -> Any:
    """Levels with BSON `Int64` (what pymongo returns for ids beyond 32 bits) turned into plain `int`."""
    if not isinstance(levels, list):
        return levels
    return [[int(value) if isinstance(value, Int64) else value for value in level] if isinstance(level, list)
            else level for level in levels]


@dataclass(slots=True)
class WriteResult:
    """Per symbol: written (now durable), superseded (a newer version is stored), failed (retry later),
    too large (its size: over `MAX_DOCUMENT_BYTES`) or unwritable (BSON cannot encode it); retrying the
    last two is pointless. Neither of them was sent."""

    written: list[str] = field(default_factory=list)
    superseded: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
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

    async def write(self, documents: dict[str, Document], exact: bool = False) -> WriteResult:
        """One unordered bulk write of every document that can be stored; raises PyMongoError when nothing
        could be decided."""
        too_large, unwritable = unstorable(documents, exact)
        storable = {symbol: document for symbol, document in documents.items()
                    if symbol not in too_large and symbol not in unwritable}
        try:
            result = await self._write(storable)
        except (InvalidDocument, OverflowError):
            if exact:
                raise
            # A value BSON cannot hold hid among levels the size bound let through: look at every byte.
            result = await self.write(storable, exact=True)
        result.too_large.update(too_large)
        result.unwritable.update(unwritable)
        return result

    async def _write(self, documents: dict[str, Document], takeover: bool = False) -> WriteResult:
        """The bulk write itself; `takeover` writes with `takeover_filter` (documents found foreign)."""
        result = WriteResult()
        if not documents:
            return result
        symbols = list(documents)
        make_filter = takeover_filter if takeover else version_filter
        operations = [ReplaceOne(make_filter(symbol, documents[symbol]["version"]),
                                 {"_id": symbol, **documents[symbol]}, upsert=True) for symbol in symbols]
        errors: list[dict[str, Any]] = []
        try:
            await self.collection.bulk_write(operations, ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if exc.details.get("writeConcernErrors"):
                raise
        rejected = {symbols[error["index"]]: error for error in errors}
        result.written = [symbol for symbol in symbols if symbol not in rejected]
        duplicates = [symbol for symbol, error in rejected.items() if error.get("code") == DUPLICATE_KEY]
        for symbol, error in rejected.items():
            if error.get("code") != DUPLICATE_KEY:
                result.failed[symbol] = str(error.get("errmsg", error))
        if not duplicates:
            return result
        stored = {doc["_id"]: doc async for doc in self.collection.find({"_id": {"$in": duplicates}}, {"version": 1})}
        foreign = {}
        for symbol in duplicates:
            version = stored.get(symbol, {}).get("version")
            if version == documents[symbol]["version"]:
                result.written.append(symbol)
            elif isinstance(version, str) and version > documents[symbol]["version"]:
                result.superseded[symbol] = version
            elif symbol in stored and not isinstance(version, str) and not takeover:
                foreign[symbol] = documents[symbol]
            else:
                result.failed[symbol] = f"duplicate key with stored version {version!r}"
        if foreign:
            taken = await self._write(foreign, takeover=True)
            result.written += taken.written
            result.superseded.update(taken.superseded)
            result.failed.update(taken.failed)
        return result
