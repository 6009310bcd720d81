"""Writes confirmed by a replica: `WAIT 1 <ms>` after the writes that must survive a failover.

Redis replicates asynchronously, so a primary that fails right after a write may be replaced by a replica
that never saw it. For most of bookstream's keys that is a loss the services detect and repair; for
l2builder's fencing epochs it is not enough to detect it later: an epoch handed out, lost, and handed out
again would let two owners write under the same epoch. So those writes count only once `WAIT` says a
replica has them (docs/cluster.md, "Fencing epochs and failover").

WAIT counts the writes of its own connection, so it travels in the same pipeline as the writes, one per
primary the writes went to (redis-py sends a cluster pipeline's commands for one node on one connection).
A primary without replicas gets no WAIT: it would only block for the whole timeout and answer 0, and
there is no replica a failover could promote. Which primaries have replicas is known from the slot map on
a cluster (CLUSTER SLOTS lists each slot's replicas) and from `INFO replication` (`connected_slaves`) on
one server, each asked again every REPLICAS_CHECK_INTERVAL: one server without replicas pays one INFO per
interval (an INFO refused counts as no replica).
A write whose slot moved during the pipeline (redis-py followed a MOVED on another connection) is not
confirmed either.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Final

from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.exceptions import RedisError, ResponseError

from services.runtime.redis_client import RedisClient

REPLICAS_CHECK_INTERVAL: Final = 30.0
"""How often one server is asked whether it has replicas (a cluster's slot map says it for free)."""


class NotReplicated(RedisError):
    """A write that ran on the primary but that no replica confirmed in time: a failover may lose it.
    `reply` is what the primary answered."""

    def __init__(self, reply: Any) -> None:
        super().__init__("no replica confirmed the write in time")
        self.reply = reply


class ReplicaWait:
    """WAIT after writes, on the primaries that have replicas; time is `time.monotonic()` throughout."""

    def __init__(self, redis: RedisClient, timeout_ms: int) -> None:
        self.redis, self.timeout_ms = redis, timeout_ms
        self._single_replicas = 0
        self._checked_at = float("-inf")

    async def refresh(self) -> None:
        """Learn which primaries have replicas when a check is due; a failed ask raises, retried next call."""
        if time.monotonic() - self._checked_at < REPLICAS_CHECK_INTERVAL:
            return
        if isinstance(self.redis, RedisCluster):
            # redis-py reads the slot map again only after a redirect or an error: a replica added since
            # would go unseen.
            await self.redis.nodes_manager.initialize()
            self._checked_at = time.monotonic()
            return
        try:
            info = await self.redis.info("replication")
        except ResponseError:  # INFO refused (an ACL, a managed Redis): no replica known, as before this guard
            info = {}
        self._single_replicas = int(info.get("connected_slaves", 0))
        self._checked_at = time.monotonic()

    def _node(self, key: str) -> ClusterNode | None:
        """The primary serving `key` now, as the cluster client's slot map says."""
        assert isinstance(self.redis, RedisCluster)
        return self.redis.get_node_from_key(key)

    def _has_replicas(self, key: str) -> bool:
        if not isinstance(self.redis, RedisCluster):
            return self._single_replicas > 0
        slot = self.redis.keyslot(key)
        return len(self.redis.nodes_manager.slots_cache.get(slot, ())) > 1

    def append(self, pipe: Pipeline | ClusterPipeline, keys: Sequence[str]) -> list[tuple[str, list[int]]]:
        """Queue one WAIT per primary the writes keyed by `keys` (one key per write) go to, after them.

        Returns, per WAIT in queue order, the primary's name and the indices of its writes; writes to a
        primary without replicas are in no group (nothing to wait for)."""
        groups: dict[str, list[int]] = {}
        nodes: dict[str, ClusterNode | None] = {}
        for index, key in enumerate(keys):
            if not self._has_replicas(key):
                continue
            node = self._node(key) if isinstance(self.redis, RedisCluster) else None
            name = node.name if node is not None else ""
            if isinstance(self.redis, RedisCluster) and node is None:
                continue  # no primary known for the slot: the write fails, no WAIT could confirm it
            groups.setdefault(name, []).append(index)
            nodes[name] = node
        for name in groups:
            node = nodes[name]
            if node is None:
                pipe.execute_command("WAIT", 1, self.timeout_ms)
            else:
                pipe.execute_command("WAIT", 1, self.timeout_ms, target_nodes=node)
        return list(groups.items())

    def judge(self, replies: list[Any], keys: Sequence[str], groups: list[tuple[str, list[int]]],
              waits: Sequence[Any]) -> None:
        """Replace in `replies` (in place) each write's reply by `NotReplicated` unless its WAIT counted a
        replica and its key is still on the primary it was sent to; error replies stay as they are."""
        for (name, indices), acked in zip(groups, waits, strict=True):
            confirmed = isinstance(acked, int) and acked >= 1
            for index in indices:
                if isinstance(replies[index], Exception):
                    continue
                node = self._node(keys[index]) if isinstance(self.redis, RedisCluster) else None
                moved = isinstance(self.redis, RedisCluster) and (node is None or node.name != name)
                if not confirmed or moved:
                    replies[index] = NotReplicated(replies[index])
