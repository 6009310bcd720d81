"""The per-symbol state machine, fed entries by hand: ordering, duplicates, holes, stale and live."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.core.book import L2Book
from services.core.entries import EntryError, StreamEntry, decode_entry, encode_entry, encode_gap
from services.l2builder.symbol_state import MAX_UNSURE_WRITES, Outcome, StaleKind, Status, SymbolState

SYMBOL = "XBTUSD"
INTERVAL = 5.0


def frame(action: str, rows: list[dict[str, Any]], table: str = "orderBookL2", **extra: Any) -> str:
    return orjson.dumps({"table": table, "action": action, "data": rows, **extra}).decode()


def row(ident: int, side: str, size: int | None = None, price: float | None = None,
        symbol: str = SYMBOL) -> dict[str, Any]:
    found: dict[str, Any] = {"symbol": symbol, "id": ident, "side": side}
    if size is not None:
        found["size"] = size
    if price is not None:
        found["price"] = price
    return found


PARTIAL = frame("partial", [row(1, "Sell", 10, 101.0), row(2, "Buy", 20, 100.0), row(3, "Buy", 5, 99.5)])


def entry(number: int, action: str, text: str = "", session: str = "s1", seq: int | None = None,
          reason: str = "") -> StreamEntry:
    return StreamEntry(f"1000-{number}", text, "orderBookL2", action, session,
                       number if seq is None else seq, 1_700_000_000_000_000 + number, reason)


def live_state() -> SymbolState:
    state = SymbolState(SYMBOL, INTERVAL)
    assert state.feed(entry(1, "partial", PARTIAL), now=0) is Outcome.LIVE
    return state


def levels(state: SymbolState) -> tuple[list[Any], list[Any]]:
    document = state.book.to_document()
    return document["bids"], document["asks"]


def test_partial_then_deltas_build_the_book_and_track_the_position() -> None:
    state = live_state()
    assert state.feed(entry(2, "insert", frame("insert", [row(4, "Sell", 7, 102.0)])), now=0) is Outcome.APPLIED
    assert state.feed(entry(3, "update", frame("update", [row(2, "Buy", 25)])), now=0) is Outcome.APPLIED
    assert state.feed(entry(4, "delete", frame("delete", [row(3, "Buy")])), now=0) is Outcome.APPLIED
    assert levels(state) == ([[100.0, 25, 2]], [[101.0, 10, 1], [102.0, 7, 4]])
    assert (state.status, state.stream_id, state.session, state.seq) == (Status.LIVE, "1000-4", "s1", 4)
    assert (state.frames_applied, state.rows_applied) == (4, 6)
    assert state.pending_ids == ["1000-1", "1000-2", "1000-3", "1000-4"] and state.dirty


def test_deltas_before_the_first_partial_are_dropped_and_not_counted() -> None:
    state = SymbolState(SYMBOL, INTERVAL)
    assert state.feed(entry(1, "insert", frame("insert", [row(4, "Sell", 7, 102.0)])), now=0) is Outcome.APPLIED
    assert state.status is Status.STALE and state.stale_kind is StaleKind.NO_PARTIAL
    assert (state.frames_applied, state.stream_id) == (0, "1000-1")
    assert state.feed(entry(2, "partial", PARTIAL), now=0) is Outcome.LIVE
    assert state.frames_applied == 1 and state.reason is None


def test_an_entry_seen_again_is_ignored_but_acknowledged() -> None:
    state = live_state()
    state.feed(entry(2, "delete", frame("delete", [row(3, "Buy")])), now=0)
    before = levels(state)
    assert state.feed(entry(2, "delete", frame("delete", [row(3, "Buy")])), now=0) is Outcome.DUPLICATE
    assert state.feed(entry(1, "partial", PARTIAL), now=0) is Outcome.DUPLICATE
    assert levels(state) == before and state.live and state.stream_id == "1000-2"
    assert state.pending_ids == ["1000-1", "1000-2", "1000-2", "1000-1"]


def test_a_repeated_seq_under_a_new_id_is_ignored_and_consumed() -> None:
    state = live_state()
    state.feed(entry(2, "delete", frame("delete", [row(3, "Buy")])), now=0)
    replay = entry(3, "delete", frame("delete", [row(3, "Buy")]), seq=2)  # ingest retried an XADD
    assert state.feed(replay, now=0) is Outcome.DUPLICATE
    assert state.live and state.stream_id == "1000-3" and state.seq == 2 and state.frames_applied == 2


def test_a_hole_is_reported_first_and_makes_the_book_stale_only_after_a_refill() -> None:
    state = live_state()
    later = entry(5, "update", frame("update", [row(2, "Buy", 1)]), seq=3)
    assert state.feed(later, now=10) is Outcome.HOLE
    assert state.stream_id == "1000-1" and state.pending_ids == ["1000-1"] and state.live
    state.feed(entry(4, "update", frame("update", [row(2, "Buy", 2)]), seq=2), now=10, refilled=True)
    assert state.feed(later, now=10, refilled=True) is Outcome.APPLIED
    assert levels(state)[0][0] == [100.0, 1, 2]
    gap_after = entry(9, "update", frame("update", [row(2, "Buy", 3)]), seq=7)
    assert state.feed(gap_after, now=10, refilled=True) is Outcome.STALE
    assert state.stale_kind is StaleKind.HOLE and "seq 4..6" in (state.reason or "")
    assert levels(state) == ([], []) and state.resync_due(10) and state.stream_id == "1000-9"


def test_a_partial_after_a_hole_needs_no_refill() -> None:
    state = live_state()
    assert state.feed(entry(7, "partial", PARTIAL, seq=7), now=0) is Outcome.APPLIED
    assert state.live and state.seq == 7


def test_a_gap_marker_makes_the_book_stale_until_the_next_partial_and_asks_after_a_grace() -> None:
    state = live_state()
    assert state.feed(entry(2, "gap", reason="disconnect"), now=100) is Outcome.STALE
    assert (state.stale_kind, state.reason) == (StaleKind.GAP, "gap: disconnect")
    assert not state.resync_due(100) and state.resync_due(100 + INTERVAL)
    assert state.feed(entry(3, "insert", frame("insert", [row(9, "Sell", 1, 150.0)]), session="s2", seq=1),
                      now=101) is Outcome.APPLIED
    assert levels(state) == ([], []) and not state.live
    assert state.feed(entry(4, "partial", PARTIAL, session="s2", seq=2), now=102) is Outcome.LIVE
    assert state.live and state.reason is None and not state.resync_due(1000)


def test_a_new_session_without_a_partial_makes_the_book_stale() -> None:
    state = live_state()
    outcome = state.feed(entry(2, "update", frame("update", [row(2, "Buy", 1)]), session="s2", seq=1), now=0)
    assert outcome is Outcome.STALE and state.stale_kind is StaleKind.SESSION
    assert not state.resync_due(0) and state.session == "s2"


def test_a_new_session_starting_with_its_partial_stays_live() -> None:
    state = live_state()
    assert state.feed(entry(2, "partial", PARTIAL, session="s2", seq=1), now=0) is Outcome.APPLIED
    assert state.live and state.session == "s2"


def test_a_lost_session_keeps_its_last_levels_until_another_session_or_a_hole() -> None:
    state = live_state()
    state.take_flush()
    state.mark_stale(StaleKind.INGEST_LOST, "ingest_lost: session s1", now=50, keep_levels=True)
    assert state.status is Status.STALE and state.resync_due(50) and state.dirty
    kept = levels(state)
    assert kept == ([[100.0, 20, 2], [99.5, 5, 3]], [[101.0, 10, 1]])
    # The next seq of the same session still follows the kept levels exactly, but does not make them live.
    assert state.feed(entry(2, "update", frame("update", [row(2, "Buy", 21)])), now=51) is Outcome.APPLIED
    assert levels(state)[0][0] == [100.0, 21, 2] and not state.live
    # A delta of another session (or past a hole) cannot follow them: they are dropped.
    assert state.feed(entry(3, "update", frame("update", [row(2, "Buy", 22)]), session="s2", seq=1),
                      now=52) is Outcome.APPLIED
    assert levels(state) == ([], []) and not state.live
    assert state.feed(entry(4, "partial", PARTIAL, session="s2", seq=2), now=53) is Outcome.LIVE


def test_a_kept_book_is_dropped_at_a_seq_jump_of_its_own_session() -> None:
    state = live_state()
    state.mark_stale(StaleKind.REDIS_LOST, "redis_lost: the stream vanished", now=0, keep_levels=True)
    assert state.feed(entry(5, "update", frame("update", [row(2, "Buy", 1)]), seq=5), now=1) is Outcome.APPLIED
    assert levels(state) == ([], []) and state.stale_kind is StaleKind.REDIS_LOST


def test_malformed_frames_make_the_book_stale_and_ask_for_a_partial_at_once() -> None:
    cases = {
        "bad json": "{not json",
        "wrong table": frame("partial", [], table="orderBook10"),
        "other symbol": frame("insert", [row(9, "Sell", 1, 150.0, symbol="ETHUSD")]),
        "bad row": frame("update", [row(2, "Buy", -5)]),
    }
    for name, text in cases.items():
        state = live_state()
        assert state.feed(entry(2, "update", text), now=7) is Outcome.STALE, name
        assert state.stale_kind is StaleKind.MALFORMED and state.resync_due(7), name
        assert levels(state) == ([], []) and state.stream_id == "1000-2", name
        assert state.feed(entry(3, "partial", PARTIAL), now=8) is Outcome.LIVE, name


def test_a_book_inconsistency_makes_the_book_stale() -> None:
    state = live_state()
    assert state.feed(entry(2, "delete", frame("delete", [row(42, "Buy")])), now=0) is Outcome.STALE
    assert state.stale_kind is StaleKind.INCONSISTENT and "unknown id" in (state.reason or "")
    assert state.feed(entry(3, "update", frame("update", [row(2, "Buy", 1)])), now=0) is Outcome.APPLIED
    assert not state.live


def test_an_undecodable_entry_is_consumed_and_makes_the_book_stale() -> None:
    state = live_state()
    assert state.feed_malformed("1000-2", "no 'seq' field", now=3) is Outcome.STALE
    assert state.stream_id == "1000-2" and state.stale_kind is StaleKind.MALFORMED and state.resync_due(3)
    assert state.feed_malformed("1000-2", "again", now=3) is Outcome.DUPLICATE


def test_an_entry_whose_session_cannot_be_an_ingest_session_is_malformed() -> None:
    state = live_state()
    hostile = encode_entry(PARTIAL, "orderBookL2", "partial", "evil\x1b[31m*", 1, 1_700_000_000_000_002)
    fields = [part.encode() for pair in hostile.items() for part in pair]
    assert state.feed_raw(b"1000-2", fields, now=3) is Outcome.STALE
    assert state.stale_kind is StaleKind.MALFORMED and state.session == "s1", "the session never reaches the book"
    assert state.reason is not None and "invalid session" in state.reason and "\x1b" not in state.reason


def test_retained_history_is_checked_by_seq() -> None:
    def check(first: StreamEntry | None, first_id: str | None = None, deleted: str = "0-0",
              state: SymbolState | None = None) -> bool:
        state = state or live_state()
        return state.check_retained(first_id or (first.stream_id if first else None), first, deleted, now=0)

    assert check(entry(1, "partial", PARTIAL))  # our own entry is still there
    assert check(entry(2, "update", seq=2))  # the next one
    assert check(entry(5, "update", session="s2", seq=1))  # a new session from its start
    assert not check(entry(5, "update", seq=4))
    assert not check(entry(5, "update", session="s2", seq=3))
    assert not check(None, first_id="1000-5")  # undecodable oldest entry
    assert not check(entry(2, "update", seq=2), deleted="1000-3")  # XDEL after our position
    assert check(entry(2, "update", seq=2), deleted="999-9")
    trimmed = live_state()
    check(entry(5, "update", seq=4), state=trimmed)
    assert trimmed.stale_kind is StaleKind.TRIMMED and trimmed.resync_due(0) and not trimmed.live
    fresh = SymbolState(SYMBOL, INTERVAL)
    assert fresh.check_retained("1000-1", entry(1, "partial", PARTIAL, seq=1), "0-0", now=0)
    assert not fresh.check_retained("1000-7", entry(7, "update", seq=7), "0-0", now=0)


def test_a_stream_that_ends_before_the_position_lost_the_book() -> None:
    state = live_state()
    assert state.check_stream_end("1000-1", now=0) and state.check_stream_end("2000-0", now=0) and state.live
    assert not state.check_stream_end("0-0", now=0)  # recreated empty after FLUSHALL
    assert state.stale_kind is StaleKind.REDIS_LOST and (state.reason or "").startswith("redis_lost: the stream")
    assert levels(state) == ([], []) and state.resync_due(0)


def test_every_stale_reason_starts_with_its_kind() -> None:
    def fed(*entries: StreamEntry, refilled: bool = False) -> SymbolState:
        state = live_state()
        for item in entries:
            state.feed(item, now=0, refilled=refilled)
        return state

    trimmed = live_state()
    trimmed.check_retained("1000-5", entry(5, "update", seq=4), "0-0", now=0)
    ended = live_state()
    ended.check_stream_end("0-0", now=0)
    undecodable = live_state()
    undecodable.feed_malformed("1000-2", "no 'seq' field", now=0)
    states = [SymbolState(SYMBOL, INTERVAL), fed(entry(2, "gap", reason="disconnect")),
              fed(entry(9, "update", frame("update", [row(2, "Buy", 3)]), seq=7), refilled=True),
              fed(entry(2, "update", frame("update", [row(2, "Buy", 1)]), session="s2", seq=1)),
              fed(entry(2, "update", "{not json")), fed(entry(2, "delete", frame("delete", [row(42, "Buy")]))),
              trimmed, ended, undecodable]
    assert [state.stale_kind for state in states] == [
        StaleKind.NO_PARTIAL, StaleKind.GAP, StaleKind.HOLE, StaleKind.SESSION, StaleKind.MALFORMED,
        StaleKind.INCONSISTENT, StaleKind.TRIMMED, StaleKind.REDIS_LOST, StaleKind.MALFORMED]
    for state in states:
        assert state.reason is not None and state.reason.split(":")[0] == state.stale_kind, state.reason


def test_a_flush_ticket_hands_out_the_ids_and_takes_them_back_on_failure() -> None:
    state = live_state()
    ticket = state.take_flush()
    assert ticket is not None and ticket.write and ticket.ids == ["1000-1"]
    assert state.take_flush() is None
    state.feed(entry(2, "update", frame("update", [row(2, "Buy", 1)])), now=0)
    state.flush_failed(ticket)
    assert state.pending_ids == ["1000-1", "1000-2"] and state.dirty
    retry = state.take_flush()
    assert retry is not None and retry.ids == ["1000-1", "1000-2"]


def test_a_flush_builds_on_the_last_acknowledged_write_of_the_same_book() -> None:
    state = live_state()
    first = state.take_flush()
    assert first is not None and first.base is None and first.book is state.book  # nothing stored to build on
    state.flush_written(first, "v1", ([], []))
    state.feed(entry(2, "update", frame("update", [row(2, "Buy", 1)])), now=0)
    delta = state.take_flush()
    assert delta is not None and delta.base is state.written and delta.changed == {2}
    # Outcome unknown (a lost acknowledgement): the next write re-sends id 2 and may build on either version.
    state.flush_failed(delta, "v2")
    assert state.written is not None and (state.written.versions, state.written.top) == (["v1", "v2"], None)
    state.feed(entry(3, "delete", frame("delete", [row(3, "Buy")])), now=0)
    retry = state.take_flush()
    assert retry is not None and retry.base is state.written and retry.changed == {2, 3}
    state.flush_written(retry, "v3", ([], []))
    assert state.written.versions == ["v3"] and not state.unsure_ids
    # A stale mark keeps the written book (its last levels): still a delta; a partial replaces every level.
    state.feed(entry(4, "gap", reason="disconnect"), now=0)
    stale = state.take_flush()
    assert stale is not None and stale.base is state.written and stale.book is state.last_book
    state.flush_written(stale, "v4", ([], []))
    state.feed(entry(5, "partial", PARTIAL), now=0)
    after_partial = state.take_flush()
    assert after_partial is not None and after_partial.base is None


def test_a_write_of_unknown_outcome_that_was_whole_or_lost_its_base_is_followed_by_a_whole_one() -> None:
    state = live_state()
    whole = state.take_flush()
    assert whole is not None
    state.flush_failed(whole, "v1")
    again = state.take_flush()
    assert again is not None and again.base is None
    state.flush_written(again, "v1", ([], []))
    state.feed(entry(2, "update", frame("update", [row(2, "Buy", 1)])), now=0)
    delta = state.take_flush()
    assert delta is not None and delta.base is not None
    state.flush_failed(delta, "v2", lost=True)  # the stored document is not one a delta can build on
    rewrite = state.take_flush()
    assert rewrite is not None and rewrite.base is None and rewrite.ids == ["1000-2"]
    state.flush_written(rewrite, "v2", ([], []))
    for number in range(3, 3 + MAX_UNSURE_WRITES + 1):
        state.feed(entry(number, "update", frame("update", [row(2, "Buy", number)])), now=0)
        ticket = state.take_flush()
        assert ticket is not None and ticket.base is not None, number
        state.flush_failed(ticket, f"v{number}")
    ticket = state.take_flush()
    assert ticket is not None and ticket.base is None  # too many versions it could hold: write it whole


def test_resync_requests_repeat_only_after_the_interval() -> None:
    state = live_state()
    state.feed(entry(2, "delete", frame("delete", [row(42, "Buy")])), now=50)
    assert state.resync_due(50)
    state.resync_requested(50)
    assert not state.resync_due(50 + INTERVAL - 0.1) and state.resync_due(50 + INTERVAL)


def test_restored_states() -> None:
    book = live_state().book
    live = SymbolState.restored(SYMBOL, INTERVAL, 0, book=book, stream_id="1000-9", session="s1", seq=9,
                                received_us=5, stale_kind=None, reason=None)
    assert live.live and live.position == (1000, 9) and not live.dirty
    assert live.feed(entry(10, "delete", frame("delete", [row(3, "Buy")]), seq=10), now=0) is Outcome.APPLIED
    stale = SymbolState.restored(SYMBOL, INTERVAL, 0, book=None, stream_id="1000-9", session="s1", seq=9,
                                 received_us=5, stale_kind=StaleKind.RESTORED, reason="gap: disconnect")
    assert not stale.live and stale.reason == "gap: disconnect" and not stale.resync_due(0)
    assert stale.feed(entry(10, "partial", PARTIAL, seq=10), now=0) is Outcome.LIVE


@st.composite
def clean_streams(draw: st.DrawFn) -> list[StreamEntry]:
    """A consistent stream: a partial, then inserts, updates and deletes that a model book accepts."""
    model: dict[int, tuple[str, float]] = {1: ("Sell", 101.0), 2: ("Buy", 100.0), 3: ("Buy", 99.5)}
    entries = [entry(1, "partial", PARTIAL)]
    next_id = 10
    for _ in range(draw(st.integers(1, 40))):
        choice = draw(st.sampled_from(["insert", "update", "delete"] if model else ["insert"]))
        if choice == "insert":
            side = draw(st.sampled_from(["Buy", "Sell"]))
            offset = draw(st.integers(1, 50)) / 2
            price = 99.0 - offset if side == "Buy" else 102.0 + offset
            if any(known == price for _, known in model.values()):
                continue
            model[next_id] = (side, price)
            text = frame("insert", [row(next_id, side, draw(st.integers(1, 9)), price)])
            next_id += 1
        else:
            ident = draw(st.sampled_from(sorted(model)))
            side = model[ident][0]
            if choice == "update":
                text = frame("update", [row(ident, side, draw(st.integers(1, 9)))])
            else:
                del model[ident]
                text = frame("delete", [row(ident, side)])
        entries.append(entry(len(entries) + 1, choice, text))
    return entries


@settings(max_examples=60, deadline=None)
@given(stream=clean_streams(), data=st.data())
def test_redelivered_entries_never_change_the_result(stream: list[StreamEntry], data: st.DataObject) -> None:
    """Feeding the stream with arbitrary replays of earlier entries gives exactly the clean result."""
    clean = SymbolState(SYMBOL, INTERVAL)
    for item in stream:
        clean.feed(item, now=0)
    noisy = SymbolState(SYMBOL, INTERVAL)
    for index, item in enumerate(stream):
        replay_from = data.draw(st.integers(0, index))
        for earlier in stream[replay_from:index] if data.draw(st.booleans()) else []:
            assert noisy.feed(earlier, now=0) is Outcome.DUPLICATE
        noisy.feed(item, now=0)
    assert noisy.live and clean.live
    assert levels(noisy) == levels(clean)
    assert (noisy.frames_applied, noisy.rows_applied) == (clean.frames_applied, clean.rows_applied)
    restored = SymbolState.restored(SYMBOL, INTERVAL, 0, book=L2Book.from_document(SYMBOL, clean.book.to_document()),
                                    stream_id=clean.stream_id, session=clean.session, seq=clean.seq,
                                    received_us=None, stale_kind=None, reason=None)
    for item in stream:
        assert restored.feed(item, now=0) is Outcome.DUPLICATE
    assert levels(restored) == levels(clean)


def as_raw(item: StreamEntry) -> tuple[bytes, list[bytes]]:
    """The entry as Redis returns it to l2builder: id and the flat field list ingest wrote."""
    fields = (encode_gap(item.table, item.session, item.seq, item.recv_us, item.reason) if item.is_gap else
              encode_entry(item.frame, item.table, item.action, item.session, item.seq, item.recv_us))
    return item.stream_id.encode(), [part.encode() for pair in fields.items() for part in pair]


@settings(max_examples=60, deadline=None)
@given(stream=clean_streams(), data=st.data())
def test_raw_entries_feed_exactly_like_decoded_ones(stream: list[StreamEntry], data: st.DataObject) -> None:
    """`feed_raw`'s lean path for the next frame ends in the same state as `decode_entry` + `feed`, through
    replays, a gap, a new session, an undecodable entry and seqs out of order."""
    number = len(stream)

    def later(action: str, text: str = "", session: str = "s1", seq: int = 0, reason: str = "") -> StreamEntry:
        nonlocal number
        number += 1
        return entry(number, action, text, session, seq or number, reason)

    noisy: list[StreamEntry | tuple[bytes, list[bytes]]] = []
    for index, item in enumerate(stream):
        if data.draw(st.booleans()):
            noisy.extend(stream[data.draw(st.integers(0, index)):index])  # replays
        noisy.append(item)
    noisy += [later("gap", reason="disconnect"), later("update", frame("update", [row(2, "Buy", 7)])),
              later("partial", PARTIAL, session="s2", seq=1), later("update", frame("update", [row(2, "Buy", 8)]),
                                                                 session="s2", seq=2),
              (f"1000-{number + 1}".encode(), [b"frame", b"{}", b"seq", b"x"]),
              later("partial", PARTIAL, session="s3", seq=1), later("delete", frame("delete", [row(3, "Buy")]),
                                                                   session="s3", seq=5)]
    decoded, raw = SymbolState(SYMBOL, INTERVAL), SymbolState(SYMBOL, INTERVAL)
    for fed in noisy:
        if isinstance(fed, StreamEntry):
            expected = decoded.feed(fed, now=0, refilled=True)
            fed_id, fields = as_raw(fed)
        else:
            fed_id, fields = fed
            with pytest.raises(EntryError) as undecodable:
                decode_entry(fed_id, fields)
            expected = decoded.feed_malformed(fed_id.decode(), str(undecodable.value), now=0)
        assert raw.feed_raw(fed_id, fields, now=0, refilled=True) is expected
    for name in ("stream_id", "session", "seq", "received_us", "live", "stale_kind", "reason", "pending_ids",
                 "frames_applied", "rows_applied", "dirty"):
        assert getattr(raw, name) == getattr(decoded, name), name
    assert levels(raw) == levels(decoded) and raw.book.timestamp == decoded.book.timestamp
