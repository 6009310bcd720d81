"""Publishing stream entries to Redis: batched, in order, bounded, and never silently lossy.

Entries wait in one FIFO buffer. The publisher takes everything buffered (up to a batch limit) and appends
it with a single `EVALSHA` of `xadd_batch.lua`, one round trip for the whole batch, while the connection
loop keeps receiving. On a Redis Cluster a script may only touch keys of one slot, so a batch is one
`EVALSHA` per slot (per symbol: its streams share its hash tag), all sent in one call of the `ClusterWire`,
which writes them to their primaries at once. A frame arriving alone is sent alone at once (low latency at
a low rate); frames arriving during a round trip go together in the next one (high throughput at a high rate).
After its entries, a batch appends one signal per activity stream naming the symbols it appended to, so
that readers read only those streams (services.core.activity): in the same script on one server, in the
next call on a cluster, whose nodes run a call's commands side by side.

Why a script rather than a pipeline of XADDs: this process has one reply to read per batch instead of
one per XADD, at the price of more work in Redis, and this process is the one that runs out of CPU first
(`python -m bench.wire` measures both, per entry, through each client). The script also stops a failing
stream at its first error, so what is retried can never land out of order.

Nothing is dropped when Redis is slow or down: the batch stays at the head of the buffer and is retried
with a short capped backoff, and the connection loop stops reading the websocket once the buffer holds
`capacity` entries, pushing back on the venue through TCP. The connection (a `RedisWire`, the lean client of
the hot loops: see `python -m bench.wire`; a `ClusterWire` on a cluster) never retries on its own, because
replaying a batch that Redis may already have applied would duplicate entries. After a failure whose
outcome is unknown (a timeout, or the connection died mid-call) the old connection is killed, so that a
batch still sitting in it cannot land later, then each stream's last entry is read back and the entries
it proves were appended are removed first: every entry lands exactly once. That kill is the fence (on a
cluster, one per primary the batch went to: a node no longer serving slots can append nothing); where an
ACL refuses CLIENT KILL, the first connection finds out and says so (log and /healthz), because the check
is then only as good as the old connection's death by timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterable
from itertools import islice
from typing import Any, Final

from redis.exceptions import NoScriptError, RedisError, ResponseError

from services.core.activity import ACTIVITY_MAXLEN, signal_command
from services.core.entries import GAP_ACTION
from services.core.keys import Keys
from services.ingest import metrics
from services.ingest.session import Entry
from services.runtime.dependency import DependencyHealth
from services.runtime.logs import EventLog
from services.runtime.redis_wire import Command, Wire
from services.runtime.scripts import LuaScript

XADD_BATCH: Final = LuaScript.beside(__file__, "xadd_batch.lua")
OPERATION: Final = "publish"
"""The publisher's operation in the Redis health (log lines, metrics, /healthz)."""
MAX_BATCH_ENTRIES: Final = 500
"""Also bounds how long one batch holds Redis, during which its other clients wait."""
MAX_BATCH_CHARS: Final = 8 << 20
CALL_TIMEOUT: Final = 5.0
RETRY_MIN_DELAY: Final = 0.05
RETRY_MAX_DELAY: Final = 1.0
PERMANENT_ERRORS: Final = ("WRONGTYPE",)
"""Errors no retry can cure: that stream's entries are dropped (logged and counted) rather than blocking
every other symbol behind them forever."""


class RedisRefused(RedisError):
    """Redis answered but refused to append some entries (e.g. OOM, READONLY); they are retried."""


