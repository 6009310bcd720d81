"""The Redis client of the consumers: no hidden retries, a read timeout above BLOCK, commands packed in C.

redis-py's asyncio connections pack every command in Python, argument by argument: an XACK of covered
entries carries up to a thousand ids, and an XREADGROUP of top10 names each stream twice (key and id).
The sync client of redis-py packs with hiredis (`HiredisRespSerializer`); the pool here uses that same
serializer on top of whichever connection class the URL calls for (TCP, TLS, unix socket). The hot loops
have since moved to `RedisWire`; `python -m bench.wire` sets this pool beside plain redis-py and `RedisWire`.

XREADGROUP and XRANGE replies come back as Redis sends them, without redis-py's conversion of every entry's
fields into a dict, a visible share of l2builder's CPU in `python -m bench.l2builder`: `decode_entry` and
`decode_next` read the flat `[name, value, ...]` list.
With RESP3, redis-py's default, XREADGROUP answers a map of stream -> entries; with RESP2, a list of pairs.

Retries are off because every loop of the services retries on its own terms (with backoff, re-reading
what a failed read may have delivered, knowing that a lease may have expired meanwhile); a command silently
retried for seconds would hide that.

A cluster URL (`redis+cluster://h1:7000,h2:7001/`, `rediss+cluster://` for TLS) gives redis-py's own
`RedisCluster`, seeded with every node the URL names. It follows MOVED, ASK and TRYAGAIN itself (those
commands did not run, so sending them on is safe), and with its retries off a connection error or
CLUSTERDOWN is raised to the caller's loop after marking the slot map for a refresh on the next command.
redis-py's cluster pipeline marks it only when it may retry, so with retries off a pipeline would send to a
failed primary for ever: `_Pipeline` marks it too (any of its commands' replies being such an error).
Its errors are `RedisError`s, as the one-server client's are: redis-py raises `RedisClusterException`,
which is none, when no node answers or some slot has no node, and `_Cluster` raises that as a
`ClusterError`. Commands keep bookstream's layout: every
multi-key command, script and transaction touches keys of one slot (README, "Redis keys").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, cast

import redis.asyncio as aioredis
from prometheus_client import Counter
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.connection import HiredisRespSerializer
from redis.exceptions import ClusterError, RedisClusterException, RedisError

from services.core.keys import Keys
from services.core.slots import cluster_node_urls, is_cluster_url, key_slot
from services.runtime.logs import EventLog

CONNECT_TIMEOUT = 2.0
RAW_REPLIES = ("XREADGROUP", "XRANGE")


class _HiredisPacking:
    _serializer = HiredisRespSerializer()

    def pack_command(self, *args: Any) -> list[bytes]:
        packed: list[bytes] = self._serializer.pack(*args)
        return packed


RedisClient = aioredis.Redis | RedisCluster
"""What `connect` gives: one server's client or a cluster's; both take the same command methods."""


def connect(url: str, socket_timeout: float, client_name: str | None = None) -> RedisClient:
    """A client for `url`; `socket_timeout` must be longer than any BLOCK the caller uses.

    For a cluster URL, a `RedisCluster`: its command methods are the same, but it is no `Redis`; callers
    take `RedisClient` and tell the two apart where they differ."""
    if is_cluster_url(url):
        return _connect_cluster(url, socket_timeout, client_name)
    pool = aioredis.ConnectionPool.from_url(url, socket_timeout=socket_timeout, socket_connect_timeout=CONNECT_TIMEOUT,
                                            retry=Retry(NoBackoff(), 0), client_name=client_name)
    base = pool.connection_class
    pool.connection_class = type(f"HiredisPacking{base.__name__}", (_HiredisPacking, base), {})
    client = aioredis.Redis.from_pool(pool)
    for command in RAW_REPLIES:
        client.response_callbacks.pop(command, None)
    return client


def slot_groups(client: RedisClient, keys: Sequence[str]) -> list[list[str]]:
    """`keys` in groups one multi-key command or script may take together: all of them on one server, those of
    each slot on a cluster; each group in the order of `keys`."""
    if not isinstance(client, RedisCluster):
        return [list(keys)] if keys else []
    groups: dict[int, list[str]] = {}
    for key in keys:
        groups.setdefault(key_slot(key), []).append(key)
    return list(groups.values())


class _Cluster(RedisCluster):
    """redis-py's cluster client, its topology errors raised as `ClusterError` (a `RedisError`): "no node
    reachable" is Redis unreachable to every caller, on a cluster as on one server."""

    async def initialize(self, *args: Any, **kwargs: Any) -> RedisCluster:
        try:
            return await super().initialize(*args, **kwargs)
        except RedisClusterException as exc:
            raise _as_redis_error(exc) from exc

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute_command(*args, **kwargs)
        except RedisClusterException as exc:
            raise _as_redis_error(exc) from exc

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> ClusterPipeline:
        if shard_hint:
            raise ClusterError("shard_hint is not supported on a cluster")
        return _Pipeline(self, transaction)  # type: ignore[abstract]  # redis-py types an attribute it sets in __init__ as abstract


