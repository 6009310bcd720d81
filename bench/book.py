"""Benchmark of parse + L2 book apply, with and without a top-10 view, against the list baseline.

`python -m bench.book` measures, in one run:

- every orderBookL2 frame of the real captures in `shared/data/bitmex-2021/` (skipped when absent);
- a synthetic current-format stream (price and timestamp on every row, arbitrary ids) of 120,000
  frames over a book 3,000 levels deep per side, from a seeded RNG, with most activity near the top;
- the list-based approach of BitMEX's official connector (`bench.list_baseline`) on a prefix of each,
  since it is O(depth) per row; its final books are checked against the engine's.

"parse+apply" is `parse_frame` then `apply` on every frame, partials included; "+top10" also reads the
best 10 levels of each side after every frame. Each figure is the best of `--repeat` interleaved rounds,
in CPU time of this process. The last line is the summary; `ratio = frames_per_s / list_frames_per_s`,
both on the synthetic stream. `--alternatives N` also measures the data structures and the JSON decoder
that were rejected, on the first N synthetic frames.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from bisect import bisect_left, insort
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
from sortedcontainers import SortedDict

from bench.list_baseline import ListBook
from services.core.bitmex import L2_TABLES, TableFrame, parse_frame
from services.core.book import BookSet, L2Book, Level
from services.core.capture import iter_capture

# CPU time of this process: the machine is shared, and time spent descheduled while a neighbour runs is
# not the engine's. On an idle machine it equals wall time.
cpu_clock = time.process_time
CAPTURES = Path(os.environ.get("BOOKSTREAM_CAPTURES", Path(__file__).resolve().parents[2] / "shared/data/bitmex-2021"))
SYMBOL = "XBTUSD"
TICK = 0.5


def synthetic_stream(frames: int, depth: int, seed: int) -> list[str]:
    """A partial of `depth` levels per side, then `frames` current-format deltas, as frame texts.

    The mix follows the captures: a third each of updates, inserts and deletes, 84% of frames with one
    row and a tail of larger ones (about 1.5 rows per frame). Rows pick their level at an exponentially
    distributed distance from the top (mean 8 levels), so most activity is near the best prices while
    deep levels still change; each side stays near `depth` levels and the book never crosses. Prices
    are integer ticks times 0.5, exact in binary.
    """
    rng = random.Random(seed)
    mid = 60_000
    next_id = rng.randrange(10**9, 10**10)
    # ticks per side, ascending; tick -> [id, size]
    ticks: dict[str, list[int]] = {"Buy": [], "Sell": []}
    levels: dict[str, dict[int, list[int]]] = {"Buy": {}, "Sell": {}}
    clock = datetime(2024, 3, 1, 12, tzinfo=UTC)

    def stamp() -> str:
        return clock.strftime("%Y-%m-%dT%H:%M:%S.") + f"{clock.microsecond // 1000:03d}Z"

    def row(side: str, tick: int, ident: int, size: int | None) -> dict[str, object]:
        fields: dict[str, object] = {"symbol": SYMBOL, "id": ident, "side": side}
        if size is not None:
            fields["size"] = size
        fields["price"] = tick * TICK
        fields["timestamp"] = stamp()
        return fields

    def add(side: str, tick: int) -> dict[str, object]:
        nonlocal next_id
        next_id += rng.randrange(1, 1000)
        size = rng.randrange(1, 500) * 100
        levels[side][tick] = [next_id, size]
        insort(ticks[side], tick)
        return row(side, tick, next_id, size)

    def from_top(side: str) -> int:
        """Index in `ticks[side]` of a level picked near the top."""
        count = len(ticks[side])
        distance = min(int(rng.expovariate(1 / 8)), count - 1)
        return count - 1 - distance if side == "Buy" else distance

    partial = []
    for offset in range(1, 2 * depth):
        for side, tick in (("Buy", mid - offset), ("Sell", mid + offset)):
            if len(ticks[side]) < depth and rng.random() < 0.6:
                partial.append(add(side, tick))
    texts = [orjson.dumps({"table": "orderBookL2", "action": "partial", "keys": ["symbol", "id", "side"],
                           "filter": {"symbol": SYMBOL}, "data": partial}).decode()]
    for _ in range(frames):
        clock += timedelta(microseconds=rng.randrange(100, 3000))
        side = rng.choice(("Buy", "Sell"))
        action = rng.choice(("update", "insert", "delete"))
        if len(ticks[side]) < depth * 0.95:
            action = "insert"
        elif len(ticks[side]) > depth * 1.05:
            action = "delete"
        rows = []
        for _ in range(1 if rng.random() < 0.84 else 2 + int(rng.expovariate(1 / 2.5))):
            if action == "insert":
                best_bid, best_ask = ticks["Buy"][-1], ticks["Sell"][0]
                distance = int(rng.expovariate(1 / 8))
                if side == "Buy":
                    tick = min(best_bid + 1 - distance, best_ask - 1)
                    while tick in levels[side]:
                        tick -= 1
                else:
                    tick = max(best_ask - 1 + distance, best_bid + 1)
                    while tick in levels[side]:
                        tick += 1
                rows.append(add(side, tick))
                continue
            tick = ticks[side][from_top(side)]
            ident, size = levels[side][tick]
            if action == "update":
                size = levels[side][tick][1] = max(100, size + rng.randrange(-50, 51) * 100)
                rows.append(row(side, tick, ident, size))
            else:
                del levels[side][tick]
                ticks[side].remove(tick)
                rows.append(row(side, tick, ident, None))
        texts.append(orjson.dumps({"table": "orderBookL2", "action": action, "data": rows}).decode())
    return texts


def capture_l2_frames(folder: Path) -> list[str]:
    """Every orderBookL2 frame of the captures, in order, as received."""
    texts = []
    for path in sorted(folder.glob("*.capture")):
        for _, text in iter_capture(path):
            if text.startswith('{"table":"orderBookL2"'):
                texts.append(text)
    return texts


# In the timed loops below, parse_frame is typed as returning any Frame; these texts are all table frames.


def run_books(texts: Sequence[str], top: int | None) -> float:
    """Seconds to parse and apply every frame through a BookSet, reading the top `top` levels after each.

    This is the path of a consumer of many symbols in one stream, as the captures are.
    """
    books = BookSet()
    apply, book_of = books.apply, books.book
    started = cpu_clock()
    if top is None:
        for text in texts:
            apply(parse_frame(text))  # type: ignore[arg-type]
    else:
        for text in texts:
            frame: TableFrame = parse_frame(text)  # type: ignore[assignment]
            apply(frame)
            book_of(frame.symbol).top(top)  # type: ignore[arg-type, union-attr]
    return cpu_clock() - started


def run_book(texts: Sequence[str], top: int | None) -> float:
    """Like `run_books` for one symbol's frames, straight into its L2Book as l2builder does per stream."""
    book = L2Book(SYMBOL)
    apply = book.apply
    started = cpu_clock()
    if top is None:
        for text in texts:
            apply(parse_frame(text))  # type: ignore[arg-type]
    else:
        view = book.top
        for text in texts:
            apply(parse_frame(text))  # type: ignore[arg-type]
            view(top)
    return cpu_clock() - started


