"""The websocket feed of ingest (`Feed`): connect, subscribe, read every frame, and keep the connection honest.

One task reads frames as fast as they come: each is timestamped, recorded, parsed once and routed into
the publisher's buffer, and the task only stops reading while that buffer is full (backpressure reaches
the venue through TCP). A watchdog beside it sends `ping` after `PING_AFTER` seconds of silence and gives
up on the connection when the ping goes unanswered for `PONG_TIMEOUT`; websockets' own keepalive is off,
because BitMEX speaks the text `ping`/`pong`, not protocol pings. The ping comes early because the
liveness key (liveness.py) is renewed only while the venue was heard from recently: a quiet but healthy
venue proves itself with its `pong` long before that window closes, a silent one loses its key.

Every way a session can end (closed by the venue, network failure, silence, stop) leads to the same
place: gap markers after the session's last frame on every subscribed symbol's book streams (L2 and
orderBook10), then a jittered, capped, exponential backoff before the next attempt (the venue's
`Retry-After` after a 429, up to RETRY_AFTER_MAX).

Hostile input never passes silently: a frame that cannot be parsed leaves a `malformed` gap marker where
it may have carried book data, a frame for a symbol that was not subscribed is not published, and both are
counted and logged, the log rate-limited. The websocket URL is printed only through `mask_url`.

One module, longer than most, because it is one concern: the life of a websocket connection. The reader,
the watchdog and the reconnect loop share the connection and its `Session`, and each ends it the one way
above; split apart, that ending would be spread over modules. What can be decided without the connection
is elsewhere already: the session's subscriptions and gaps (session.py), the backoff (backoff.py), the
watchdog's and the subscriptions' verdicts (`watch_step`, `subscription_verdict`: pure, below `Feed`).
"""

from __future__ import annotations

import asyncio
import enum
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from services.core.bitmex import ErrorReply, Pong, ProtocolError, SubscriptionAck, TableFrame, Welcome, parse_frame
from services.core.keys import Keys
from services.core.ratelimit import LogLimit
from services.core.text import excerpt
from services.ingest import metrics
from services.ingest.backoff import ReconnectBackoff, parse_retry_after
from services.ingest.publisher import Publisher
from services.ingest.recorder import Recorder
from services.ingest.session import Reaction, Session, TopicState
from services.runtime.config import Settings, mask_url
from services.runtime.health import safe_error
from services.runtime.logs import EventLog

PING_AFTER: Final = 1.0
"""Silence before a `ping`: well inside the liveness window (liveness.HEARD_WITHIN), so a quiet venue's
`pong` keeps the key alive. A busy feed is never quiet this long, and a ping is a few bytes."""
PONG_TIMEOUT: Final = 5.0
"""How long an unanswered ping waits before the session is given up and ingest reconnects. The liveness
key is gone well before; this only decides when a new connection is worth trying."""
WATCH_INTERVAL: Final = 0.25
OPEN_TIMEOUT: Final = 10.0
CLOSE_TIMEOUT: Final = 2.0
MAX_MESSAGE_BYTES: Final = 64 << 20
"""A full-depth partial of a busy contract is megabytes; websockets' 1 MiB default would refuse it."""
RECEIVE_QUEUE_FRAMES: Final = 256
YIELD_EVERY: Final = 32
"""Frames the reader handles before letting the publisher run. One socket read can hold hundreds of
frames, all parsed before `recv()` would wait: without a yield the publisher's next batch (and Redis,
working in parallel) would wait for all of them, capping throughput and adding latency. The reader also
yields as soon as it hands an idle publisher work, so the first frame of a burst is on its way to Redis
while the rest of the burst is parsed."""
RECORD_FLUSH_INTERVAL: Final = 1.0

T = TypeVar("T")


class WatchStep(enum.Enum):
    WAIT = "wait"
    PING = "ping"
    GIVE_UP = "give_up"


