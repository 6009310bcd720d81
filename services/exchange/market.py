"""The simulator's market: seeded synthetic L2 books that move like BitMEX's, held in the simulator's own state.

These books are the truth every client is compared against, so they share no code with the book engine
under test (`services.core.book`): prices are integer ticks in one `SortedDict` per side, which makes
"best", "top N" and "never crossed" exact, and a level's price never goes through a float until it is
written into a frame.

`Market.step()` is a pure function of the seed, the instruments and the depth: the sequence of changes
never depends on time, on clients or on what they subscribed to (the caller passes the timestamp text in).
The flow imitates the real feed: most frames carry one row, a few carry up to 20; most activity is at the
top of the book; a fair price random-walks and the side it walks into is swept.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from itertools import accumulate
from typing import Final

from sortedcontainers import SortedDict

BUY: Final = "Buy"
SELL: Final = "Sell"

INSERT: Final = "insert"
UPDATE: Final = "update"
DELETE: Final = "delete"

MAX_ROWS_PER_FRAME: Final = 20
OLD_ID_BASE: Final = 100_000_000
"""Pre-2023 rule: `id = OLD_ID_BASE * instrument index - price / tick size`; the historical format uses it."""

# Well-known contracts keep their real tick size, lot size and a plausible price level; any other name
# gets parameters drawn from a generator seeded with the name, so a symbol looks the same in every run.
KNOWN_INSTRUMENTS: Final[dict[str, tuple[float, int, float]]] = {
    "XBTUSD": (0.5, 100, 60_000.0),
    "ETHUSD": (0.05, 1, 3_000.0),
    "XBTUSDT": (0.5, 1_000, 60_000.0),
    "ETHUSDT": (0.01, 1_000, 3_000.0),
    "SOLUSDT": (0.01, 1_000, 150.0),
    "XRPUSDT": (0.0001, 1_000, 0.6),
    "DOGEUSDT": (0.00001, 1_000, 0.15),
    "LINKUSDT": (0.001, 1_000, 15.0),
    "ADAUSDT": (0.0001, 1_000, 0.45),
    "LTCUSD": (0.01, 1, 80.0),
    "BCHUSD": (0.05, 1, 400.0),
    "XBTEUR": (0.5, 100, 55_000.0),
}
GENERATED_NAME: Final = "SIM{:04d}USDT"

# Shape of the flow, measured on the 2021 captures: ~80% of frames carry one row and a few percent
# are sweeps of 11-20 rows; most touched levels are within a handful of ticks of the top.
SINGLE_ROW_SHARE: Final = 0.80
SWEEP_SHARE: Final = 0.04
TOP_RANK_MEAN: Final = 6.0
DEEP_TOUCH_SHARE: Final = 0.08
OTHER_SIDE_SHARE: Final = 0.1


@dataclass(frozen=True, slots=True)
class Instrument:
    """One contract: its tick and lot, its index under the old id rule, and where its price starts."""

    symbol: str
    tick_size: float
    lot_size: int
    index: int
    start_price: float
    decimals: int

    def price(self, ticks: int) -> float | int:
        """The price of `ticks` as BitMEX writes it: exact decimals, and an integer when it is whole."""
        price = round(ticks * self.tick_size, self.decimals)
        return int(price) if price.is_integer() else price

    def old_id(self, ticks: int) -> int:
        return OLD_ID_BASE * self.index - ticks


def symbol_names(count: int) -> list[str]:
    """`count` symbol names: the well-known contracts first, then generated ones."""
    names = list(KNOWN_INSTRUMENTS)[:count]
    names.extend(GENERATED_NAME.format(number) for number in range(1, count - len(names) + 1))
    return names


def make_instrument(symbol: str, position: int, seed: int) -> Instrument:
    """Parameters of `symbol`; `position` in the symbol list only sets its index under the old id rule."""
    if symbol in KNOWN_INSTRUMENTS:
        tick, lot, price = KNOWN_INSTRUMENTS[symbol]
    else:
        rng = random.Random(f"{seed}:{symbol}")
        price = 10 ** rng.uniform(-3.0, 4.5)
        tick = rng.choice((1.0, 5.0)) * 10.0 ** (math.floor(math.log10(price)) - 4)
        tick = float(f"{tick:.1g}")
        lot = rng.choice((1, 10, 100, 1_000))
    return Instrument(symbol, tick, lot, 88 if symbol == "XBTUSD" else 100 + position, price, _decimals(tick))


def _decimals(tick: float) -> int:
    """Digits after the point that write every multiple of `tick` exactly (0.05 -> 2, 5e-05 -> 5)."""
    exponent = Decimal(repr(tick)).normalize().as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


class Level:
    """One price level of a book: its row id, its size and the time it last changed."""

    __slots__ = ("id", "size", "timestamp")

    def __init__(self, ident: int, size: int, timestamp: str) -> None:
        self.id = ident
        self.size = size
        self.timestamp = timestamp


RowChange = tuple[str, int, int, int]
"""`(side, price ticks, id, size)` of one changed row; size is the new size (0 for a delete)."""


@dataclass(frozen=True, slots=True)
class Change:
    """One L2 frame's worth of change: one symbol, one action, 1 to 20 rows."""

    symbol: str
    action: str
    rows: list[RowChange]


