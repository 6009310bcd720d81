"""The dependency-health helper: one log line per change, every failure counted, the /healthz detail."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge
from redis.exceptions import ConnectionError as RedisConnectionError

from services.runtime.dependency import DependencyHealth
from services.runtime.logs import EventLog


def sample(registry: CollectorRegistry, name: str, operation: str) -> float | None:
    return registry.get_sample_value(name, {"operation": operation})


def test_changes_are_logged_once_and_every_failure_counted(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    errors = Counter("t_redis_errors", "errors", ["operation"], registry=registry)
    up = Gauge("t_redis_up", "up", ["operation"], registry=registry)
    health = DependencyHealth("redis", EventLog("dependency-test"), errors.labels, up.labels)
    refused = RedisConnectionError("Error 111 connecting to redis://user:secret@10.0.0.7:6379/0")
    with caplog.at_level(logging.INFO, logger="bookstream"):
        health.succeeded("read")
        health.failed("read", refused)
        health.failed("read", refused)
        health.succeeded("claim")
        health.succeeded("read")
        health.succeeded("read")
    events = [(record.getMessage(), record.__dict__["fields"]["operation"]) for record in caplog.records]
    assert events == [("redis_unavailable", "read"), ("redis_recovered", "read")]
    assert sample(registry, "t_redis_errors_total", "read") == 2
    assert sample(registry, "t_redis_up", "read") == 1 and sample(registry, "t_redis_up", "claim") == 1
    assert "secret" not in health.last_error and "10.0.0.7" not in health.last_error
    assert health.last_error.startswith("read: ConnectionError")


def test_the_detail_and_problems_name_the_operations_down() -> None:
    health = DependencyHealth("mongo", EventLog("dependency-test"))
    health.failed("flush", RedisConnectionError("down"))
    health.succeeded("restore")
    detail = health.describe(("flush", "restore", "never"))
    assert detail["flush"]["up"] is False and detail["flush"]["error"] == "ConnectionError: down"
    assert detail["restore"] == {"up": True, "for_s": detail["restore"]["for_s"], "error": ""}
    assert detail["never"]["up"] is None
    assert health.problems() == ["mongo unavailable (flush): ConnectionError: down"]


def test_per_server_an_outage_is_two_lines_however_many_operations_fail(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    errors = Counter("t_l2_redis_errors", "errors", ["operation"], registry=registry)
    health = DependencyHealth("redis", EventLog("dependency-test"), errors.labels, per_operation=False)
    with caplog.at_level(logging.INFO, logger="bookstream"):
        health.succeeded("read")
        assert not caplog.records, "a server that never failed has nothing to recover from"
        health.failed("read", RedisConnectionError("refused"))
        health.failed("ack", RedisConnectionError("refused"))
        health.succeeded("ownership")
        health.succeeded("ack")
    events = [(record.getMessage(), record.levelname, record.__dict__["fields"]) for record in caplog.records]
    levels = [(event, level) for event, level, _ in events]
    assert levels == [("redis_unavailable", "ERROR"), ("redis_recovered", "INFO")]
    assert events[0][2]["operation"] == "read" and "refused" in events[0][2]["error"]
    assert events[1][2]["operation"] == "ownership" and events[1][2]["down_s"] >= 0
    assert sample(registry, "t_l2_redis_errors_total", "read") == 1
    assert sample(registry, "t_l2_redis_errors_total", "ack") == 1
    assert health.last_error == "ack: ConnectionError: refused"


def test_an_up_gauge_needs_health_per_operation() -> None:
    up = Gauge("t_server_up", "up", ["operation"], registry=CollectorRegistry())
    with pytest.raises(ValueError, match="per operation"):
        DependencyHealth("mongo", EventLog("dependency-test"), up=up.labels, per_operation=False)