class LinkState(enum.StrEnum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    WAITING = "waiting"
    """Disconnected, waiting for the backoff delay or for room in the buffer."""
    STOPPED = "stopped"


class Feed:
    """The websocket connection to the venue, re-established for as long as ingest runs."""

    def __init__(self, settings: Settings, publisher: Publisher, recorder: Recorder | None,
                 extra_tables: tuple[str, ...], log: EventLog) -> None:
        self._settings, self._publisher, self._recorder, self._log = settings, publisher, recorder, log
        self._keys = Keys(settings.key_prefix)
        self._extra_tables = extra_tables
        self._backoff = ReconnectBackoff()
        self.state = LinkState.WAITING
        self.disconnected_since: float | None = time.monotonic()
        self.session: Session | None = None
        self.last_session = ""
        self.last_disconnect = ""
        self.rejected: dict[str, str] = {}
        self._ws: ClientConnection | None = None
        self._received = 0
        self._paused = False
        self._rate_limited = False
        self._retry_after: float | None = None
        self._heard_ns = time.perf_counter_ns()
        """`perf_counter_ns()` when the venue last said anything (a frame, a `pong`), or the session began."""
        self._malformed_log, self._unsubscribed_log = LogLimit(), LogLimit()
        self._url = mask_url(settings.ws_url)
        self.connected = asyncio.Event()
        """Set when a session connects, so its liveness key is written at once, not at the next tick."""
        for state in TopicState:
            metrics.TOPICS.labels(state.value).set_function(self._topic_counter(state))

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, read, reconnect, until `stop` is set."""
        while not stop.is_set():
            if self._publisher.full:
                self._log.warning("waiting_for_buffer_room", buffered=len(self._publisher))
                await _until(self._publisher.wait_for_room(), stop)
                if stop.is_set():
                    break
            self.state = LinkState.CONNECTING
            reason, delay = await self._attempt(stop)
            if stop.is_set():
                break
            self.state = LinkState.WAITING
            metrics.RECONNECTS.labels(reason).inc()
            self._log.info("reconnect_scheduled", reason=reason, delay_s=round(delay, 3),
                           failures=self._backoff.failures)
            await _until(asyncio.sleep(delay), stop)
        self.state = LinkState.STOPPED

    async def resubscribe(self, symbol: str, table: str | None = None) -> str:
        """Ask the venue for a fresh partial of `symbol`'s topic of `table` (the L2 table unless said);
        returns the outcome for metrics."""
        return (await self.resubscribe_many([symbol], table))[symbol]

    async def resubscribe_many(self, symbols: list[str], table: str | None = None) -> dict[str, str]:
        """`resubscribe` for many symbols, in as few requests as the venue allows; the outcome by symbol."""
        session, ws = self.session, self._ws
        if session is None or ws is None:
            return dict.fromkeys(symbols, "not_connected")
        outcomes = {symbol: "unknown_symbol" for symbol in symbols if symbol not in session.symbols}
        known = [symbol for symbol in symbols if symbol not in outcomes]
        waiting = {symbol for symbol in known if session.topics.get(f"{table or session.l2_table}:{symbol}")
                   not in (TopicState.SUBSCRIBED, TopicState.REJECTED)}
        for request in session.resubscribe_many(known, table):
            await ws.send(request)
        for symbol in known:
            outcomes[symbol] = "in_progress" if symbol in waiting else "sent"
        sent = [symbol for symbol in known if symbol not in waiting]
        if sent:
            self._log.info("resubscribe_sent", session=session.id, symbols=",".join(sent), count=len(sent),
                           table=table or session.l2_table)
        return outcomes

    def quiet(self) -> tuple[Session, float] | None:
        """The connected session and for how many seconds the venue has said nothing on it (none while
        reading is paused: the venue's frames are waiting unread), or None while not connected."""
        session = self.session
        if session is None or self.state is not LinkState.CONNECTED:
            return None
        return session, self._quiet_s(time.perf_counter_ns())

    def subscription_problem(self) -> tuple[str | None, list[str]]:
        """(why /healthz must fail, rejected topics) of the current session; see `subscription_verdict`."""
        session = self.session
        if session is None:
            return None, []
        return subscription_verdict(session.topics)

    def describe(self) -> dict[str, Any]:
        """Connection detail for /healthz."""
        now = time.monotonic()
        detail: dict[str, Any] = {"state": self.state.value, "url": self._url}
        if self.disconnected_since is not None:
            detail["disconnected_s"] = round(now - self.disconnected_since, 3)
            detail["last_disconnect"] = self.last_disconnect
        session = self.session
        if session is not None:
            detail["session"] = session.id
            detail["quiet_s"] = round(self._quiet_s(time.perf_counter_ns()), 3)
            detail["topics"] = {state.value: session.topics_in(state) for state in TopicState}
        else:
            detail["last_session"] = self.last_session
        detail["rejected_topics"] = dict(self.rejected)
        return detail

    def flush_recorder(self) -> None:
        if self._recorder is not None:
            self._recorder.flush()

    async def _attempt(self, stop: asyncio.Event) -> tuple[str, float]:
        """One connection attempt and, if it opens, its whole session: (why it ended, delay before the next)."""
        try:
            ws = await _until(connect(self._settings.ws_url, ping_interval=None, compression=None,
                                      max_size=MAX_MESSAGE_BYTES, max_queue=RECEIVE_QUEUE_FRAMES,
                                      open_timeout=OPEN_TIMEOUT, close_timeout=CLOSE_TIMEOUT), stop)
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status == 429:
                retry_after = parse_retry_after(exc.response.headers.get("Retry-After"), time.time())
                delay = self._backoff.rate_limited(retry_after, self._settings.retry_after_max)
                self._log.warning("connect_rate_limited", status=status, retry_after=retry_after,
                                  retry_after_max=self._settings.retry_after_max, delay_s=round(delay, 3))
                return "rate_limited", delay
            self._log.warning("connect_refused", status=status, url=self._url)
            return f"http_{status}", self._backoff.next_delay()
        except (OSError, TimeoutError, WebSocketException) as exc:
            self._log.warning("connect_failed", url=self._url, error=safe_error(exc))
            return "connect_failed", self._backoff.next_delay()
        if ws is None:
            return "stop", 0.0
        self._rate_limited, self._retry_after = False, None
        healthy, reason = await self._session(ws, stop)
        if self._rate_limited:
            delay = self._backoff.rate_limited(self._retry_after, self._settings.retry_after_max)
            self._log.warning("session_rate_limited", retry_after=self._retry_after,
                              retry_after_max=self._settings.retry_after_max, delay_s=round(delay, 3))
            return "rate_limited", delay
        if healthy:
            self._backoff.reset()
        return reason, self._backoff.next_delay()

    async def _session(self, ws: ClientConnection, stop: asyncio.Event) -> tuple[bool, str]:
        """Run one session to its end; (whether it delivered data, why it ended)."""
        session = Session(uuid.uuid4().hex[:12], self._keys, self._settings.l2_table, self._settings.symbols,
                          self._extra_tables)
        self._heard_ns = time.perf_counter_ns()
        self.session, self._ws, self.state, self.disconnected_since = session, ws, LinkState.CONNECTED, None
        self.rejected = {}
        metrics.CONNECTIONS.inc()
        metrics.CONNECTED.set(1)
        self._log.info("connected", session=session.id, url=self._url)
        self.connected.set()
        reader = asyncio.create_task(self._read(ws, session))
        watchdog = asyncio.create_task(self._watch(ws, session))
        stopped = asyncio.create_task(stop.wait())
        try:
            for request in session.subscribe_requests():
                await ws.send(request)
            await asyncio.wait((reader, watchdog, stopped), return_when=asyncio.FIRST_COMPLETED)
        except ConnectionClosed:
            pass
        finally:
            for task in (reader, watchdog, stopped):
                task.cancel()
            await asyncio.gather(reader, watchdog, stopped, return_exceptions=True)
        if stop.is_set():
            reason = "stop"
        else:
            ended = next((task for task in (reader, watchdog) if task.done() and not task.cancelled()), None)
            reason = "closed" if ended is None else ended.result()
        delivered = session.delivered
        self._end_session(session, reason)
        if reason == "heartbeat_timeout":
            ws.transport.abort()
        await ws.close()
        return delivered, reason

    def _end_session(self, session: Session, reason: str) -> None:
        gaps = session.disconnect_gaps(reason, time.time_ns() // 1000, time.perf_counter_ns())
        self._publisher.append(gaps)
        metrics.GAPS.labels(reason).inc(len(gaps))
        metrics.CONNECTED.set(0)
        self.session, self._ws, self.last_session, self.last_disconnect = None, None, session.id, reason
        self.disconnected_since = time.monotonic()
        self.flush_recorder()
        self._log.warning("disconnected", session=session.id, reason=reason, gap_markers=len(gaps),
                          buffered=len(self._publisher))

    async def _read(self, ws: ClientConnection, session: Session) -> str:
        """Receive and route frames until the connection ends; returns why it ended."""
        publisher, recorder, log, tally = self._publisher, self._recorder, self._log, metrics.FRAMES.add
        try:
            while True:
                if publisher.full:
                    await self._pause(session)
                elif not self._received % YIELD_EVERY:
                    await asyncio.sleep(0)
                raw = await ws.recv(decode=False)
                recv_ns = time.time_ns()
                received_ns = time.perf_counter_ns()
                self._heard_ns = received_ns
                self._received += 1
                try:
                    text = raw.decode()
                except UnicodeDecodeError:
                    self._malformed(session, "invalid UTF-8", raw, recv_ns // 1000, received_ns)
                    continue
                if recorder is not None:
                    if recorder.write(recv_ns / 1e9, text):
                        metrics.RECORDED.inc()
                    else:
                        log.warning("frame_not_recorded", session=session.id, excerpt=excerpt(text))
                try:
                    frame = parse_frame(raw)
                except ProtocolError as exc:
                    self._malformed(session, exc.reason, raw, recv_ns // 1000, received_ns)
                    continue
                if isinstance(frame, TableFrame):
                    tally(frame.table, frame.action, len(raw))
                    try:
                        entries = session.route(frame, text, recv_ns // 1000, received_ns)
                    except ProtocolError as exc:
                        self._malformed(session, exc.reason, raw, recv_ns // 1000, received_ns)
                        continue
                    if session.foreign:
                        self._unsubscribed(session)
                    if entries:
                        publisher.append(entries)
                        if frame.symbol is None:
                            metrics.SPLIT.inc()
                        if publisher.idle:
                            await asyncio.sleep(0)
                else:
                    await self._on_reply(ws, session, frame, recv_ns // 1000, received_ns)
        except ConnectionClosed as exc:
            log.info("connection_closed", session=session.id, code=exc.rcvd.code if exc.rcvd else None,
                     reason=exc.rcvd.reason if exc.rcvd else "")
            return "closed"
        except Exception:
            # A bug must not leave the feed dead while the process looks alive: end the session loudly
            # (gap markers follow, as for any disconnect) and reconnect.
            log.error("reader_failed", exc_info=True, session=session.id)
            return "reader_failed"

    async def _on_reply(self, ws: ClientConnection, session: Session,
                        frame: Welcome | SubscriptionAck | ErrorReply | Pong, recv_us: int, received_ns: int) -> None:
        """Handle everything that is not a table frame: welcome, acks, errors, pong."""
        if isinstance(frame, SubscriptionAck):
            metrics.MESSAGES.labels(frame.op).inc()
            reaction = session.on_ack(frame, recv_us, received_ns)
        elif isinstance(frame, ErrorReply):
            metrics.MESSAGES.labels("error").inc()
            self._log.warning("venue_error", session=session.id, status=frame.status, error=frame.error,
                              request=frame.request)
            if frame.status == 429:
                retry_after = frame.meta.get("retryAfter")
                self._rate_limited = True
                self._retry_after = (max(0.0, float(retry_after))
                                     if isinstance(retry_after, int | float) and not isinstance(retry_after, bool)
                                     else None)
            reaction = session.on_error(frame)
        elif isinstance(frame, Welcome):
            metrics.MESSAGES.labels("welcome").inc()
            self._log.info("welcome", session=session.id, version=frame.version,
                           connections_remaining=frame.limit.get("remaining"))
            return
        else:
            metrics.MESSAGES.labels("pong").inc()
            return
        await self._react(ws, session, reaction)

    async def _react(self, ws: ClientConnection, session: Session, reaction: Reaction) -> None:
        for topic, state in reaction.settled:
            if state is TopicState.REJECTED:
                metrics.REJECTED.inc()
                self.rejected[topic] = session.errors.get(topic, "")
                self._log.warning("topic_rejected", session=session.id, topic=topic, error=self.rejected[topic])
            else:
                self.rejected.pop(topic, None)
        if reaction.settled and not session.topics_in(TopicState.PENDING):
            self._log.info("subscriptions_settled", session=session.id,
                           subscribed=len(session.topics_in(TopicState.SUBSCRIBED)),
                           rejected=len(session.topics_in(TopicState.REJECTED)))
        if reaction.entries:
            self._publisher.append(reaction.entries)
            metrics.GAPS.labels("resubscribe").inc(len(reaction.entries))
        for request in reaction.send:
            await ws.send(request)

    async def _pause(self, session: Session) -> None:
        """Stop reading while the buffer is full: the venue's frames wait in the socket buffers."""
        self._paused = True
        started = time.monotonic()
        self._log.warning("reading_paused", session=session.id, buffered=len(self._publisher))
        try:
            await self._publisher.wait_for_room()
        finally:
            self._paused = False
            self._heard_ns = time.perf_counter_ns()
            paused = time.monotonic() - started
            metrics.PAUSED_SECONDS.inc(paused)
            self._log.info("reading_resumed", session=session.id, paused_s=round(paused, 3))

    def _malformed(self, session: Session, reason: str, raw: bytes, recv_us: int, received_ns: int) -> None:
        """Count and (rate-limited) log a frame that cannot be parsed; mark the book streams it may belong to."""
        metrics.MALFORMED.inc()
        gaps = session.malformed_gaps(raw, recv_us, received_ns)
        if gaps:
            self._publisher.append(gaps)
            metrics.GAPS.labels("malformed").inc(len(gaps))
        held = self._malformed_log.admit(time.monotonic())
        if held is not None:
            self._log.warning("malformed_frame", session=session.id, error=reason, excerpt=excerpt(raw),
                              gap_markers=len(gaps), symbols=",".join(sorted({gap.symbol for gap in gaps})),
                              suppressed=held)
        if session.foreign:
            self._unsubscribed(session)

    def _unsubscribed(self, session: Session) -> None:
        """Count and (rate-limited) log the frame parts of symbols no subscription names."""
        metrics.UNSUBSCRIBED.inc(len(session.foreign))
        held = self._unsubscribed_log.admit(time.monotonic())
        if held is not None:
            self._log.warning("unsubscribed_symbol", session=session.id, symbol=excerpt(session.foreign[0], 40),
                              parts=len(session.foreign), suppressed=held)
        session.foreign.clear()

    async def _watch(self, ws: ClientConnection, session: Session) -> str:
        """Ping after silence; return (ending the session) when the ping goes unanswered.

        The capture file is flushed here too, about once a second, off the per-frame path.
        """
        flushed = time.monotonic()
        pinged_ns: int | None = None
        try:
            while True:
                await asyncio.sleep(WATCH_INTERVAL)
                now_ns = time.perf_counter_ns()
                if self._paused or (pinged_ns is not None and self._heard_ns > pinged_ns):
                    pinged_ns = None
                quiet_s = self._quiet_s(now_ns)
                step = watch_step(quiet_s, None if pinged_ns is None else (now_ns - pinged_ns) / 1e9)
                if step is WatchStep.PING:
                    metrics.PINGS.inc()
                    await ws.send("ping")
                    pinged_ns = now_ns
                elif step is WatchStep.GIVE_UP:
                    self._log.warning("heartbeat_timeout", session=session.id, silent_s=round(quiet_s, 3))
                    return "heartbeat_timeout"
                if time.monotonic() - flushed >= RECORD_FLUSH_INTERVAL:
                    self.flush_recorder()
                    flushed = time.monotonic()
        except ConnectionClosed:
            return "closed"

    def _quiet_s(self, now_ns: int) -> float:
        return 0.0 if self._paused else max(0.0, (now_ns - self._heard_ns) / 1e9)

    def _topic_counter(self, state: TopicState) -> Callable[[], int]:
        def count() -> int:
            session = self.session
            return 0 if session is None else len(session.topics_in(state))

        return count


def watch_step(quiet_s: float, ping_unanswered_s: float | None) -> WatchStep:
    """What the watchdog does after `quiet_s` of silence, with a ping unanswered for `ping_unanswered_s`
    (None: no ping is waiting for its answer)."""
    if ping_unanswered_s is not None:
        return WatchStep.GIVE_UP if ping_unanswered_s >= PONG_TIMEOUT else WatchStep.WAIT
    return WatchStep.PING if quiet_s >= PING_AFTER else WatchStep.WAIT


def subscription_verdict(topics: dict[str, TopicState]) -> tuple[str | None, list[str]]:
    """(problem, rejected topics) of a session's subscriptions.

    Once the venue has answered every topic, none subscribed is a problem (ingest delivers nothing);
    some rejected is a degraded state, reported without failing /healthz.
    """
    rejected = sorted(topic for topic, state in topics.items() if state is TopicState.REJECTED)
    if topics and len(rejected) == len(topics):
        return f"no topic subscribed: the venue rejected all {len(topics)}", rejected
    return None, rejected


async def _until(awaitable: Awaitable[T], stop: asyncio.Event) -> T | None:
    """Await `awaitable` unless `stop` is set first (then cancel it and return None)."""
    task = asyncio.ensure_future(awaitable)
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait((task, stopped), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    return task.result() if not task.cancelled() else None
