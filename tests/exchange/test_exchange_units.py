"""The exchange's pure core: the seeded market, the protocol session, the message shapes and fault plans."""

from __future__ import annotations

from collections import Counter

import orjson
import pytest

from services.exchange import messages
from services.exchange.faults import DROP, INJECTED_ERROR, ConnectionFaults, FaultPlan, RejectGate, Stall
from services.exchange.market import BUY, SELL, Change, Market, make_instrument, symbol_names
from services.exchange.protocol import Reply, Session, Subscribed, Topic, Unsubscribed, Venue


def market(seed: int, historical: bool = False, symbols: int = 3, depth: int = 80) -> Market:
    instruments = [make_instrument(name, position, seed) for position, name in enumerate(symbol_names(symbols))]
    return Market(instruments, depth, seed, historical, "2026-01-01T00:00:00.000Z")


def changes(source: Market, count: int) -> list[Change]:
    return [source.step("2026-01-01T00:00:01.000Z") for _ in range(count)]


def snapshot(source: Market) -> dict[str, dict[tuple[str, int], tuple[int, int]]]:
    return {symbol: {(side, level.id): (ticks, level.size) for side, ticks, level in book.levels_by_price()}
            for symbol, book in source.books.items()}


def test_the_same_seed_gives_the_same_changes_and_another_seed_does_not() -> None:
    assert changes(market(5), 3000) == changes(market(5), 3000)
    assert changes(market(5), 300) != changes(market(6), 300)
    assert changes(market(5, historical=True), 3000) == changes(market(5, historical=True), 3000)


def test_changes_describe_exactly_how_the_books_moved() -> None:
    source = market(8, depth=60)
    books = snapshot(source)
    seen_ids = {ident for book in books.values() for (_, ident) in book}
    counts: Counter[int] = Counter()
    for change in changes(source, 20_000):
        book = books[change.symbol]
        assert 1 <= len(change.rows) <= 20
        counts[len(change.rows)] += 1
        assert len({(side, ident) for side, _, ident, _ in change.rows}) == len(change.rows)
        for side, ticks, ident, size in change.rows:
            if change.action == "insert":
                assert (side, ident) not in book and ident not in seen_ids, "ids are never reused"
                seen_ids.add(ident)
                book[(side, ident)] = (ticks, size)
            elif change.action == "update":
                assert book[(side, ident)][0] == ticks and book[(side, ident)][1] != size
                book[(side, ident)] = (ticks, size)
            else:
                assert book.pop((side, ident))[0] == ticks
        bids = [ticks for (side, _), (ticks, _) in book.items() if side == BUY]
        asks = [ticks for (side, _), (ticks, _) in book.items() if side == SELL]
        assert max(bids) < min(asks), "never crossed, never locked"
        assert len(bids) + len(asks) == len(set(bids) | set(asks)), "one level per price"
    assert books == snapshot(source)
    assert counts[1] > 0.7 * sum(counts.values()) and counts[20] > 0, "mostly single rows, some sweeps"
    for symbol_book in source.books.values():
        assert 30 <= len(symbol_book.bids) <= 90 and 30 <= len(symbol_book.asks) <= 90, "depth near 60 a side"


def test_historical_ids_follow_the_old_rule() -> None:
    source = market(4, historical=True)
    changes(source, 2000)
    for book in source.books.values():
        for _, ticks, level in book.levels_by_price():
            assert level.id == 100_000_000 * book.instrument.index - ticks


def test_prices_are_written_as_bitmex_does() -> None:
    xbt = make_instrument("XBTUSD", 0, 1)
    assert (xbt.tick_size, xbt.index) == (0.5, 88)
    assert xbt.price(120_001) == 60000.5 and isinstance(xbt.price(120_000), int)
    eth = make_instrument("ETHUSD", 1, 1)
    assert eth.price(60_001) == 3000.05
    generated = make_instrument("SIM0007USDT", 20, 9)
    assert generated == make_instrument("SIM0007USDT", 20, 9), "a name always gets the same parameters"
    assert repr(generated.price(123_457)).count(".") <= 1 and len(repr(generated.price(123_457))) < 20
    assert symbol_names(3) == ["XBTUSD", "ETHUSD", "XBTUSDT"]
    assert len(set(symbol_names(200))) == 200