class SymbolBook:
    """One instrument's book: price ticks -> Level for each side, best bid last, best ask first."""

    __slots__ = ("ask_prices", "asks", "bid_prices", "bids", "instrument")

    def __init__(self, instrument: Instrument) -> None:
        self.instrument = instrument
        self.bids: SortedDict = SortedDict()
        self.asks: SortedDict = SortedDict()
        # Live sorted views of the prices, kept because creating a view costs as much as indexing it.
        self.bid_prices = self.bids.keys()
        self.ask_prices = self.asks.keys()

    def side(self, side: str) -> SortedDict:
        return self.bids if side == BUY else self.asks

    def best_bid(self) -> int | None:
        return self.bid_prices[-1] if self.bids else None

    def best_ask(self) -> int | None:
        return self.ask_prices[0] if self.asks else None

    def top(self, side: str, n: int | None = None) -> list[tuple[int, Level]]:
        """Up to `n` levels of `side` as `(ticks, level)`, best first (all of them when n is None)."""
        if side == BUY:
            chosen = self.bid_prices[-n:] if n is not None else self.bid_prices[:]
            return [(ticks, self.bids[ticks]) for ticks in reversed(chosen)]
        chosen = self.ask_prices[:n] if n is not None else self.ask_prices[:]
        return [(ticks, self.asks[ticks]) for ticks in chosen]

    def levels_by_price(self, depth: int | None = None) -> Iterator[tuple[str, int, Level]]:
        """`(side, ticks, level)` in BitMEX's order: sells then buys, price descending; `depth` per side."""
        for ticks, level in reversed(self.top(SELL, depth)):
            yield SELL, ticks, level
        for ticks, level in self.top(BUY, depth):
            yield BUY, ticks, level

    def __len__(self) -> int:
        return len(self.bids) + len(self.asks)


class _Walk:
    """Per-symbol dynamics: the fair price the book follows, its volatility, and the next arbitrary id."""

    __slots__ = ("fair", "high", "low", "next_id", "sigma")

    def __init__(self, fair: float, sigma: float, low: float, high: float, next_id: int) -> None:
        self.fair, self.sigma, self.low, self.high, self.next_id = fair, sigma, low, high, next_id


