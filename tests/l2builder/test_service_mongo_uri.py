"""`bookstream l2builder` with a MongoDB connection string that parses but cannot work: an unknown
`mongodb+srv://` name is an unreachable MongoDB (logged, unhealthy, retried); what the driver refuses when it
creates its client is a one-line configuration error."""

from __future__ import annotations

import subprocess

import pytest

from testkit.harness import bookstream_argv, wait_until
from tests.conftest import RunService


def test_an_unresolvable_srv_name_is_an_unreachable_mongodb(run_service: RunService,
                                                            service_env: dict[str, str]) -> None:
    env = dict(service_env, MONGO_CONNECTION_STRING="mongodb+srv://u:hunter2@nosuch.invalid/bitmex",
               HEALTH_STALE_AFTER="1")
    builder = run_service("l2builder", env=env, healthy=False)
    wait_until(lambda: builder.health()[0] == 503, 30, "/healthz failing while the SRV name does not resolve")
    wait_until(lambda: builder.metric("bookstream_l2builder_flush_errors_total") >= 2, 30, "a retried ping")
    lines = [line for line in builder.logs().splitlines() if "event=mongo_unavailable" in line]
    assert len(lines) == 1  # once per outage, not once per retry
    error = lines[0].split(" error=", 1)[1]
    assert error.startswith('"ConfigurationError: ') and len(error) < 200, lines
    assert builder.alive() and "Traceback" not in builder.logs() and "hunter2" not in builder.logs()


@pytest.mark.parametrize(("query", "refusal"), [
    ("authMechanism=MONGODB-X509", "Passwords are not supported by MONGODB-X509"),
    ("authMechanism=GSSAPI&authSource=bitmex", "authentication source must be $external or None for GSSAPI"),
])
def test_a_connection_string_the_driver_refuses_is_a_one_line_configuration_error(
        service_env: dict[str, str], query: str, refusal: str) -> None:
    env = dict(service_env, MONGO_CONNECTION_STRING=f"mongodb://u:hunter2@127.0.0.1:1/?{query}", METRICS_PORT="0")
    result = subprocess.run([*bookstream_argv(), "l2builder"], capture_output=True, text=True, timeout=60, env=env)
    *logged, error = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and all(line.startswith("ts=") for line in logged), result.stderr
    assert error.startswith("bookstream l2builder: configuration error: MONGO_CONNECTION_STRING="), error
    assert error.endswith(refusal) and "hunter2" not in result.stderr + result.stdout, error
