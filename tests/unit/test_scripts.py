"""The Lua-script helper: named by SHA, commands for RedisWire, and runs through redis-py that survive a
Redis that forgot its scripts."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest
import redis
from redis.exceptions import NoScriptError, ResponseError

from services.runtime.redis_client import connect
from services.runtime.redis_wire import RedisWire
from services.runtime.scripts import LuaScript, raise_first_error

ECHO_KEY = LuaScript("return {KEYS[1], ARGV[1]}")
FAILS = LuaScript("return redis.error_reply('ERR refused by the script')")


def test_a_script_is_named_by_the_sha1_of_its_source() -> None:
    assert ECHO_KEY.sha == hashlib.sha1(b"return {KEYS[1], ARGV[1]}").hexdigest()
    assert ECHO_KEY.command(["k"], ["v", 2]) == ("EVALSHA", ECHO_KEY.sha, 1, "k", "v", 2)
    assert ECHO_KEY.command() == ("EVALSHA", ECHO_KEY.sha, 0)
    assert ECHO_KEY.load_command() == ("SCRIPT", "LOAD", ECHO_KEY.source)


def test_a_script_is_read_from_beside_its_user(tmp_path: Path) -> None:
    (tmp_path / "one.lua").write_text("return 1\n", encoding="utf-8")
    script = LuaScript.beside(str(tmp_path / "user.py"), "one.lua")
    assert script.source == "return 1\n"


def test_raise_first_error_raises_the_first_only() -> None:
    raise_first_error([1, b"OK", None])
    first, second = ResponseError("first"), ResponseError("second")
    with pytest.raises(ResponseError, match="first"):
        raise_first_error([1, first, second])


def test_runs_load_the_script_after_redis_forgot_it(redis_url: str, key_prefix: str) -> None:
    admin = redis.Redis.from_url(redis_url)

    async def scenario() -> tuple[object, list[object], list[object]]:
        client = connect(redis_url, 5.0, "scripts-test")
        try:
            admin.script_flush()
            single = await ECHO_KEY(client, [f"{key_prefix}:a"], ["one"])
            admin.script_flush()
            batch = await ECHO_KEY.run_each(client, [([f"{key_prefix}:b"], ["two"]), ([f"{key_prefix}:c"], [3])])
            mixed = await FAILS.run_each(client, [((), ()), ((), ())])
            return single, batch, mixed
        finally:
            await client.aclose()

    single, batch, mixed = asyncio.run(scenario())
    assert single == [f"{key_prefix}:a".encode(), b"one"]
    assert batch == [[f"{key_prefix}:b".encode(), b"two"], [f"{key_prefix}:c".encode(), b"3"]]
    # A script's own error reply comes back in place, not as a reason to reload.
    assert all(isinstance(reply, ResponseError) and "refused by the script" in str(reply) for reply in mixed)
    assert not any(isinstance(reply, NoScriptError) for reply in mixed)


def test_a_single_run_raises_the_scripts_error(redis_url: str) -> None:
    async def scenario() -> None:
        client = connect(redis_url, 5.0, "scripts-test")
        try:
            with pytest.raises(ResponseError, match="refused by the script"):
                await FAILS(client)
        finally:
            await client.aclose()

    asyncio.run(scenario())


def test_the_wire_commands_run_once_loaded(redis_url: str, key_prefix: str) -> None:
    admin = redis.Redis.from_url(redis_url)

    async def scenario() -> list[object]:
        wire = RedisWire(redis_url, 5.0, "scripts-test")
        try:
            admin.script_flush()
            [missing] = await wire.call([ECHO_KEY.command([key_prefix], ["x"])])
            assert isinstance(missing, NoScriptError)
            return await wire.call([ECHO_KEY.load_command(), ECHO_KEY.command([key_prefix], ["x"])])
        finally:
            wire.close()

    sha, reply = asyncio.run(scenario())
    assert sha == ECHO_KEY.sha.encode() and reply == [key_prefix.encode(), b"x"]