class Market:
    """Seeded books for many symbols and the stream of changes that moves them.

    `historical` only changes the ids: under the pre-2023 rule an id is derived from the price (so a
    client must map id -> price), otherwise ids are arbitrary and never reused. The frame format itself
    is the encoder's business (`messages.py`).
    """

    def __init__(self, instruments: Sequence[Instrument], depth: int, seed: int, historical: bool,
                 timestamp: str) -> None:
        if not instruments:
            raise ValueError("a market needs at least one instrument")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.depth = depth
        self.historical = historical
        self.books: dict[str, SymbolBook] = {item.symbol: SymbolBook(item) for item in instruments}
        self._rng = random.Random(seed)
        self._order = [self.books[item.symbol] for item in instruments]
        # A few symbols carry most of the activity, as on the real venue (Zipf-like weights).
        self._cumulative = list(accumulate(1.0 / (rank + 1) ** 0.8 for rank in range(len(instruments))))
        self._walks: dict[str, _Walk] = {}
        self._min_levels = max(1, min(10, depth // 10))
        for book in self._order:
            self._walks[book.instrument.symbol] = self._seed_book(book, timestamp)

    def book(self, symbol: str) -> SymbolBook:
        return self.books[symbol]

    def step(self, timestamp: str) -> Change:
        """Apply the next change to one symbol's book and return it (never empty)."""
        rng = self._rng
        book = self._order[bisect.bisect(self._cumulative, rng.random() * self._cumulative[-1])]
        walk = self._walks[book.instrument.symbol]
        walk.fair = min(max(walk.fair + rng.gauss(0.0, walk.sigma), walk.low), walk.high)
        swept = self._sweep_stale(book, walk)
        if swept is not None:
            return Change(book.instrument.symbol, DELETE, swept)
        count = self._row_count()
        # Inserts and deletes balance around the target depth; updates are 40% of the flow.
        insert_share = min(max(0.3 + 1.5 * (1.0 - len(book) / (2 * self.depth)), 0.05), 0.55)
        roll = rng.random()
        rows: list[RowChange] = []
        if roll < insert_share:
            action = INSERT
            rows = self._insert(book, walk, count, timestamp)
        elif roll < 0.6:
            action = DELETE
            rows = self._delete(book, count)
        if not rows:
            action = UPDATE
            rows = self._update(book, count, timestamp)
        return Change(book.instrument.symbol, action, rows)

    def _seed_book(self, book: SymbolBook, timestamp: str) -> _Walk:
        rng, item = self._rng, book.instrument
        fair = item.start_price / item.tick_size
        # Keep prices positive and, under the old id rule, below OLD_ID_BASE ticks.
        low = max(fair / 4.0, 8.0 * self.depth)
        high = min(fair * 4.0, OLD_ID_BASE / 2.0)
        fair = min(max(fair, low), high)
        walk = _Walk(fair, rng.uniform(0.2, 0.8), low, high, rng.randrange(10**9, 10**10))
        for side, step in ((BUY, -1), (SELL, 1)):
            ticks = math.floor(fair) if side == BUY else math.floor(fair) + 1
            levels = book.side(side)
            for _ in range(self.depth):
                ticks += step * int(rng.expovariate(1.0 / 0.6))
                levels[ticks] = Level(self._new_id(item, walk, ticks), self._size(item), timestamp)
                ticks += step
        return walk

    def _row_count(self) -> int:
        roll = self._rng.random()
        if roll < SINGLE_ROW_SHARE:
            return 1
        if roll < 1.0 - SWEEP_SHARE:
            return min(2 + int(self._rng.expovariate(1.0 / 1.5)), 10)
        return self._rng.randint(11, MAX_ROWS_PER_FRAME)

    def _sweep_stale(self, book: SymbolBook, walk: _Walk) -> list[RowChange] | None:
        """When the fair price has walked through one side's best levels, a sweep deletes them."""
        best_ask, best_bid = book.best_ask(), book.best_bid()
        if best_ask is not None and best_ask < walk.fair - 1.0 and len(book.asks) > self._min_levels:
            side, levels = SELL, book.asks
            stale = [ticks for ticks in book.ask_prices[:MAX_ROWS_PER_FRAME] if ticks < walk.fair]
        elif best_bid is not None and best_bid > walk.fair + 1.0 and len(book.bids) > self._min_levels:
            side, levels = BUY, book.bids
            stale = [ticks for ticks in reversed(book.bid_prices[-MAX_ROWS_PER_FRAME:]) if ticks > walk.fair]
        else:
            return None
        stale = stale[:len(levels) - self._min_levels]
        return [(side, ticks, levels.pop(ticks).id, 0) for ticks in stale]

    def _pick_side(self, main: str) -> str:
        if self._rng.random() < OTHER_SIDE_SHARE:
            return SELL if main == BUY else BUY
        return main

    def _rank(self, size: int) -> int:
        """A level rank from the top: mostly near it, sometimes anywhere in the book."""
        rng = self._rng
        if rng.random() < DEEP_TOUCH_SHARE:
            return rng.randrange(size)
        return min(int(rng.expovariate(1.0 / TOP_RANK_MEAN)), size - 1)

    def _insert(self, book: SymbolBook, walk: _Walk, count: int, timestamp: str) -> list[RowChange]:
        rng, item = self._rng, book.instrument
        main = rng.choice((BUY, SELL))
        rows: list[RowChange] = []
        for _ in range(count):
            side = self._pick_side(main)
            levels = book.side(side)
            if side == BUY:
                anchor, direction = math.ceil(walk.fair) - 1, -1
                best_ask = book.best_ask()
                limit = best_ask - 1 if best_ask is not None else anchor
            else:
                anchor, direction = math.floor(walk.fair) + 1, 1
                best_bid = book.best_bid()
                limit = best_bid + 1 if best_bid is not None else anchor
            for _attempt in range(4):
                distance = int(rng.expovariate(1.0 / 4.0))
                if rng.random() < DEEP_TOUCH_SHARE:
                    distance = rng.randrange(2 * self.depth)
                ticks = anchor + direction * distance
                # Never cross: a new bid stays below the best ask and a new ask above the best bid.
                if ticks <= 0 or (ticks - limit) * direction < 0 or ticks in levels:
                    continue
                level = Level(self._new_id(item, walk, ticks), self._size(item), timestamp)
                levels[ticks] = level
                rows.append((side, ticks, level.id, level.size))
                break
        return rows

    def _update(self, book: SymbolBook, count: int, timestamp: str) -> list[RowChange]:
        rng, item = self._rng, book.instrument
        main = rng.choice((BUY, SELL))
        touched: set[tuple[str, int]] = set()
        rows: list[RowChange] = []
        for _ in range(count):
            side = self._pick_side(main)
            levels = book.side(side)
            if not levels:
                continue
            rank = self._rank(len(levels))
            ticks = book.bid_prices[-1 - rank] if side == BUY else book.ask_prices[rank]
            if (side, ticks) in touched:
                continue
            touched.add((side, ticks))
            level = levels[ticks]
            size = self._size(item)
            level.size = size if size != level.size else size + item.lot_size
            level.timestamp = timestamp
            rows.append((side, ticks, level.id, level.size))
        return rows

    def _delete(self, book: SymbolBook, count: int) -> list[RowChange]:
        rng = self._rng
        main = BUY if len(book.bids) > len(book.asks) else SELL
        rows: list[RowChange] = []
        for _ in range(count):
            side = self._pick_side(main)
            levels = book.side(side)
            if len(levels) <= self._min_levels:
                continue
            # Past the target depth, the far end of the book is where levels go away.
            deep = len(levels) > self.depth and rng.random() < 0.5
            rank = len(levels) - 1 if deep else self._rank(len(levels))
            ticks = book.bid_prices[-1 - rank] if side == BUY else book.ask_prices[rank]
            rows.append((side, ticks, levels.pop(ticks).id, 0))
        return rows

    def _size(self, item: Instrument) -> int:
        return item.lot_size * max(1, int(self._rng.lognormvariate(3.5, 1.3)))

    def _new_id(self, item: Instrument, walk: _Walk, ticks: int) -> int:
        if self.historical:
            return item.old_id(ticks)
        walk.next_id += self._rng.randint(1, 64)
        return walk.next_id
