"""The capture format: one received frame per line, `<epoch seconds> <frame text>`.

It is what `ingest --record` writes and `exchange --replay` reads, and the format of the real BitMEX
recordings in `shared/data/bitmex-2021/`. The frame text is kept byte-for-byte, so a line is split on
its first space only; frames never contain a raw newline because JSON escapes it inside strings.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path


class CaptureError(ValueError):
    """A capture line is not `<epoch seconds> <frame text>`; the message names the file and line."""


def format_capture_line(recv_time: float, text: str) -> str:
    """One capture line, newline included, for a frame received at `recv_time` (epoch seconds).

    `repr` of a float is the shortest text that reads back as the same float, so times round-trip.
    """
    if not math.isfinite(recv_time):
        raise ValueError(f"receive time is not a finite number: {recv_time!r}")
    if "\n" in text or "\r" in text:
        raise ValueError("a frame recorded in a capture cannot contain a line break")
    return f"{recv_time!r} {text}\n"


def iter_capture(path: str | Path) -> Iterator[tuple[float, str]]:
    """Yield `(receive time, frame text)` for every line of a capture; raise CaptureError on a bad line.

    Blank lines (such as a trailing one) are skipped.
    """
    with open(path, encoding="utf-8", newline="\n") as lines:
        for number, line in enumerate(lines, 1):
            line = line.rstrip("\n")
            if not line:
                continue
            stamp, separator, text = line.partition(" ")
            try:
                recv_time = float(stamp)
            except ValueError:
                recv_time = math.nan
            if not separator or not math.isfinite(recv_time):
                raise CaptureError(f"{path}:{number}: expected '<epoch seconds> <frame>', got {line[:80]!r}")
            yield recv_time, text
