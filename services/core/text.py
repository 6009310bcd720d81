"""Untrusted text made safe to print: control characters escaped, long inputs cut, bytes decoded."""

from __future__ import annotations

# Characters that move a terminal's cursor, start an escape sequence, split a line for a log shipper or
# reorder text on screen: C0, DEL, C1, the bidirectional marks and controls, the line and paragraph separators.
_CONTROLS = (*range(0x20), *range(0x7F, 0xA0), 0x200E, 0x200F, 0x2028, 0x2029, *range(0x202A, 0x202F),
             *range(0x2066, 0x206A))
ESCAPES = ({code: f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" for code in _CONTROLS}
           | {ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})


def escape_controls(text: str) -> str:
    """`text` with every control character written as an escape (`\\n`, `\\x1b`, `\\u2028`): one inert line."""
    return text.translate(ESCAPES)


def excerpt(text: str | bytes, limit: int = 120) -> str:
    """A bounded, printable excerpt of untrusted input for log lines and error messages."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return text if len(text) <= limit else text[:limit] + f"...(+{len(text) - limit} chars)"


def as_text(value: bytes | str) -> str:
    """A Redis reply field as text (replies are bytes unless the client decodes them)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
