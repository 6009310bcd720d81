"""`safe_error`: what an exception may show in /healthz and log lines, without hosts or credentials."""

from __future__ import annotations

import pymongo.errors
import pytest
import redis.exceptions

from services.runtime.health import ERROR_TEXT_LIMIT, safe_error


@pytest.mark.parametrize(("exc", "shown"), [
    (redis.exceptions.ConnectionError("Error 111 connecting to redis.internal:6379. Connection refused."),
     "ConnectionError: Error 111 connecting to <host>. Connection refused."),
    (pymongo.errors.ServerSelectionTimeoutError(
        "mongo-0.db.svc:27017: [Errno -2] Name or service not known (configured timeouts: socketTimeoutMS: "
        "20000.0ms, connectTimeoutMS: 20000.0ms), Timeout: 30s, Topology Description: <TopologyDescription "
        "id: 1, servers: [<ServerDescription ('mongo-0.db.svc', 27017) server_type: Unknown>]>"),
     "ServerSelectionTimeoutError: <host>: [Errno -2] Name or service not known"),
    (OSError("cannot reach mongodb://admin:hunter2@10.1.2.3:27017/db from 10.1.2.4\nsecond line hunter2"),
     "OSError: cannot reach <url> from <host>"),
    (ConnectionResetError(), "ConnectionResetError"),
    (ValueError("bad \x1b[31m value at 12:30"), "ValueError: bad \\x1b[31m value at 12:30"),
])
def test_safe_error_shows_the_class_and_the_gist(exc: BaseException, shown: str) -> None:
    assert safe_error(exc) == shown


def test_safe_error_is_short() -> None:
    assert len(safe_error(RuntimeError("x" * 10_000))) <= len("RuntimeError: ") + ERROR_TEXT_LIMIT + 3
