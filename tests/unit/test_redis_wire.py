"""The lean connection of top10's hot loop, against a real Redis: replies in order, errors in place, the URL's
credentials and db, and a clean reconnect after any failure."""

from __future__ import annotations

import asyncio
import ssl
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from redis.asyncio.connection import parse_url
from redis.exceptions import NoScriptError, ResponseError

from services.runtime.redis_wire import RedisWire, tls_context


def with_path(url: str, path: str, netloc: str | None = None) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, netloc or parts.netloc, path, parts.query, parts.fragment))


def test_replies_come_back_in_order_with_errors_in_place(redis_url: str, key_prefix: str) -> None:
    key, big = f"{key_prefix}:wire", b"x" * 1_000_000

    async def scenario() -> list[object]:
        wire = RedisWire(redis_url, 5.0, "wire-test")
        assert not wire.connected and wire.client_id is None
        try:
            replies = await wire.call([("SET", key, big), ("INCR", key), ("EVALSHA", "0" * 40, 0), ("GET", key),
                                       ("CLIENT", "GETNAME"), ("RPUSH", f"{key}:list", 1, 2.5, b"\xff"),
                                       ("CLIENT", "ID")])
            assert wire.connected and wire.client_id == replies.pop()
            return replies
        finally:
            wire.close()
            assert not wire.connected and wire.client_id is None

    stored, incr, noscript, value, name, pushed = asyncio.run(scenario())
    assert stored == b"OK" and value == big and name == b"wire-test" and pushed == 3
    assert isinstance(incr, ResponseError) and "not an integer" in str(incr)
    assert isinstance(noscript, NoScriptError)


def test_the_url_chooses_the_database_and_the_user(redis_url: str, key_prefix: str) -> None:
    admin = redis.Redis.from_url(redis_url)
    user = f"{key_prefix}-user"
    admin.acl_setuser(user, enabled=True, passwords=["+secret"], keys=[f"{key_prefix}:*"], commands=["+@all"])
    netloc = urlsplit(redis_url).netloc.rpartition("@")[2]
    try:
        async def scenario(url: str) -> list[object]:
            wire = RedisWire(url, 5.0, "wire-test")
            try:
                return await wire.call([("SET", f"{key_prefix}:db", "five"), ("CLIENT", "INFO")])
            finally:
                wire.close()

        _, info = asyncio.run(scenario(with_path(redis_url, "/5", f"{user}:secret@{netloc}")))
        assert isinstance(info, bytes) and f"user={user}".encode() in info and b" db=5 " in info
        assert redis.Redis.from_url(with_path(redis_url, "/5")).get(f"{key_prefix}:db") == b"five"
        with pytest.raises(ResponseError, match="WRONGPASS"):
            asyncio.run(scenario(with_path(redis_url, "/5", f"{user}:wrong@{netloc}")))
    finally:
        admin.acl_deluser(user)


def test_a_failed_call_leaves_no_reply_behind(redis_url: str, key_prefix: str) -> None:
    admin = redis.Redis.from_url(redis_url)
    stream = f"{key_prefix}:wire:stream"
    admin.xgroup_create(stream, "g", id="$", mkstream=True)

    async def scenario() -> None:
        wire = RedisWire(redis_url, 0.3, "wire-victim")
        try:
            # A read that outlasts the timeout: the connection is dropped with its reply still owed.
            with pytest.raises(redis.TimeoutError):
                await wire.call([("XREADGROUP", "GROUP", "g", "c", "BLOCK", 2000, "STREAMS", stream, ">")])
            admin.xadd(stream, {"n": "1"})
            assert await wire.call([("PING",)]) == [b"PONG"]
            # The server drops the connection: that call fails, the next one connects again.
            for client in admin.client_list():
                if client["name"] == "wire-victim":
                    admin.client_kill_filter(_id=client["id"])
            killed = wire.client_ids
            with pytest.raises(redis.ConnectionError):
                await wire.call([("PING",)])
            # The dropped connection is still named for a fence, though the wire no longer holds it.
            assert wire.client_ids == {} and wire.call_client_ids == killed != {}
            assert await wire.call([("ECHO", "again")]) == [b"again"]
            assert wire.call_client_ids == wire.client_ids != killed
        finally:
            wire.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(("query", "check_hostname", "verify_mode"), [
    ("", True, ssl.CERT_REQUIRED), ("?ssl_cert_reqs=none", False, ssl.CERT_NONE),
    ("?ssl_check_hostname=false", False, ssl.CERT_REQUIRED), ("?ssl_cert_reqs=optional", True, ssl.CERT_OPTIONAL)])
def test_tls_settings_of_the_url_are_honoured(query: str, check_hostname: bool, verify_mode: ssl.VerifyMode) -> None:
    context = tls_context(dict(parse_url(f"rediss://user:pw@redis.example:6380/0{query}")))
    assert (context.check_hostname, context.verify_mode) == (check_hostname, verify_mode)
