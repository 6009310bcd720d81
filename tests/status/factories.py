"""Hand-built snapshots of a healthy system, for tests to break one field at a time."""

from __future__ import annotations

from dataclasses import replace

from services.core.keys import L2BUILDER_GROUP, TOP10_GROUP
from services.status.snapshot import (
    SCHEMA,
    Book,
    Consumer,
    Group,
    Instances,
    MongoEndpoint,
    Owner,
    RedisEndpoint,
    Snapshot,
    Stream,
    SymbolStatus,
    Top10,
)

NOW_MS = 1_800_000_000_000


def group(name: str, lag: int | None = 0, pending: int = 0, consumers: tuple[Consumer, ...] = (),
          entries_read: int | None = 500, last_delivered_id: str = f"{NOW_MS}-0") -> Group:
    return Group(name, pending, lag, entries_read, last_delivered_id,
                 consumers or (Consumer(f"{name}-1", pending, 0.1),))


def stream(key: str, group_name: str, **changes: object) -> Stream:
    healthy = Stream(key=key, length=500, entries_added=500, first_id=f"{NOW_MS - 60_000}-0",
                     last_id=f"{NOW_MS}-0", last_age_s=0.2, last_session="s1", rate_per_s=None,
                     groups=(group(group_name),), last_session_alive=True)
    return replace(healthy, **changes)  # type: ignore[arg-type]


def book(**changes: object) -> Book:
    healthy = Book(status="live", reason=None, age_s=0.3, timestamp="2026-01-01T00:00:00.000Z", bid_depth=25,
                   ask_depth=25, best_bid=(100.0, 5.0), best_ask=(100.5, 3.0), stream_id=f"{NOW_MS}-0",
                   session="s1", seq=500, epoch=1, version="v")
    return replace(healthy, **changes)  # type: ignore[arg-type]


def top10(**changes: object) -> Top10:
    healthy = Top10(age_s=0.1, stream_id=f"{NOW_MS}-0", timestamp="2026-01-01T00:00:00.000Z",
                    best_bid=(100.0, 5.0), best_ask=(100.5, 3.0), status="live")
    return replace(healthy, **changes)  # type: ignore[arg-type]


def symbol(name: str = "XBTUSD", **changes: object) -> SymbolStatus:
    healthy = SymbolStatus(
        symbol=name, l2=stream(f"p:l2:{{{name}}}", L2BUILDER_GROUP), ob10=stream(f"p:ob10:{{{name}}}", TOP10_GROUP),
        owner=Owner("builder-1", 1, 5.0), top10=top10(), book=book())
    return replace(healthy, **changes)  # type: ignore[arg-type]


def snapshot(*symbols: SymbolStatus, taken_at_us: int = NOW_MS * 1000, mongo_ok: bool = True,
             redis_ok: bool = True) -> Snapshot:
    return Snapshot(
        schema=SCHEMA, taken_at_us=taken_at_us, source="settings", key_prefix="p",
        redis=RedisEndpoint("redis://:***@h/0", redis_ok, None if redis_ok else "ConnectionError: refused"),
        mongo=MongoEndpoint("mongodb://h", "bitmex", mongo_ok, None if mongo_ok else "ServerSelectionTimeoutError"),
        symbols=symbols or (symbol(),), instances=Instances(("s1",), ("top10-1",), ("builder-1",)), problems=())
