"""Read full L2 books from MongoDB (what l2builder writes) and check whether they can be trusted.

    python examples/book.py XBTUSD [--mongo-url URL] [--database bitmex] [--depth N]
    python examples/book.py --all [--mongo-url URL] [--database bitmex]

One document per symbol in `<database>.orderbooks`, `_id` = symbol (docs/books.md): `levels` maps each
level id to `[side, price, size]` (null: removed), the whole book, read here into `[price, size, id]` lists best first
(bids by price descending, asks ascending); `bids`/`asks` hold only the best levels; `status` ("live" or
"stale") and `reason` say whether to trust it. A stale book may keep its last levels or have none;
either way it is not the market now, so check `status` before using the levels. Exit status: 0 live, 2
not live, 1 no book.
Settings come from the flags, else from MONGO_CONNECTION_STRING and MONGO_DATABASE, else the defaults
of `docker compose`.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from typing import Any

from pymongo import MongoClient


def age(document: dict[str, Any]) -> str:
    updated = document.get("updated_at")
    if isinstance(updated, datetime):
        return f"{(datetime.now(UTC) - updated).total_seconds():.1f}s ago"
    return f"at {updated}" if updated is not None else "never"


def full_book(document: dict[str, Any]) -> tuple[list[list[Any]], list[list[Any]]]:
    """The whole book, best first; a document without `layout` (the previous shape) holds it in bids/asks."""
    if "layout" not in document:
        return document.get("bids") or [], document.get("asks") or []
    if document["layout"] != 2:
        raise SystemExit(f"{document['_id']}: document layout {document['layout']!r} is unknown to this script")
    bids: list[list[Any]] = []
    asks: list[list[Any]] = []
    for ident, level in document["levels"].items():
        if level is None:  # a level removed since the document was last written whole
            continue
        side, price, size = level
        (bids if side == "Buy" else asks).append([price, size, int(ident)])
    bids.sort(key=lambda level: -level[0])
    asks.sort(key=lambda level: level[0])
    return bids, asks


def show_book(document: dict[str, Any], depth: int) -> None:
    bids, asks = full_book(document)
    if document.get("status") == "live":
        print(f"{document['_id']}: live, written {age(document)}, {len(bids)} bids, {len(asks)} asks")
    else:
        kept = (f"the {len(bids)} bids and {len(asks)} asks below are the last known, not the market now"
                if bids or asks else "no levels kept")
        print(f"{document['_id']}: NOT LIVE ({document.get('status')}: {document.get('reason')}), written "
              f"{age(document)}; {kept}")
    if bids and asks:
        spread = asks[0][0] - bids[0][0]
        print(f"  best bid {bids[0][0]}  best ask {asks[0][0]}  spread {spread:g}  "
              f"size within {depth} levels: bids {sum(level[1] for level in bids[:depth])}, "
              f"asks {sum(level[1] for level in asks[:depth])}")
    if not bids and not asks:
        return
    print(f"  {'bid size':>12} {'bid':>12} | {'ask':<12} {'ask size':<12}")
    for index in range(min(depth, max(len(bids), len(asks)))):
        bid = f"{bids[index][1]:>12} {bids[index][0]:>12}" if index < len(bids) else " " * 25
        ask = f"{asks[index][0]:<12} {asks[index][1]:<12}" if index < len(asks) else ""
        print(f"  {bid} | {ask}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("symbol", nargs="?")
    parser.add_argument("--all", action="store_true", help="one line per book: status and age, no levels")
    parser.add_argument("--mongo-url", default=os.environ.get("MONGO_CONNECTION_STRING", "mongodb://localhost:27017"))
    parser.add_argument("--database", default=os.environ.get("MONGO_DATABASE", "bitmex"))
    parser.add_argument("--depth", type=int, default=10)
    args = parser.parse_args()
    if not args.all and not args.symbol:
        parser.error("give a SYMBOL or --all")
    client: MongoClient[dict[str, Any]] = MongoClient(args.mongo_url, tz_aware=True, serverSelectionTimeoutMS=5000)
    books = client[args.database]["orderbooks"]
    try:
        if args.all:
            # Only the small fields: a book's levels can be thousands of rows.
            for document in books.find({}, {"status": 1, "reason": 1, "updated_at": 1}).sort("_id"):
                reason = f" ({document.get('reason')})" if document.get("status") != "live" else ""
                print(f"{document['_id']}: {document.get('status')}{reason}, written {age(document)}")
            return 0
        book = books.find_one({"_id": args.symbol})
        if book is None:
            print(f"{args.symbol}: no book (not followed, or l2builder has not written it yet)")
            return 1
        show_book(book, args.depth)
        return 0 if book.get("status") == "live" else 2
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