def by_symbol(texts: Sequence[str]) -> dict[str, list[str]]:
    """The frames of each symbol, in order: the official connector follows one symbol per instance."""
    groups: dict[str, list[str]] = {}
    for text in texts:
        frame = parse_frame(text)
        assert isinstance(frame, TableFrame) and frame.symbol is not None
        groups.setdefault(frame.symbol, []).append(text)
    return groups


def run_list_baseline(groups: dict[str, list[str]]) -> float:
    """Seconds for the list baseline to take every symbol's frames, one connector instance per symbol."""
    started = cpu_clock()
    for texts in groups.values():
        on_message = ListBook().on_message
        for text in texts:
            on_message(text)
    return cpu_clock() - started


def best_of(repeat: int, run: Callable[[], float]) -> float:
    return min(run() for _ in range(repeat))


def rows_in(texts: Sequence[str]) -> int:
    total = 0
    for text in texts:
        frame = parse_frame(text)
        assert isinstance(frame, TableFrame) and frame.table in L2_TABLES
        total += len(frame.data)
    return total


def baseline_agrees(groups: dict[str, list[str]]) -> bool:
    """Whether the list baseline ends with the engine's books (so it is a real book builder)."""
    for symbol, texts in groups.items():
        baseline, engine = ListBook(), L2Book(symbol)
        for text in texts:
            baseline.on_message(text)
            engine.apply(parse_frame(text))  # type: ignore[arg-type]
        bids, asks = engine.top(None)
        ours = {(ident, "Buy", size, price) for price, size, ident in bids}
        ours |= {(ident, "Sell", size, price) for price, size, ident in asks}
        if ours != baseline.levels():
            return False
    return True