class _Pipeline(ClusterPipeline):
    """redis-py's cluster pipeline, refreshing the slot map after a topology error as single commands do.

    Without retries redis-py raises (or, with `raise_on_error=False`, returns) a connection error, timeout
    or CLUSTERDOWN of a pipeline without marking the map stale: after a primary died and its replica took
    over, every pipeline touching its slots would go on failing against the dead node."""

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
        try:
            replies: list[Any] = await super().execute(raise_on_error, allow_redirections)
        except RedisCluster.ERRORS_ALLOW_RETRY:
            self._refresh_slot_map()
            raise
        if any(isinstance(reply, RedisCluster.ERRORS_ALLOW_RETRY) for reply in replies):
            self._refresh_slot_map()
        return replies

    def _refresh_slot_map(self) -> None:
        # What redis-py's own single-command path does on a connection error: the next command (of any
        # caller) reads CLUSTER SLOTS again before it is sent.
        self.cluster_client._initialize = True


def _as_redis_error(exc: RedisClusterException) -> RedisError:
    return exc if isinstance(exc, RedisError) else ClusterError(str(exc))


def _connect_cluster(url: str, socket_timeout: float, client_name: str | None) -> RedisCluster:
    nodes = [parse_url(node) for node in cluster_node_urls(url)]
    options = {name: value for name, value in nodes[0].items() if name not in ("host", "port", "db")}
    if options.pop("connection_class", None) is SSLConnection:
        options["ssl"] = True
    client = _Cluster(startup_nodes=[ClusterNode(node["host"], node["port"]) for node in nodes],
                          socket_timeout=socket_timeout, socket_connect_timeout=CONNECT_TIMEOUT,
                          retry=Retry(NoBackoff(), 0), client_name=client_name, **cast(dict[str, Any], options))
    # Every node's connections share this one callback table.
    callbacks: dict[Any, Any] = client.connection_kwargs["response_callbacks"]
    for command in RAW_REPLIES:
        callbacks.pop(command, None)
    return client


EVICTION_SAFE_POLICIES = frozenset({"noeviction"})


async def evicting_policy(client: RedisClient) -> str | None:
    """The server's `maxmemory-policy` when it may evict keys (bookstream requires `noeviction`), else None.

    An evicting server drops streams, leases and epochs under memory pressure: the services detect and
    recover from such loss, but a user should hear of the setting before it happens. A refused
    `CONFIG GET` (an ACL without it, a managed Redis) is not a finding: None.
    """
    try:
        reply = await client.config_get("maxmemory-policy")
    except aioredis.ResponseError:
        return None
    raw: dict[Any, Any] = dict(reply)
    policy = raw.get("maxmemory-policy") or raw.get(b"maxmemory-policy")
    if isinstance(policy, bytes):
        policy = policy.decode()
    if not policy or policy in EVICTION_SAFE_POLICIES:
        return None
    return str(policy)


EVICTION_CHECK_INTERVAL: Final = 30.0
"""How often every service asks for Redis's `maxmemory-policy`: a setting, not an event, so rarely."""


class EvictionWatch:
    """Every service's check of `evicting_policy`: each change logged once (`redis_evicting` when Redis may
    evict, `redis_eviction_safe` when it no longer may), the current one shown in /healthz (`describe`).
    It never makes /healthz fail: nothing is lost yet, and the services recover if something is."""

    def __init__(self, log: EventLog) -> None:
        self._log = log
        self.policy: str | None = None
        self._next_check = float("-inf")

    async def check(self, client: RedisClient, now: float) -> None:
        """Ask Redis when a check is due (monotonic `now`); a failed ask raises, and is retried next call."""
        if now < self._next_check:
            return
        policy = await evicting_policy(client)
        self._next_check = now + EVICTION_CHECK_INTERVAL
        if self.update(policy):
            if policy is None:
                self._log.info("redis_eviction_safe")
            else:
                self._log.warning("redis_evicting", policy=policy,
                                  hint="set maxmemory-policy noeviction: an evicting Redis drops streams and keys")

    def update(self, policy: str | None) -> bool:
        """Take in the policy found; whether it changed."""
        changed, self.policy = policy != self.policy, policy
        return changed

    def describe(self, detail: dict[str, Any]) -> None:
        """Add `redis_policy_warning` to a /healthz detail while Redis may evict."""
        if self.policy is not None:
            detail["redis_policy_warning"] = (f"maxmemory-policy {self.policy} may evict streams and keys; "
                                              "bookstream needs noeviction")


def redis_lost_counter(service: str, documentation: str) -> Counter:
    """`bookstream_<service>_redis_lost_total{what}`: Redis state the service relied on and found gone."""
    return Counter(f"bookstream_{service}_redis_lost_total", documentation, ["what"])


async def sessions_alive(redis: RedisClient, keys: Keys, sessions: Sequence[str]) -> dict[str, bool]:
    """Whether each session's liveness key exists, in one round trip (none for no sessions)."""
    if not sessions:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for session in sessions:
            pipe.exists(keys.ingest_alive(session))
        replies = await pipe.execute()
    return {session: bool(found) for session, found in zip(sessions, replies, strict=True)}
