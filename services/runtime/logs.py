"""Structured logging: one `key=value` line per event worth knowing, on standard error."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from services.core.text import ESCAPES

_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:/-+@{}[],")
_QUOTED = ESCAPES | {ord("\\"): "\\\\", ord('"'): '\\"'}


def _quote(value: object) -> str:
    text = str(value)
    if text and all(char in _SAFE for char in text):
        return text
    return '"' + text.translate(_QUOTED) + '"'


class LogfmtFormatter(logging.Formatter):
    """Formats records as logfmt so `grep event=reconnect` and log shippers both work."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [f"ts={stamp}.{int(record.msecs):03d}Z", f"level={record.levelname.lower()}",
                 f"service={record.name.removeprefix('bookstream.')}", f"event={_quote(record.getMessage())}"]
        fields: dict[str, Any] = getattr(record, "fields", {})
        # Keys are quoted too: a caller may pass names it did not choose (query parameters, say).
        parts.extend(f"{_quote(key)}={_quote(value)}" for key, value in fields.items())
        if record.exc_info:
            parts.append(f"exc={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


class EventLog:
    """A logger whose calls name an event and its fields: `log.info("connected", session=sid)`."""

    def __init__(self, service: str) -> None:
        self._logger = logging.getLogger(f"bookstream.{service}")

    def _log(self, level: int, event: str, fields: dict[str, Any], exc_info: bool = False) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, event, extra={"fields": fields}, exc_info=exc_info)

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, fields)

    def error(self, event: str, exc_info: bool = False, **fields: Any) -> None:
        self._log(logging.ERROR, event, fields, exc_info=exc_info)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger("bookstream")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
