"""`exchange --replay FILE`: a recorded session served again, to each client from the beginning.

Every connection gets its own pass over the recording, starting at its first subscription, so what a
client receives does not depend on when it connected: the recorded frames of the topics it subscribed to,
byte for byte and in order, paced like the original (scaled by `speed`) or as fast as the client reads.
A book topic starts at its recorded partial; deltas recorded before that partial are skipped, as a
client would drop them anyway. A topic subscribed after its partial went by (a late subscription, or a
resubscription to resync a book) gets a partial rebuilt from the recording at that point, in the
recording's own format, so the book stays exact. With `loop` the pass starts over, partials included.

A recording without `orderBook10` for a symbol (the 2021 captures have none) still serves it, as the
live venue would: the pass keeps that client's own copy of the symbol's replayed L2 book and sends an
`orderBook10` snapshot of its top 10 whenever that top changes (derived_top10.py), starting with a partial
when the L2 partial goes by (or at once, rebuilt, for a late subscription), stamped with the time it is sent.

The REST truth of a replay is the book at the end of the recording: what every client's book is once its
pass is over.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from services.core.capture import iter_capture
from services.exchange import messages
from services.exchange.client import Client
from services.exchange.derived_top10 import DerivedTop10
from services.exchange.messages import BOOK_TABLES, L2_25_TABLE, L2_TABLE, OB10_TABLE
from services.exchange.protocol import Topic, Venue
from services.runtime.logs import EventLog

HIGH_WATER_BYTES: Final = 1024 * 1024
"""A pass waits for its client below this much queued data: a replay has no market to keep up with."""
YIELD_EVERY: Final = 64
REMAINING_CONNECTIONS: Final = 719


@dataclass(frozen=True, slots=True)
class RecordedFrame:
    """One table frame of a recording, classified once at load time."""

    time: float
    text: bytes
    action: str
    topic: Topic
    table_topic: Topic


@dataclass(slots=True)
class Recording:
    """The table frames of a capture, indexed by topic, and its welcome frame if it has one."""

    frames: list[RecordedFrame] = field(default_factory=list)
    welcome: bytes | None = None
    by_topic: dict[Topic, list[int]] = field(default_factory=dict)
    skipped: int = 0

    @property
    def tables(self) -> frozenset[str]:
        return frozenset(topic.table for topic in self.by_topic)

    @property
    def symbols(self) -> frozenset[str]:
        return frozenset(topic.symbol for topic in self.by_topic if topic.symbol is not None)

    def symbols_of(self, table: str) -> list[str]:
        return sorted(topic.symbol for topic in self.by_topic if topic.table == table and topic.symbol)

    def top10_source(self, symbol: str) -> str | None:
        """The L2 table to derive `symbol`'s orderBook10 from; None when it was recorded, or cannot be."""
        if Topic(OB10_TABLE, symbol) in self.by_topic:
            return None
        return next((table for table in (L2_TABLE, L2_25_TABLE) if Topic(table, symbol) in self.by_topic), None)


def load_recording(path: str | Path) -> Recording:
    """Read a capture (`<epoch seconds> <frame text>` per line); raise CaptureError on a line of another form.

    Only table frames are kept, and the first welcome: the acks and errors of the recorded session mean
    nothing to a new client, and a malformed frame the venue once sent belongs to no topic.
    """
    recording = Recording()
    for recv_time, text in iter_capture(path):
        try:
            message = orjson.loads(text)
        except orjson.JSONDecodeError:
            recording.skipped += 1
            continue
        if type(message) is not dict:
            recording.skipped += 1
            continue
        table, action = message.get("table"), message.get("action")
        if type(table) is not str or type(action) is not str:
            if recording.welcome is None and "info" in message:
                recording.welcome = text.encode()
            continue
        symbol = _symbol(message)
        topic = Topic(table, symbol)
        recording.by_topic.setdefault(topic, []).append(len(recording.frames))
        recording.frames.append(RecordedFrame(recv_time, text.encode(), action, topic, Topic(table)))
    return recording


def _symbol(message: dict[str, Any]) -> str | None:
    data = message.get("data")
    if type(data) is list and data and type(data[0]) is dict and type(data[0].get("symbol")) is str:
        return str(data[0]["symbol"])
    frame_filter = message.get("filter")
    if type(frame_filter) is dict and type(frame_filter.get("symbol")) is str:
        return str(frame_filter["symbol"])
    return None