class Publisher:
    """The bounded buffer of entries and the task that appends them to their streams."""

    def __init__(self, wire: Wire, keys: Keys, capacity: int, maxlen: int,
                 redis_health: DependencyHealth, log: EventLog) -> None:
        """`wire` is the publisher's own connection: batches must not queue behind other commands."""
        self.capacity = capacity
        # Reading resumes only once a tenth of the buffer is free again, not at the first free slot, so a
        # long catch-up after an outage is not a pause/resume cycle per batch.
        self._resume_at = capacity - max(1, capacity // 10)
        self._wire, self._keys, self._symbols_key, self._maxlen = wire, keys, keys.symbols, maxlen
        self._health, self._log = redis_health, log
        self._buffer: deque[Entry] = deque()
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._closing = False
        self._idle = False
        self._unconfirmed = 0
        self._announced: set[str] = set()
        self._unconfirmed_on: dict[str, int] = {}
        self._progress_at = time.monotonic()
        """When Redis last acknowledged entries, or the buffer last went from empty to holding some."""
        self._activity_of: dict[str, str | None] = {}
        """Stream -> the activity stream announcing its entries (None: none), as computed once."""
        self.appended: dict[str, int] = {}
        """Entries Redis acknowledged per stream since start: what the heartbeat holds Redis to."""
        self.fence = "unknown"
        """Whether Redis lets this connection run the exactly-once fence: unknown, available or refused."""
        metrics.BUFFER.set_function(lambda: len(self._buffer))
        metrics.BUFFER_CAPACITY.set(capacity)

    def __len__(self) -> int:
        return len(self._buffer)

    @property
    def full(self) -> bool:
        return len(self._buffer) >= self.capacity

    @property
    def idle(self) -> bool:
        """True while the publisher waits for entries: one appended now can be sent at once."""
        return self._idle

    def append(self, entries: Iterable[Entry]) -> None:
        """Queue entries for publishing. Never refuses: callers check `full` before reading more frames,
        so the bound is overshot only by one frame's entries or a disconnect's gap markers."""
        if not self._buffer:
            self._progress_at = time.monotonic()
        self._buffer.extend(entries)
        self._wake.set()
        if len(self._buffer) >= self.capacity:
            self._room.clear()

    async def wait_for_room(self) -> None:
        await self._room.wait()

    def close(self) -> None:
        """Finish once everything buffered is published (`run` then returns)."""
        self._closing = True
        self._wake.set()

    def drop_all(self, reason: str) -> int:
        """Give up the buffered entries (at stop, with Redis unreachable): counted and logged, never silent."""
        count = len(self._buffer)
        if count:
            streams = sorted({entry.stream for entry in self._buffer})
            self._log.error("entries_dropped", reason=reason, entries=count, streams=len(streams),
                            first_stream=streams[0], redis_error=self._health.operation(OPERATION).error)
            metrics.DROPPED.labels(reason).inc(count)
            self._buffer.clear()
        return count

    async def run(self) -> None:
        """Publish batches until closed and empty; Redis failures are retried, never raised."""
        delay = RETRY_MIN_DELAY
        while True:
            if not self._buffer:
                if self._closing:
                    return
                self._wake.clear()
                self._idle = True
                await self._wake.wait()
                self._idle = False
                continue
            try:
                if self._unconfirmed:
                    await self._reconcile()
                await self._publish_batch()
            except RedisError as exc:
                self._health.failed(OPERATION, exc)
                self._announced.clear()  # a Redis that restarted empty must learn the symbols again
                self._wire.close()
                await asyncio.sleep(delay)
                delay = min(RETRY_MAX_DELAY, delay * 2)
            else:
                self._health.succeeded(OPERATION)
                delay = RETRY_MIN_DELAY

    def stalled_for(self, now: float) -> float:
        """Seconds (monotonic) the publisher has held entries without Redis acknowledging any; 0 when it
        holds none. Entries that keep landing keep this near one round trip, however long the backlog."""
        return max(0.0, now - self._progress_at) if self._buffer else 0.0

    def close_connection(self) -> None:
        self._wire.close()

    def unconfirmed_by_stream(self) -> dict[str, int]:
        """Entries sent to Redis and not yet acknowledged (at most one batch), per stream."""
        counts: dict[str, int] = {}
        for entry in islice(self._buffer, self._unconfirmed):
            counts[entry.stream] = counts.get(entry.stream, 0) + 1
        return counts

    @property
    def announced(self) -> frozenset[str]:
        """The symbols added to the symbol set by this publisher (forgotten after a Redis error)."""
        return frozenset(self._announced)

    async def _publish_batch(self) -> None:
        batch = self._take_batch()
        await self._connect()
        new_symbols = {entry.symbol for entry in batch} - self._announced
        groups = self._wire.slot_groups([entry.stream for entry in batch])
        signals = self._signals(batch)
        # One server runs a call's commands in order: its one script appends the entries, then the signals.
        # A cluster's scripts each hold one slot's keys, so there the signals go in the next call, once the
        # entries are in (its nodes run a call's commands side by side).
        ordered = self._wire.ordered
        scripts = [self._batch_command(batch, group, signals if ordered else {}) for group in groups]
        commands = [self._sadd_command(new_symbols)] if new_symbols else []
        started = time.perf_counter_ns()
        self._unconfirmed, self._unconfirmed_on = len(batch), self._wire.client_ids
        replies = await self._call_fenced(commands + scripts)
        outcomes = replies[len(commands):]
        missing = [index for index, outcome in enumerate(outcomes) if isinstance(outcome, NoScriptError)]
        if missing:
            # Redis restarted, flushed its script cache, or (a cluster) a replica took over: those scripts did
            # not run, so loading and sending them again is safe.
            await self._load_script()
            for index, outcome in zip(missing, await self._call_fenced([scripts[index] for index in missing]),
                                      strict=True):
                outcomes[index] = outcome
        done = time.perf_counter_ns()
        for outcome in outcomes:
            if isinstance(outcome, ResponseError):
                raise outcome
        self._unconfirmed = 0
        metrics.BATCH_SECONDS.observe((done - started) / 1e9)
        metrics.BATCH_ENTRIES.observe(len(batch))
        failures: dict[str, tuple[int, str]] = {}
        refused: list[Any] = []
        for group, outcome in zip(groups, outcomes, strict=True):
            failures |= _first_failures(batch, group, outcome)
            refused += _signal_errors(outcome)
        try:
            # Before anything awaits: the heartbeat's count of what landed must never lag what Redis holds.
            self._settle(batch, failures, done)
        finally:
            if signals and not ordered:
                # Even when settling raised (a stream refused): the other streams' entries are in.
                refused += [reply for reply in await self._wire.call(
                    [signal_command(key, symbols) for key, symbols in signals.items()])
                    if isinstance(reply, ResponseError)]
        if refused:
            # The entries are in: a lost signal only delays their readers (services.core.activity).
            raise RedisRefused(f"the activity signal was refused: {refused[0]}")
        if new_symbols:
            if isinstance(replies[0], ResponseError):
                # The entries landed, but consumers find symbols by the set: retried with the next batch.
                raise RedisRefused(f"the symbol set refused {len(new_symbols)} symbols: {replies[0]}")
            self._announced |= new_symbols

    async def _call_fenced(self, commands: list[Command]) -> list[Any]:
        """A call of the unconfirmed batch, the connections it wrote on noted for the fence: also those it
        opened (a cluster node met through a redirect), in which the batch may still sit after a failure."""
        try:
            return await self._wire.call(commands)
        finally:
            self._unconfirmed_on = {**self._unconfirmed_on, **self._wire.call_client_ids}

    def _take_batch(self) -> list[Entry]:
        batch: list[Entry] = []
        chars = 0
        for entry in islice(self._buffer, MAX_BATCH_ENTRIES):
            chars += len(entry.fields.get("frame", ""))
            if batch and chars > MAX_BATCH_CHARS:
                break
            batch.append(entry)
        return batch

    def _batch_command(self, batch: list[Entry], group: list[int], signals: dict[str, list[str]]) -> Command:
        """The script call appending the entries of `batch` at the indices `group`, in order, then `signals`
        (activity stream -> the symbols it names)."""
        streams: list[Any] = [batch[index].stream for index in group]
        argv: list[Any] = [self._maxlen, len(signals), ACTIVITY_MAXLEN]
        for index in group:
            fields = batch[index].fields
            argv.append(len(fields))
            for item in fields.items():
                argv += item
        return XADD_BATCH.command([*streams, *signals], [*argv, *(" ".join(names) for names in signals.values())])

    def _signals(self, batch: list[Entry]) -> dict[str, list[str]]:
        """Activity stream -> the symbols `batch` appends to there, as a signal names them
        (services.core.activity)."""
        symbols: dict[str, set[str]] = {}
        activity_of = self._activity_of
        for entry in batch:
            key = activity_of.get(entry.stream, "")
            if key == "":
                key = activity_of[entry.stream] = self._keys.stream_activity(entry.stream)
            if key is not None:
                symbols.setdefault(key, set()).add(entry.symbol)
        return {key: sorted(names) for key, names in symbols.items()}

    def _sadd_command(self, symbols: set[str]) -> Command:
        return ("SADD", self._symbols_key, *sorted(symbols))

    async def _connect(self) -> None:
        """Open the connection if needed, and load the script on each new one.

        Each connection's client id (`client_ids`: one per node on a cluster) is noted with the batch sent on it,
        so that after a failure the old connection can be killed before anything is read back (see `_reconcile`).
        """
        if not self._wire.connected:
            await self._wire.connect()
            await self._load_script()
            if self.fence == "unknown":
                await self._probe_fence(self._wire.client_ids)

    async def _probe_fence(self, client_ids: dict[str, int]) -> None:
        """Find out once whether the fence can run: it needs CLIENT ID (refused, the wire has no id) and
        CLIENT KILL, tried here with SKIPME, which makes killing this very connection a no-op."""
        if not client_ids:
            error = "CLIENT ID refused"
        else:
            refused = [reply for reply in await self._wire.kill_clients(client_ids, skip_me=True)
                       if isinstance(reply, ResponseError)]
            if not refused:
                self.fence = "available"
                return
            error = str(refused[0])
        self.fence = "refused"
        self._log.warning("exactly_once_fence_refused", error=error,
                          consequence="after a failed batch, entries may land twice")

    async def _load_script(self) -> None:
        [reply] = await self._wire.call([XADD_BATCH.load_command()])
        if isinstance(reply, ResponseError):
            raise reply

    def _settle(self, batch: list[Entry], failures: dict[str, tuple[int, str]], done_ns: int) -> None:
        """Remove the appended entries from the buffer; keep the refused ones at its head, in order."""
        for _ in batch:
            self._buffer.popleft()
        if not failures:
            self._account(batch, done_ns)
            return
        appended: list[Entry] = []
        refused: list[Entry] = []
        for index, entry in enumerate(batch):
            failure = failures.get(entry.stream)
            (appended if failure is None or index < failure[0] else refused).append(entry)
        for stream, (_, error) in failures.items():
            if error.startswith(PERMANENT_ERRORS):
                lost = sum(1 for entry in refused if entry.stream == stream)
                self._log.error("entries_dropped", reason="redis_refused", stream=stream, entries=lost, error=error)
                metrics.DROPPED.labels("redis_refused").inc(lost)
        retry = [entry for entry in refused if not failures[entry.stream][1].startswith(PERMANENT_ERRORS)]
        self._buffer.extendleft(reversed(retry))
        self._account(appended, done_ns)
        if retry:
            stream, (_, error) = next(iter(failures.items()))
            raise RedisRefused(f"{len(retry)} entries refused, e.g. on {stream}: {error}")

    def _account(self, appended: list[Entry], done_ns: int) -> None:
        if appended:
            self._progress_at = time.monotonic()
        observe = metrics.LATENCY.observe_ns
        counts = self.appended
        gaps = 0
        for entry in appended:
            observe(done_ns - entry.received_ns)
            counts[entry.stream] = counts.get(entry.stream, 0) + 1
            if entry.fields["action"] == GAP_ACTION:
                gaps += 1
        metrics.PUBLISHED.labels("frame").inc(len(appended) - gaps)
        if gaps:
            metrics.PUBLISHED.labels("gap").inc(gaps)
        if len(self._buffer) <= self._resume_at:
            self._room.set()

    async def _reconcile(self) -> None:
        """After a batch of unknown outcome, drop from the buffer the entries Redis already holds.

        Entries reach each stream in buffer order, so a stream's last entry (identified by its session and
        seq, unique within the stream) marks how far that stream got; everything before it in the batch
        was appended too.
        """
        region = list(islice(self._buffer, self._unconfirmed))
        streams = list(dict.fromkeys(entry.stream for entry in region))
        await self._connect()
        # The batch may still sit unread in the old connection's socket and run later; killing that
        # connection first settles it (run already, or never will), so the tails read next are final.
        # Where CLIENT KILL is refused (said once, by `_probe_fence`) the check is as good as it can be; a
        # connection already gone answers "No such client", which is the fence holding too.
        await self._wire.kill_clients(self._unconfirmed_on)
        replies = await self._wire.call([("XREVRANGE", stream, "+", "-", "COUNT", 1) for stream in streams])
        reached: dict[str, int] = {}
        for stream, reply in zip(streams, replies, strict=True):
            if isinstance(reply, ResponseError):
                raise reply
            tail = _tail_identity(reply)
            if tail is None:
                continue
            for index, entry in enumerate(region):
                if entry.stream == stream and (entry.fields["session"], entry.fields["seq"]) == tail:
                    reached[stream] = index
        appended = [entry for index, entry in enumerate(region) if index <= reached.get(entry.stream, -1)]
        if appended:
            kept = [entry for index, entry in enumerate(region) if index > reached.get(entry.stream, -1)]
            for _ in region:
                self._buffer.popleft()
            self._buffer.extendleft(reversed(kept))
            self._log.info("batch_reconciled", appended=len(appended), resent=len(kept))
            self._account(appended, time.perf_counter_ns())
        self._unconfirmed = 0


def _first_failures(batch: list[Entry], group: list[int], reply: Any) -> dict[str, tuple[int, str]]:
    """`{stream: (batch index of its first refused entry, error)}` from the reply of the script that appended
    the entries at the indices `group`."""
    failures: dict[str, tuple[int, str]] = {}
    for position, error in reply or ():
        if int(position) == 0:
            continue  # a signal (`_signal_errors`)
        index = group[int(position) - 1]
        text = error.decode("utf-8", "replace") if isinstance(error, bytes) else str(error)
        failures[batch[index].stream] = (index, text)
    return failures


def _signal_errors(reply: Any) -> list[str]:
    """The errors of the activity signals a batch script appended after its entries."""
    return [error.decode("utf-8", "replace") if isinstance(error, bytes) else str(error)
            for position, error in reply or () if int(position) == 0]


def _tail_identity(reply: Any) -> tuple[str, str] | None:
    """`(session, seq)` of the single entry an `XREVRANGE ... COUNT 1` returned, or None."""
    if not reply:
        return None
    _, flat = reply[0]
    fields = dict(zip(flat[::2], flat[1::2], strict=True))
    session, seq = fields.get(b"session"), fields.get(b"seq")
    if session is None or seq is None:
        return None
    return session.decode(), seq.decode()
