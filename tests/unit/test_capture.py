"""Capture format: `<epoch seconds> <frame text>` lines written and read back byte for byte."""

from __future__ import annotations

import math
from itertools import pairwise
from pathlib import Path

import pytest

from services.core.capture import CaptureError, format_capture_line, iter_capture

FRAMES = [
    (1617648073.6164942, '{"info":"Welcome to the BitMEX Realtime API.","limit":{"remaining":39}}'),
    (1617648075.19044, '{"table":"orderBookL2","action":"delete","data":[{"symbol":"XBTM21","id":1,"side":"Sell"}]}'),
    (1617648080.0, "pong"),
    (1617648081.5, '{"text with  two spaces": " and a leading one", "escaped": "line\\nbreak"}'),
    (1e9, '{"unicode":"äöü €"}'),
]


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "session.capture"
    path.write_text("".join(format_capture_line(recv_time, text) for recv_time, text in FRAMES), encoding="utf-8")
    assert list(iter_capture(path)) == FRAMES
    assert list(iter_capture(str(path))) == FRAMES


def test_line_format() -> None:
    assert format_capture_line(1617648073.6164942, "pong") == "1617648073.6164942 pong\n"
    assert format_capture_line(1617648073, "pong") == "1617648073 pong\n"


def test_times_round_trip_exactly(tmp_path: Path) -> None:
    times = [1617648073.6164942, 0.1 + 0.2, 1700000000.000001, math.nextafter(1700000000.0, 2e9)]
    path = tmp_path / "times.capture"
    path.write_text("".join(format_capture_line(recv_time, "{}") for recv_time in times), encoding="utf-8")
    assert [recv_time for recv_time, _ in iter_capture(path)] == times


def test_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "blank.capture"
    path.write_text("\n1.5 {}\n\n2.5 pong\n\n", encoding="utf-8")
    assert list(iter_capture(path)) == [(1.5, "{}"), (2.5, "pong")]


def test_file_without_final_newline(tmp_path: Path) -> None:
    path = tmp_path / "cut.capture"
    path.write_text("1.5 {}\n2.5 pong", encoding="utf-8")
    assert list(iter_capture(path)) == [(1.5, "{}"), (2.5, "pong")]


@pytest.mark.parametrize("line", ["{}", "abc {}", "nan {}", "inf {}", " {}", "1.5"])
def test_bad_lines_name_file_and_line(tmp_path: Path, line: str) -> None:
    path = tmp_path / "bad.capture"
    path.write_text(f"1.0 {{}}\n{line}\n", encoding="utf-8")
    lines = iter_capture(path)
    assert next(lines) == (1.0, "{}")
    with pytest.raises(CaptureError, match=r"bad\.capture:2: expected '<epoch seconds> <frame>'"):
        next(lines)


@pytest.mark.parametrize("text", ["{\n}", "a\rb"])
def test_frames_with_line_breaks_cannot_be_written(text: str) -> None:
    with pytest.raises(ValueError, match="line break"):
        format_capture_line(1.0, text)


@pytest.mark.parametrize("recv_time", [math.nan, math.inf, -math.inf])
def test_non_finite_times_cannot_be_written(recv_time: float) -> None:
    with pytest.raises(ValueError, match="not a finite number"):
        format_capture_line(recv_time, "{}")


def test_real_capture_reads_whole(captures_dir: Path) -> None:
    lines = list(iter_capture(captures_dir / "2021-04-17.capture"))
    assert len(lines) == 2021
    assert lines[0][1].startswith('{"info":"Welcome to the BitMEX Realtime API."')
    assert all(later >= earlier for (earlier, _), (later, _) in pairwise(lines))
