"""Log lines stay one inert line whatever the values hold: every control character is escaped."""

from __future__ import annotations

import io
import logging

import pytest

from services.core.text import escape_controls
from services.runtime.logs import EventLog, LogfmtFormatter

CONTROLS = [chr(code) for code in (*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029, 0x202E, 0x2066)]


@pytest.fixture
def lines() -> tuple[EventLog, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(LogfmtFormatter())
    logger = logging.getLogger("bookstream.logtest")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return EventLog("logtest"), out


@pytest.mark.parametrize("char", CONTROLS, ids=[f"U+{ord(char):04X}" for char in CONTROLS])
def test_every_control_character_is_escaped(lines: tuple[EventLog, io.StringIO], char: str) -> None:
    log, out = lines
    log.info("frame", symbol=f"X{char}Y", **{f"key{char}": "v"})
    line = out.getvalue()
    assert line.endswith("\n") and line.count("\n") == 1
    assert char not in line[:-1]
    escaped = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char, f"\\x{ord(char):02x}" if ord(char) < 0x100
                                                           else f"\\u{ord(char):04x}")
    assert f'symbol="X{escaped}Y"' in line


def test_a_forged_line_stays_inside_its_value(lines: tuple[EventLog, io.StringIO]) -> None:
    log, out = lines
    log.warning("malformed_frame", excerpt='a"\r\nts=2026 level=error event=forged \x1b[2K\\')
    [line] = out.getvalue().splitlines()
    assert line.endswith('excerpt="a\\"\\r\\nts=2026 level=error event=forged \\x1b[2K\\\\"')


def test_escape_controls_keeps_printable_text() -> None:
    assert escape_controls("XBTUSD ünïcode €") == "XBTUSD ünïcode €"
    assert escape_controls("a\x1b[31mb\x00") == "a\\x1b[31mb\\x00"
