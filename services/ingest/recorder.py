"""`ingest --record FILE`: every received frame also written as a capture (DESIGN.md), optionally rotated.

Frames are written as they arrive, before parsing, so a capture holds exactly what the venue sent
(malformed frames included) and `exchange --replay` serves it again faithfully. Writes go through a large
buffer that the connection loop flushes about once a second: the event loop never waits on the disk per
frame, and a killed process loses at most about a second of capture.

Without rotation, FILE is appended to. With rotation (by size, by age, or both) FILE names a series,
`NAME.<UTC time of its first frame>.EXT`, each file a complete capture that replays on its own.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Final, TextIO

from services.core.capture import format_capture_line

WRITE_BUFFER_BYTES: Final = 1 << 20


class Recorder:
    """Appends `(receive time, frame text)` lines to the current capture file, rotating when due."""

    def __init__(self, path: str | Path, rotate_bytes: int = 0, rotate_seconds: float = 0.0) -> None:
        self.path = Path(path)
        self.rotate_bytes, self.rotate_seconds = rotate_bytes, rotate_seconds
        self.current: Path | None = None
        self._file: TextIO | None = None
        self._size = 0
        self._opened_at = 0.0

    @property
    def rotates(self) -> bool:
        return bool(self.rotate_bytes or self.rotate_seconds)

    def write(self, recv_time: float, text: str) -> bool:
        """Record one frame received at `recv_time` (epoch seconds); False if the format cannot hold it
        (a raw line break, which no JSON frame contains)."""
        try:
            line = format_capture_line(recv_time, text)
        except ValueError:
            return False
        if self._file is None or self._due(recv_time, len(line)):
            self._open(recv_time)
        assert self._file is not None
        self._file.write(line)
        self._size += len(line)
        return True

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _due(self, recv_time: float, line_size: int) -> bool:
        if self.rotate_bytes and self._size and self._size + line_size > self.rotate_bytes:
            return True
        return bool(self.rotate_seconds) and recv_time - self._opened_at >= self.rotate_seconds

    def _open(self, recv_time: float) -> None:
        self.close()
        target = self._series_name(recv_time) if self.rotates else self.path
        target.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(target, "a", encoding="utf-8", newline="\n", buffering=WRITE_BUFFER_BYTES)  # noqa: SIM115
        self.current = target
        self._size = target.stat().st_size
        self._opened_at = recv_time

    def _series_name(self, recv_time: float) -> Path:
        micros = int(recv_time * 1_000_000) % 1_000_000
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(recv_time)) + f".{micros:06d}Z"
        candidate = self.path.with_name(f"{self.path.stem}.{stamp}{self.path.suffix}")
        number = 0
        while candidate.exists():
            number += 1
            candidate = self.path.with_name(f"{self.path.stem}.{stamp}-{number}{self.path.suffix}")
        return candidate
