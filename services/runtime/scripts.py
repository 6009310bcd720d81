"""Lua scripts run by SHA: one helper for both Redis clients, so every service loads and recovers alike.

redis-py's `register_script` objects send SCRIPT EXISTS before every pipeline that uses them: one more
round trip per batch on paths whose latency is measured. Redis forgets scripts only when it restarts or is
told to (SCRIPT FLUSH), so a `LuaScript` sends bare EVALSHAs and loads itself only after a NOSCRIPT reply.
A command that got NOSCRIPT did not run, so sending exactly those again once the script is loaded is safe
whatever the script does. `RedisWire` users take `command` and `load_command`, and resend on NOSCRIPT
themselves (their replies come back in place, see services.runtime).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from redis.exceptions import NoScriptError

from services.core.text import as_text
from services.runtime.redis_client import RedisClient
from services.runtime.redis_wire import Command
from services.runtime.replicas import ReplicaWait

Keys = Sequence[str | bytes]
Args = Sequence[bytes | str | int | float]
ScriptCall = tuple[Keys, Args]
"""The keys and arguments of one run of a script."""


class LuaScript:
    """A script's source and the SHA1 that EVALSHA names it by."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    @classmethod
    def beside(cls, module_file: str, filename: str) -> LuaScript:
        """The script `filename` in the directory of the module `module_file` (pass `__file__`): scripts live
        next to their user and are installed with it as package data."""
        return cls((Path(module_file).parent / filename).read_text(encoding="utf-8"))

    def command(self, keys: Keys = (), args: Args = ()) -> Command:
        """The EVALSHA of one run, as a `RedisWire` command."""
        return ("EVALSHA", self.sha, len(keys), *keys, *args)

    def load_command(self) -> Command:
        """The SCRIPT LOAD that makes `command` runnable, as a `RedisWire` command."""
        return ("SCRIPT", "LOAD", self.source)

    async def __call__(self, redis: RedisClient, keys: Keys = (), args: Args = ()) -> Any:
        """Run once through redis-py; an error reply raises, as redis-py raises it."""
        [reply] = await self.run_each(redis, [(keys, args)])
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def run_each(self, redis: RedisClient, calls: Sequence[ScriptCall],
                       replicated: ReplicaWait | None = None) -> list[Any]:
        """Run once per call in one pipeline; the replies in order, an error reply in its place (not raised).

        The calls that got NOSCRIPT are sent again, in order, after loading the script. With `replicated`,
        a WAIT follows the calls on each primary with replicas, and a call no replica confirmed has a
        `NotReplicated` in place of its reply (services.runtime.replicas)."""
        replies = await self._pipelined(redis, calls, replicated)
        missing = [index for index, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            await redis.script_load(self.source)
            for index, reply in zip(missing, await self._pipelined(redis, [calls[index] for index in missing],
                                                                   replicated), strict=True):
                replies[index] = reply
        return replies

    async def _pipelined(self, redis: RedisClient, calls: Sequence[ScriptCall],
                         replicated: ReplicaWait | None) -> list[Any]:
        first_keys = [as_text(keys[0]) for keys, _ in calls] if replicated is not None else []
        async with redis.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                # Not `pipe.evalsha`: a cluster pipeline refuses that method, though it routes the command
                # itself by its first key (one node's calls travel together).
                pipe.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)
            waits = replicated.append(pipe, first_keys) if replicated is not None else []
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        if replicated is not None:
            replies, acked = replies[:len(calls)], replies[len(calls):]
            replicated.judge(replies, first_keys, waits, acked)
        return replies


def raise_first_error(replies: Sequence[Any]) -> None:
    """Raise the first error among a pipeline's or a wire call's replies, if any."""
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
