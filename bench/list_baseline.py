"""The list-based book of BitMEX's official Python connector, the baseline of `bench.book`.

A faithful re-implementation of the table handling in BitMEX/api-connectors,
`official-ws/python/bitmex_websocket.py` (`BitMEXWebsocket.__on_message` and `find_by_keys`): stdlib
`json.loads`, rows kept in one list per table, a partial replaces the list, an insert appends, an update
finds the row by a linear search over the partial's `keys` and calls `dict.update`, a delete finds it the
same way and calls `list.remove` (a second linear scan). Like the connector, one instance follows one
symbol. Two things are left out because they only add cost: the connector's eager `json.dumps` and
string formatting of every message for debug logging, and its 200-row trimming of non-book tables.
"""

from __future__ import annotations

import json
from typing import Any


def find_by_keys(keys: list[str], table: list[dict[str, Any]], match: dict[str, Any]) -> dict[str, Any] | None:
    for item in table:
        if all(item[key] == match[key] for key in keys):
            return item
    return None


class ListBook:
    """Tables as lists of rows, updated the way the official connector does it."""

    def __init__(self) -> None:
        self.data: dict[str, list[dict[str, Any]]] = {}
        self.keys: dict[str, list[str]] = {}

    def on_message(self, text: str) -> None:
        message = json.loads(text)
        table = message.get("table")
        action = message.get("action")
        if "subscribe" in message or not action:
            return
        if action != "partial" and table not in self.keys:
            return  # the connector's bare `except` swallows the KeyError a delta before the partial raises
        rows = self.data.setdefault(table, [])
        if action == "partial":
            self.data[table] = message["data"]
            self.keys[table] = message["keys"]
        elif action == "insert":
            rows += message["data"]
        elif action == "update":
            for update in message["data"]:
                item = find_by_keys(self.keys[table], rows, update)
                if not item:
                    return  # the connector gives up on the rest of the frame, as here
                item.update(update)
        elif action == "delete":
            for delete in message["data"]:
                rows.remove(find_by_keys(self.keys[table], rows, delete))  # type: ignore[arg-type]
        else:
            raise ValueError(f"unknown action: {action}")

    def levels(self, table: str = "orderBookL2") -> set[tuple[int, str, int, float]]:
        """The book as a set of (id, side, size, price), to check the baseline against the engine."""
        return {(row["id"], row["side"], row["size"], row["price"]) for row in self.data.get(table, [])}
