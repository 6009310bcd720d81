"""The servers' health as l2builder logs it: one line when a server becomes unavailable, one when it
recovers, every failure counted, with the event names and the `operation` field every service uses."""

from __future__ import annotations

import io
import logging

from services.l2builder.servers import Dependency
from services.runtime.logs import EventLog, LogfmtFormatter


def test_an_outage_is_two_lines_and_every_failure_is_counted() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(LogfmtFormatter())
    logger = logging.getLogger("bookstream.serverstest")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    counted: list[str] = []
    redis = Dependency("redis", EventLog("serverstest"), counted.append)

    redis.ok()
    assert out.getvalue() == "", "a server that never failed has nothing to recover from"
    redis.failed("read", ConnectionError("refused"))
    redis.failed("ack", ConnectionError("refused"))
    redis.ok()
    redis.ok()

    lines = out.getvalue().splitlines()
    assert counted == ["read", "ack"]
    assert len(lines) == 2, lines
    assert "event=redis_unavailable" in lines[0] and "operation=read" in lines[0] and "refused" in lines[0]
    assert "event=redis_recovered" in lines[1] and "down_seconds=" in lines[1]
    assert redis.age(redis.ok_at + 5.0) == 5.0