class EndListSide:
    """The engine's layout: sort keys ascending with the best last (asks negated), dict key -> level."""

    def __init__(self, bids: bool) -> None:
        self.sign = 1.0 if bids else -1.0
        self.keys: list[float] = []
        self.levels: dict[float, Level] = {}

    def put(self, price: float, size: int, ident: int) -> None:
        key = price * self.sign
        if key not in self.levels:
            insort(self.keys, key)
        self.levels[key] = (price, size, ident)

    def remove(self, price: float) -> None:
        key = price * self.sign
        del self.levels[key]
        del self.keys[bisect_left(self.keys, key)]

    def top(self, n: int) -> list[Level]:
        return list(map(self.levels.__getitem__, self.keys[:-n - 1:-1]))


class FrontListSide(EndListSide):
    """The same without negated keys: prices ascending on both sides, so the asks' best is at the front."""

    def __init__(self, bids: bool) -> None:
        super().__init__(bids)
        self.bids = bids
        self.sign = 1.0

    def top(self, n: int) -> list[Level]:
        return list(map(self.levels.__getitem__, self.keys[:-n - 1:-1] if self.bids else self.keys[:n]))


class SortedDictSide:
    """sortedcontainers.SortedDict keyed so that the best level comes first (bids negated)."""

    def __init__(self, bids: bool) -> None:
        self.sign = -1.0 if bids else 1.0
        self.levels: SortedDict = SortedDict()

    def put(self, price: float, size: int, ident: int) -> None:
        self.levels[price * self.sign] = (price, size, ident)

    def remove(self, price: float) -> None:
        del self.levels[price * self.sign]

    def top(self, n: int) -> list[Level]:
        return self.levels.values()[:n]  # type: ignore[no-any-return]


class SortOnReadSide:
    """A plain dict price -> level; the sorted order is cached and rebuilt on read after a change."""

    def __init__(self, bids: bool) -> None:
        self.bids = bids
        self.levels: dict[float, Level] = {}
        self.order: list[float] | None = []

    def put(self, price: float, size: int, ident: int) -> None:
        if price not in self.levels:
            self.order = None
        self.levels[price] = (price, size, ident)

    def remove(self, price: float) -> None:
        del self.levels[price]
        self.order = None

    def top(self, n: int) -> list[Level]:
        if self.order is None:
            self.order = sorted(self.levels, reverse=self.bids)
        return [self.levels[price] for price in self.order[:n]]


SIDE_LAYOUTS: dict[str, Callable[[bool], EndListSide | SortedDictSide | SortOnReadSide]] = {
    "list, best last (engine)": EndListSide,
    "list, asks best first": FrontListSide,
    "SortedDict": SortedDictSide,
    "dict, order sorted on read": SortOnReadSide,
}


def run_layout(layout: Callable[[bool], EndListSide | SortedDictSide | SortOnReadSide],
               frames: Sequence[TableFrame], top: int | None) -> float:
    """Seconds to apply parsed current-format deltas (no checks) to one side layout, after the partial."""
    sides = {"Buy": layout(True), "Sell": layout(False)}
    bids, asks = sides["Buy"], sides["Sell"]
    for row in sorted(frames[0].data, key=lambda row: row["price"]):  # the partial, in price order
        sides[row["side"]].put(row["price"], row["size"], row["id"])
    started = cpu_clock()
    for frame in frames[1:]:
        if frame.action == "delete":
            for row in frame.data:
                sides[row["side"]].remove(row["price"])
        else:
            for row in frame.data:
                sides[row["side"]].put(row["price"], row["size"], row["id"])
        if top is not None:
            bids.top(top)
            asks.top(top)
    return cpu_clock() - started


def run_decoder(decode: Callable[[str], object], texts: Sequence[str]) -> float:
    started = cpu_clock()
    for text in texts:
        decode(text)
    return cpu_clock() - started


