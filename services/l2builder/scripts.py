"""The Lua scripts of l2builder, kept in `*.lua` files beside this module (installed as package data)."""

from __future__ import annotations

from importlib.resources import files

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript


def register(redis: aioredis.Redis, name: str) -> AsyncScript:
    """`name`.lua as a script object that runs with EVALSHA and loads itself after a Redis restart."""
    return redis.register_script(files(__package__).joinpath(f"{name}.lua").read_text())
