"""The runtime the services share: settings, logging, health server, lifecycle and the Redis clients.

The Redis seam, one error contract for both clients: redis-py (`redis_client.connect`, for housekeeping)
and `RedisWire` (`redis_wire`, for hot loops). Connection trouble raises a redis-py `RedisError`
(`ConnectionError`, `TimeoutError`) from either, so a service catches `RedisError` and nothing else. The
errors of single commands in a pipeline (redis-py `execute(raise_on_error=False)`) or in a wire call come
back in place as `ResponseError`s (`NoScriptError` for NOSCRIPT), so the caller sees what the other
commands did; `scripts.raise_first_error` raises the first. Lua scripts go through `scripts.LuaScript`,
a dependency's up/down through `dependency.DependencyHealth`.
"""