def book_at(recording: Recording, topic: Topic, upto: int) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """`(partial message, rows)` of a book topic as of frame `upto` (exclusive), None before its first
    partial. L2 rows are price descending, sells then buys; an orderBook10 row is its latest snapshot."""
    indexes = [index for index in recording.by_topic.get(topic, ()) if index < upto]
    starts = [index for index in indexes if recording.frames[index].action == "partial"]
    if not starts:
        return None
    header = orjson.loads(recording.frames[starts[-1]].text)
    later = [orjson.loads(recording.frames[index].text) for index in indexes if index > starts[-1]]
    if topic.table == OB10_TABLE:
        return header, (later[-1]["data"] if later else header["data"])
    rows: dict[tuple[str, int], dict[str, Any]] = {(row["side"], row["id"]): row for row in header["data"]}
    for message in later:
        for row in message["data"]:
            key = (row["side"], row["id"])
            if message["action"] == "delete":
                rows.pop(key, None)
            elif message["action"] != "update":
                rows[key] = row
            elif key in rows:
                rows[key] = {**rows[key], **row}
    return header, sorted(rows.values(), key=lambda row: -row["price"])


def rebuilt_partial(recording: Recording, topic: Topic, upto: int) -> bytes | None:
    """A partial in the recording's own format equal to the book of `topic` as of frame `upto`."""
    state = book_at(recording, topic, upto)
    if state is None:
        return None
    header, rows = state
    return orjson.dumps({**header, "data": rows})


def final_rest_rows(recording: Recording, symbol: str, depth: int | None) -> bytes:
    """`GET /api/v1/orderBook/L2` rows of the orderBookL2 book at the end of the recording."""
    state = book_at(recording, Topic(L2_TABLE, symbol), len(recording.frames))
    rows = state[1] if state is not None else []
    sells = [row for row in rows if row["side"] == "Sell"]
    buys = [row for row in rows if row["side"] == "Buy"]
    if depth is not None:
        sells, buys = sells[-depth:], buys[:depth]
    return orjson.dumps([{"symbol": row["symbol"], "id": row["id"], "side": row["side"], "size": row["size"],
                          "price": row["price"], "timestamp": row.get("timestamp")} for row in sells + buys])


class Playback:
    """One client's pass (or passes, when looping) over a recording."""

    def __init__(self, recording: Recording, client: Client, speed: float, paced: bool, loop: bool,
                 log: EventLog) -> None:
        self.recording = recording
        self.client = client
        self.speed = speed
        self.paced = paced
        self.loop = loop
        self.cursor = 0
        self.done = False
        self._started: set[Topic] = set()
        self._derived: dict[str, DerivedTop10] = {}
        self._log = log

    def catch_up(self, topic: Topic) -> None:
        """Queue a rebuilt partial for each book of `topic` whose recorded partial already went by."""
        if topic.table not in BOOK_TABLES:
            return
        symbols = [topic.symbol] if topic.symbol is not None else self.recording.symbols_of(topic.table)
        if topic.table == OB10_TABLE:
            self._catch_up_derived([topic.symbol] if topic.symbol is not None else sorted(self.recording.symbols))
        for symbol in symbols:
            book_topic = Topic(topic.table, symbol)
            if book_topic in self._started:
                continue
            partial = rebuilt_partial(self.recording, book_topic, self.cursor)
            if partial is not None:
                self._started.add(book_topic)
                self.client.send_partial(partial)

    def _catch_up_derived(self, symbols: list[str]) -> None:
        for symbol in symbols:
            source = self.recording.top10_source(symbol)
            if source is None or symbol in self._derived:
                continue
            state = book_at(self.recording, Topic(source, symbol), self.cursor)
            if state is not None:
                self._start_derived(symbol, state[1], messages.iso_timestamp(time.time()))

    def _start_derived(self, symbol: str, rows: list[Any], timestamp: str) -> None:
        derived = self._derived[symbol] = DerivedTop10(symbol, rows)
        frame = derived.frame(timestamp)
        if frame is not None:
            self.client.send_partial(frame)

    def forget(self, topic: Topic) -> None:
        """Stop a book topic that no subscription covers any more, so a resubscription restarts it."""
        topics = self.client.session.topics
        for started in [item for item in self._started if item.table == topic.table]:
            if started not in topics and Topic(started.table) not in topics:
                self._started.discard(started)
        if topic.table == OB10_TABLE:
            for symbol in [symbol for symbol in self._derived if not self._wants_top10(symbol)]:
                del self._derived[symbol]

    async def run(self) -> None:
        passes = 0
        while True:
            await self._one_pass()
            passes += 1
            if not self.loop:
                break
            self._started.clear()
            self._derived.clear()
        self.done = True
        self._log.info("replay_finished", client=self.client.number, passes=passes)

    async def _one_pass(self) -> None:
        frames, client = self.recording.frames, self.client
        loop = asyncio.get_running_loop()
        start = loop.time()
        origin = frames[0].time if frames else 0.0
        for index, frame in enumerate(frames):
            self.cursor = index
            delay = start + (frame.time - origin) / self.speed - loop.time() if self.paced else 0.0
            if delay > 0:
                await asyncio.sleep(delay)
            elif index % YIELD_EVERY == 0:
                await asyncio.sleep(0)
            if client.queued_bytes > HIGH_WATER_BYTES:
                await client.drained()
            if self._wants(frame):
                if frame.action == "partial":
                    client.send_partial(frame.text)
                else:
                    client.send_data(frame.text)
            symbol = frame.topic.symbol
            if symbol is not None and self._wants_top10(symbol) and \
                    self.recording.top10_source(symbol) == frame.topic.table:
                self._derive(symbol, frame)
        self.cursor = len(frames)

    def _wants_top10(self, symbol: str) -> bool:
        topics = self.client.session.topics
        return Topic(OB10_TABLE, symbol) in topics or Topic(OB10_TABLE) in topics

    def _derive(self, symbol: str, frame: RecordedFrame) -> None:
        """Feed one L2 frame to the symbol's derived book and send its orderBook10 if the top changed."""
        data = orjson.loads(frame.text).get("data")
        rows: list[Any] = data if type(data) is list else []
        # Stamped now, as the venue stamps a change it makes: recorded times would run backwards on a loop
        # (and a top-10 cache keeps the newest exchange time), and would make every lag years long.
        timestamp = messages.iso_timestamp(time.time())
        derived = self._derived.get(symbol)
        if frame.action == "partial":
            self._start_derived(symbol, rows, timestamp)
            derived = self._derived[symbol]
        elif derived is None:
            return
        else:
            derived.apply(frame.action, rows)
            update = derived.frame(timestamp)
            if update is not None:
                self.client.send_data(update)
        if derived.skipped:
            self._log.warning("derived_top10_rows_skipped", client=self.client.number, symbol=symbol,
                              rows=derived.skipped)
            derived.skipped = 0

    def _wants(self, frame: RecordedFrame) -> bool:
        topics = self.client.session.topics
        if frame.topic not in topics and frame.table_topic not in topics:
            return False
        if frame.topic.table not in BOOK_TABLES:
            return True
        if frame.action == "partial":
            self._started.add(frame.topic)
            return True
        return frame.topic in self._started


