"""One connected client: its protocol session, its bounded send queue and the task that drains it.

The market never waits for a client. Frames are queued here synchronously, in the order they happen, and
one writer task per client drains the queue into the socket at whatever pace that client reads. A client
that falls too far behind (more than `max_queue_bytes` of deltas queued) is disconnected, as BitMEX
does, instead of buffering without bound or slowing the market down for everyone else. Queued partials
do not count as lag: hundreds of them at once are what a client asks for when it subscribes to many
books, and memory stays bounded by what it subscribed to.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Final

from prometheus_client import Counter
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import OPEN

from services.exchange.faults import INJECTED_ERROR, ConnectionFaults, Drop, FaultPlan, Injection, Stall
from services.exchange.protocol import Session
from services.runtime.logs import EventLog

DEFAULT_MAX_QUEUE_BYTES: Final = 16 * 1024 * 1024
BURST_FRAMES: Final = 512

FRAMES_SENT = Counter("bookstream_exchange_frames_sent", "Frames written to client connections")
SLOW_CLIENTS = Counter("bookstream_exchange_slow_clients_closed",
                       "Clients disconnected because their send queue overflowed")
FAULTS = Counter("bookstream_exchange_faults_injected", "Faults injected into client connections", ["kind"])


class Client:
    """A websocket connection as the feeds see it: a place to send frames, and its subscriptions."""

    def __init__(self, ws: ServerConnection, number: int, session: Session, plan: FaultPlan,
                 max_queue_bytes: int, log: EventLog) -> None:
        self.ws = ws
        self.number = number
        self.session = session
        self.max_queue_bytes = max_queue_bytes
        self.queued_bytes = 0
        self.sent = 0
        # Where each queued partial ends, counted in bytes ever queued, so the writer can tell when it is out.
        self._partial_ends: deque[tuple[int, int]] = deque()
        self._partial_bytes = 0
        self._queued_total = 0
        self.closed = False
        self.faults = ConnectionFaults(plan)
        self._counts_frames = plan.counts_frames
        self._queue: deque[Injection] = deque()
        self._ready = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()
        self._log = log

    def __repr__(self) -> str:
        return f"<Client {self.number} queued={len(self._queue)}>"

    @property
    def idle(self) -> bool:
        """Nothing is waiting to be written."""
        return not self._queue

    def send(self, frame: bytes) -> None:
        """Queue a protocol frame (welcome, ack, error, pong)."""
        self._put(frame)

    def send_partial(self, frame: bytes) -> None:
        """Queue a partial; like every table frame it counts towards the frame-count faults."""
        self._put(frame)
        if not self.closed:
            self._partial_ends.append((self._queued_total, len(frame)))
            self._partial_bytes += len(frame)
        self._count_data_frame()

    def send_data(self, frame: bytes) -> None:
        """Queue a delta, disconnecting the client if its deltas queued have grown past the limit."""
        self._put(frame)
        if self.queued_bytes - self._partial_bytes > self.max_queue_bytes and not self.closed:
            SLOW_CLIENTS.inc()
            self._log.warning("slow_client_closed", client=self.number, queued_frames=len(self._queue),
                              queued_bytes=self.queued_bytes, limit=self.max_queue_bytes)
            self.drop("slow client")
            return
        self._count_data_frame()

    def _count_data_frame(self) -> None:
        if self._counts_frames and not self.closed:
            for injection in self.faults.after_data_frame():
                self.inject(injection)

    def inject(self, item: Injection) -> None:
        """Queue a fault behind what is already queued."""
        FAULTS.labels(_kind(item)).inc()
        self._put(item)

    def stall_now(self, seconds: float) -> None:
        """Hold back everything queued, starting now."""
        if self.closed:
            return
        FAULTS.labels("stall").inc()
        self._queue.appendleft(Stall(seconds))
        self._ready.set()

    def drop(self, reason: str) -> None:
        """Cut the connection at once, without a closing handshake, as a network failure would."""
        if self.closed:
            return
        self.closed = True
        self._queue.clear()
        self.queued_bytes = self._partial_bytes = 0
        self._partial_ends.clear()
        self._empty.set()
        self._log.info("client_dropped", client=self.number, reason=reason)
        self.ws.transport.abort()

    async def drained(self) -> None:
        """Wait until everything queued has been handed to the socket."""
        await self._empty.wait()

    async def write(self) -> None:
        """Drain the queue into the socket until the connection ends (the writer task's body)."""
        queue, ready = self._queue, self._ready
        burst: list[bytes] = []
        try:
            while True:
                if not queue:
                    self._empty.set()
                    ready.clear()
                    await ready.wait()
                    continue
                item = queue.popleft()
                if isinstance(item, Stall):
                    self._log.info("client_stalled", client=self.number, seconds=item.seconds)
                    await asyncio.sleep(item.seconds)
                    continue
                if isinstance(item, Drop):
                    self.drop("fault")
                    return
                burst.append(item)
                size = len(item)
                while queue and type(queue[0]) is bytes and len(burst) < BURST_FRAMES:
                    frame = queue.popleft()
                    assert type(frame) is bytes
                    burst.append(frame)
                    size += len(frame)
                self.queued_bytes -= size
                written = self._queued_total - self.queued_bytes
                while self._partial_ends and self._partial_ends[0][0] <= written:
                    self._partial_bytes -= self._partial_ends.popleft()[1]
                if not _write_burst(self.ws, burst):
                    return
                self.sent += len(burst)
                FRAMES_SENT.inc(len(burst))
                burst.clear()
                await self.ws.drain()
        except (ConnectionClosed, ConnectionError):
            pass

    def _put(self, item: Injection) -> None:
        if self.closed:
            return
        self._queue.append(item)
        if type(item) is bytes:
            self.queued_bytes += len(item)
            self._queued_total += len(item)
        self._empty.clear()
        self._ready.set()


def _kind(item: Injection) -> str:
    if isinstance(item, Stall):
        return "stall"
    if isinstance(item, Drop):
        return "drop"
    return "error" if item == INJECTED_ERROR else "malformed"


def _write_burst(ws: ServerConnection, frames: list[bytes]) -> bool:
    """Write `frames` as text messages with one system call; False when the connection is closing.

    `ws.send()` writes every message on its own, one system call per frame and per client, which at
    the simulator's top rates is most of the server's time. Like `websockets.broadcast()`, this frames messages with
    the sans-I/O protocol and writes them with `send_data()`, only for many messages at once (websockets
    is pinned in pyproject.toml, so these calls cannot change under us). The caller awaits `drain()`,
    which pauses this client only, while its socket buffer is full.
    """
    protocol = ws.protocol
    if protocol.state is not OPEN:
        return False
    for frame in frames:
        protocol.send_text(frame)
    ws.send_data()
    return True