def alternatives(texts: Sequence[str], repeat: int) -> None:
    """Print the measured alternatives behind the engine's choices, on the synthetic stream."""
    frames: list[TableFrame] = [parse_frame(text) for text in texts]  # type: ignore[misc]
    print(f"{'alternative (parsed frames, no checks)':<40} {'frames/s':>10} {'+top10 frames/s':>16}")
    for name, layout in SIDE_LAYOUTS.items():
        applied = best_of(repeat, lambda: run_layout(layout, frames, None))  # noqa: B023 - run at once
        viewed = best_of(repeat, lambda: run_layout(layout, frames, 10))  # noqa: B023 - run at once
        print(f"{'apply: ' + name:<40} {(len(frames) - 1) / applied:>10.0f} {(len(frames) - 1) / viewed:>16.0f}")
    for name, decode in (("orjson.loads", orjson.loads), ("json.loads", json.loads)):
        seconds = best_of(repeat, lambda: run_decoder(decode, texts))  # noqa: B023 - run at once
        print(f"{'decode: ' + name:<40} {len(texts) / seconds:>10.0f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.book", description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=120_000, help="synthetic delta frames")
    parser.add_argument("--depth", type=int, default=3_000, help="synthetic levels per side")
    parser.add_argument("--list-frames", type=int, default=600,
                        help="synthetic frames given to the O(depth)-per-row list baseline")
    parser.add_argument("--list-capture-frames", type=int, default=2_000,
                        help="capture frames given to the list baseline (the XBTUSD book alone takes it ~20 s)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the best is kept")
    parser.add_argument("--seed", type=int, default=20240301)
    parser.add_argument("--alternatives", type=int, default=0, metavar="FRAMES",
                        help="also measure the rejected data structures and json on this many synthetic frames")
    args = parser.parse_args(argv)

    texts = synthetic_stream(args.frames, args.depth, args.seed)
    prefix = texts[:args.list_frames + 1]
    cases: dict[str, tuple[Sequence[str], Callable[[], float]]] = {}
    checked: list[dict[str, list[str]]] = []  # frame groups on which the baseline is checked against the engine
    if (CAPTURES / "2021-04-05.capture").exists():
        captured = capture_l2_frames(CAPTURES)
        cases["captures parse+apply"] = captured, lambda: run_books(captured, None)
        cases["captures +top10"] = captured, lambda: run_books(captured, 10)
        captured_prefix = captured[:args.list_capture_frames]
        captured_groups = by_symbol(captured_prefix)
        checked.append(captured_groups)
        cases[f"captures list baseline (first {len(captured_prefix)})"] = (
            captured_prefix, lambda: run_list_baseline(captured_groups))
    else:
        print(f"captures not found in {CAPTURES} (set BOOKSTREAM_CAPTURES): skipped")
    cases["synthetic parse+apply"] = texts, lambda: run_book(texts, None)
    cases["synthetic +top10"] = texts, lambda: run_book(texts, 10)
    prefix_groups = by_symbol(prefix)
    checked.append(prefix_groups)
    cases[f"synthetic list baseline (first {len(prefix)})"] = prefix, lambda: run_list_baseline(prefix_groups)

    # Rounds interleave the cases so that a busy neighbour slows them alike; each keeps its best round.
    seconds = {name: float("inf") for name in cases}
    for _ in range(args.repeat):
        for name, (_, run) in cases.items():
            seconds[name] = min(seconds[name], run())

    print(f"{'run':<40} {'frames':>8} {'rows':>8} {'seconds':>8} {'frames/s':>10} {'rows/s':>10}")
    for name, (frames, _) in cases.items():
        rows = rows_in(frames)
        print(f"{name:<40} {len(frames):>8} {rows:>8} {seconds[name]:>8.3f} {len(frames) / seconds[name]:>10.0f}"
              f" {rows / seconds[name]:>10.0f}")
    agrees = all(baseline_agrees(groups) for groups in checked)
    print(f"synthetic depth per side: {args.depth}; list baseline ends with the engine's books: {agrees}")
    if args.alternatives:
        alternatives(texts[:args.alternatives + 1], args.repeat)
    engine_s, top10_s, list_s = (seconds[name] for name in list(cases)[-3:])
    frames_per_s = len(texts) / engine_s
    list_frames_per_s = len(prefix) / list_s
    print(f"frames_per_s={frames_per_s:.0f} rows_per_s={rows_in(texts) / engine_s:.0f}"
          f" top10_frames_per_s={len(texts) / top10_s:.0f} list_frames_per_s={list_frames_per_s:.0f}"
          f" ratio={frames_per_s / list_frames_per_s:.0f}")


if __name__ == "__main__":
    main()