class ReplayFeed:
    """Serves a recording: one `Playback` per client, started by its first subscription."""

    def __init__(self, recording: Recording, speed: float, paced: bool, loop: bool, log: EventLog) -> None:
        self.recording = recording
        self.speed = speed
        self.paced = paced
        self.loop = loop
        self.venue = Venue(recording.tables | frozenset(BOOK_TABLES), recording.symbols)
        self._log = log
        self._playbacks: dict[Client, tuple[Playback, asyncio.Task[None]]] = {}

    def welcome(self) -> bytes:
        """The recorded welcome, so a client sees the venue of that day; a current one if none was kept."""
        if self.recording.welcome is not None:
            return self.recording.welcome
        return messages.welcome(messages.iso_timestamp(time.time()), REMAINING_CONNECTIONS)

    def subscribe(self, client: Client, topic: Topic) -> None:
        entry = self._playbacks.get(client)
        if entry is None:
            # Started on the next loop turn: the other topics of the same request are registered by then.
            playback = Playback(self.recording, client, self.speed, self.paced, self.loop, self._log)
            self._playbacks[client] = (playback, asyncio.create_task(playback.run()))
        else:
            entry[0].catch_up(topic)

    def unsubscribe(self, client: Client, topic: Topic) -> None:
        entry = self._playbacks.get(client)
        if entry is not None:
            entry[0].forget(topic)

    def disconnect(self, client: Client) -> None:
        entry = self._playbacks.pop(client, None)
        if entry is not None:
            entry[1].cancel()

    @property
    def finished(self) -> bool:
        """Every client's pass is over (never true when looping)."""
        return not self.loop and all(playback.done for playback, _ in self._playbacks.values())

    async def run(self, stop: asyncio.Event) -> None:
        await stop.wait()
        for _, task in self._playbacks.values():
            task.cancel()

    def rest_book(self, symbol: str, depth: int | None) -> bytes | None:
        """The orderBookL2 book at the end of the recording; None when it has no orderBookL2 at all."""
        if L2_TABLE not in self.recording.tables:
            return None
        return final_rest_rows(self.recording, symbol, depth)

    def status(self) -> dict[str, Any]:
        return {"mode": "replay", "frames": len(self.recording.frames), "clients": len(self._playbacks),
                "playing": sum(not playback.done for playback, _ in self._playbacks.values()),
                "finished": self.finished}

