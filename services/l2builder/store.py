"""MongoDB book documents: how a state is written and read back, and the monotonic filtered upsert.

One document per symbol (DESIGN.md, MongoDB contract). Every write is
`UpdateOne({"_id": sym, "version": {"$lt": v}}, {"$set": doc}, upsert=True)` where `v` encodes
(epoch, stream id) as one string that sorts like the tuple. If the stored version is lower the filter
matches and the document is replaced field by field; if it is equal or higher the filter matches nothing,
the upsert tries to insert a second `_id` and fails with 11000. So a retry, a replay or a zombie owner with
an older epoch can never move a book backwards, on any MongoDB (and on nx-27017, whose ReplaceOne upsert
loses `_id`).

An 11000 is ambiguous on its own: it is also what a retried write gets when its first attempt did land.
`write` reads the stored versions back to tell "already written" from "a newer owner wrote".

pymongo encodes a whole batch before sending it, so one book that BSON cannot hold (over the 16 MiB limit,
or an integer beyond 64 bits) would fail every write for ever; `write` sets such books aside as
`unwritable` and writes the others.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import bson
from bson.errors import InvalidDocument
from bson.int64 import Int64
from pymongo import AsyncMongoClient, UpdateOne
from pymongo.errors import BulkWriteError

from services.common.book import L2Book
from services.common.entries import EntryError, parse_stream_id
from services.l2builder.symbol_state import StaleKind, SymbolState

COLLECTION = "orderbooks"
DUPLICATE_KEY = 11000
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
"""MongoDB's BSON document size limit (maxBsonObjectSize)."""
UTC = dt.UTC
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)

Document = dict[str, Any]


def version_key(epoch: int, stream_id: str | None) -> str:
    """(epoch, stream id) as fixed-width digits, so string order is tuple order (both parts are 64-bit)."""
    ms, seq = parse_stream_id(stream_id) if stream_id else (0, 0)
    return f"{epoch:020d}-{ms:020d}-{seq:020d}"


def book_document(state: SymbolState, epoch: int, now: dt.datetime) -> Document:
    """The `$set` part of the document for `state` as written by the owner of `epoch`."""
    levels = state.book.to_document()
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
    if not _valid_position(position):
        # Without a trustworthy position the stream is read from its start; the book waits for a partial,
        # so nothing read before it is applied, let alone twice.
        kind, reason = StaleKind.INVALID_DOCUMENT, f"stored position is invalid: {position['stream_id']!r}"
        position.update(stream_id=None, session=None, seq=0)
    elif document.get("status") == "live":
        try:
            book = L2Book.from_document(symbol, {**document, "bids": _plain_levels(document.get("bids")),
                                                 "asks": _plain_levels(document.get("asks"))})
        except ValueError as exc:
            kind, reason = StaleKind.INVALID_DOCUMENT, f"stored book is invalid: {exc}"
    else:
        kind = StaleKind.RESTORED
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


def unwritable_documents(documents: dict[str, Document]) -> dict[str, str]:
    """The documents BSON cannot store, by symbol, with the reason; encoding them all is the only way to
    find out which one failed a batch."""
    problems: dict[str, str] = {}
    for symbol, document in documents.items():
        try:
            size = len(bson.encode({"$set": document}))
        except (InvalidDocument, OverflowError) as exc:
            problems[symbol] = f"not encodable as BSON: {exc}"
            continue
        if size > MAX_DOCUMENT_BYTES:
            problems[symbol] = f"{size} bytes, over the {MAX_DOCUMENT_BYTES}-byte BSON limit"
    return problems


def _plain_levels(levels: Any) -> Any:
    """Levels with BSON `Int64` (what pymongo returns for ids beyond 32 bits) turned into plain `int`."""
    if not isinstance(levels, list):
        return levels
    return [[int(value) if isinstance(value, Int64) else value for value in level] if isinstance(level, list)
            else level for level in levels]


@dataclass(slots=True)
class WriteResult:
    """Per symbol: written (now durable), superseded (a newer version is stored), failed (retry later) or
    unwritable (BSON cannot hold it: retrying is pointless)."""

    written: list[str] = field(default_factory=list)
    superseded: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    unwritable: dict[str, str] = field(default_factory=dict)


class BookStore:
    """The `orderbooks` collection through pymongo's async client."""

    def __init__(self, url: str, database: str, timeout: float = 5.0) -> None:
        millis = int(timeout * 1000)
        self.client: AsyncMongoClient[Document] = AsyncMongoClient(
            url, appname="bookstream-l2builder", serverSelectionTimeoutMS=millis, connectTimeoutMS=millis,
            socketTimeoutMS=millis * 4, tz_aware=True)
        self.collection = self.client[database][COLLECTION]

    async def close(self) -> None:
        await self.client.close()

    async def ping(self) -> None:
        await self.client.admin.command("ping")

    async def load(self, symbol: str) -> Document | None:
        return await self.collection.find_one({"_id": symbol})

    async def load_many(self, symbols: list[str]) -> dict[str, Document]:
        """The stored documents of `symbols` by symbol (absent when there is none), in one query."""
        return {document["_id"]: document async for document in self.collection.find({"_id": {"$in": symbols}})}

    async def write(self, documents: dict[str, Document]) -> WriteResult:
        """One unordered bulk write of every document; raises PyMongoError when nothing could be decided."""
        result = WriteResult()
        if not documents:
            return result
        symbols = list(documents)
        operations = [UpdateOne({"_id": symbol, "version": {"$lt": documents[symbol]["version"]}},
                                {"$set": documents[symbol]}, upsert=True) for symbol in symbols]
        errors: list[dict[str, Any]] = []
        try:
            await self.collection.bulk_write(operations, ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if exc.details.get("writeConcernErrors"):
                raise
        except (InvalidDocument, OverflowError):
            unwritable = unwritable_documents(documents)
            if not unwritable:
                raise
            result = await self.write({symbol: document for symbol, document in documents.items()
                                       if symbol not in unwritable})
            result.unwritable.update(unwritable)
            return result
        rejected = {symbols[error["index"]]: error for error in errors}
        result.written = [symbol for symbol in symbols if symbol not in rejected]
        duplicates = [symbol for symbol, error in rejected.items() if error.get("code") == DUPLICATE_KEY]
        for symbol, error in rejected.items():
            if error.get("code") != DUPLICATE_KEY:
                result.failed[symbol] = str(error.get("errmsg", error))
        if duplicates:
            stored = {doc["_id"]: doc.get("version") async for doc in
                      self.collection.find({"_id": {"$in": duplicates}}, {"version": 1})}
            for symbol in duplicates:
                version = stored.get(symbol)
                if version == documents[symbol]["version"]:
                    result.written.append(symbol)
                elif isinstance(version, str) and version > documents[symbol]["version"]:
                    result.superseded[symbol] = version
                else:
                    result.failed[symbol] = f"duplicate key with stored version {version!r}"
        return result