def test_orderbook_l2_25_deltas_turn_one_top_into_the_next() -> None:
    source = market(2, symbols=1, depth=40)
    book = source.book("XBTUSD")
    held = messages.top_rows(book, 25)
    for change in changes(source, 500):
        now = messages.top_rows(book, 25)
        for frame in messages.top_rows_deltas(book.instrument, held, now, "t", historical=False):
            message = orjson.loads(frame)
            for row in message["data"]:
                key = (row["side"], row["id"])
                if message["action"] == "delete":
                    del held[key]
                else:
                    held[key] = (held[key][0] if key in held else round(row["price"] / 0.5), row["size"])
        assert held == now, change


def venue() -> Venue:
    return Venue(frozenset(messages.BOOK_TABLES), frozenset({"XBTUSD", "ETHUSD"}))


def test_session_acks_each_topic_then_asks_for_its_partial() -> None:
    session = Session(venue())
    request = {"op": "subscribe", "args": ["orderBookL2:XBTUSD", "orderBook10"]}
    events = session.receive(orjson.dumps(request))
    assert events == [Reply(messages.subscription_ack("subscribe", "orderBookL2:XBTUSD", request)),
                      Subscribed(Topic("orderBookL2", "XBTUSD")),
                      Reply(messages.subscription_ack("subscribe", "orderBook10", request)),
                      Subscribed(Topic("orderBook10"))]
    assert session.topics == {Topic("orderBookL2", "XBTUSD"), Topic("orderBook10")}
    unsubscribe = {"op": "unsubscribe", "args": "orderBook10"}
    assert session.receive(orjson.dumps(unsubscribe)) == [
        Reply(messages.subscription_ack("unsubscribe", "orderBook10", unsubscribe)),
        Unsubscribed(Topic("orderBook10"))]
    assert session.receive(orjson.dumps(unsubscribe))[1:] == [], "acknowledged even when not subscribed"
    assert session.receive('{"op":"subscribe","args":[]}') == []
    assert session.receive("ping") == [Reply(b"pong")]


def test_session_query_string_and_errors() -> None:
    session = Session(venue())
    events = session.subscribe_query("orderBookL2:ETHUSD,orderBookL2:ETHUSD,quote:ETHUSD")
    ack, subscribed, duplicate, unknown = events
    assert isinstance(ack, Reply)
    assert orjson.loads(ack.text) == {"success": True, "subscribe": "orderBookL2:ETHUSD", "request": {
        "op": "subscribe", "args": ["orderBookL2:ETHUSD", "orderBookL2:ETHUSD", "quote:ETHUSD"]}}
    assert subscribed == Subscribed(Topic("orderBookL2", "ETHUSD"))
    assert isinstance(duplicate, Reply) and b"already subscribed" in duplicate.text
    assert isinstance(unknown, Reply) and b"Unknown table: quote" in unknown.text
    (reply,) = session.receive('{"op":"subscribe","args":[1,2]}')
    assert isinstance(reply, Reply) and orjson.loads(reply.text)["status"] == 400


@pytest.mark.parametrize("plan, expected", [
    (FaultPlan(drop_after=3), {3: [DROP]}),
    (FaultPlan(error_after=2, stall_after=2, stall_for=1.5), {2: [INJECTED_ERROR, Stall(1.5)]}),
    (FaultPlan(malformed_every=2), {2: ["malformed"], 4: ["malformed"]}),
])
def test_frame_count_faults_fire_after_their_frame(plan: FaultPlan, expected: dict[int, list[object]]) -> None:
    faults = ConnectionFaults(plan)
    fired = {}
    for count in range(1, 5):
        injected = faults.after_data_frame()
        if injected:
            fired[count] = ["malformed" if isinstance(item, bytes) and item != INJECTED_ERROR else item
                            for item in injected]
    assert fired == expected


def test_reject_gate_counts_down_and_can_be_rearmed() -> None:
    gate = RejectGate(2, retry_after=3)
    assert [gate.take() for _ in range(3)] == [True, True, False]
    gate.arm(1, retry_after=5)
    assert (gate.take(), gate.take(), gate.retry_after) == (True, False, 5)
