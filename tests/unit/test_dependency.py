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
    health = DependencyHealth("redis", EventLog("dependency-test"), errors, up)
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
