"""The `bookstream` console script and `python -m services.<name>` entry points, run for real."""

from __future__ import annotations

import importlib.metadata
import json
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from services.cli import SUBCOMMANDS
from services.runtime.config import SERVICE_SETTINGS, SETTINGS
from testkit.harness import ServiceProcess, base_env, bookstream_argv, free_port, wait_until
from tests.conftest import RunService


def run(argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=base_env(**env))


def test_help_lists_every_subcommand() -> None:
    result = run([*bookstream_argv(), "--help"])
    assert result.returncode == 0
    for name in ("ingest", "top10", "l2builder", "exchange", "status"):
        assert name in result.stdout
    assert set(SUBCOMMANDS) >= {"ingest", "top10", "l2builder", "exchange", "status"}


@pytest.mark.parametrize(
    ("command", "env", "variable"),
    [
        ("ingest", {"SYMBOLS": ""}, "SYMBOLS"),
        ("top10", {"REDIS_URL": "notaurl"}, "REDIS_URL"),
        ("l2builder", {"FLUSH_INTERVAL": "-0.5"}, "FLUSH_INTERVAL"),
        ("status", {"REDIS_URL": "redis://user:pa55word@host:bad/0"}, "REDIS_URL"),
        ("top10", {"REDIS_URL": "redis+cluster://user:pa55word@127.0.0.1:7000,h2:bad/"}, "REDIS_URL"),
        ("l2builder", {"REDIS_URL": "rediss+cluster://user:pa55word@127.0.0.1:7000/3"}, "REDIS_URL"),
    ],
)
def test_invalid_configuration_exits_2_with_one_line(command: str, env: dict[str, str], variable: str) -> None:
    result = run([*bookstream_argv(), command], **env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert variable in lines[0]
    assert "pa55word" not in result.stderr


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_python_dash_m_entry_points(name: str) -> None:
    result = run([sys.executable, "-m", f"services.{name}", "--help"])
    assert result.returncode == 0, result.stderr
    assert "--redis-url" in result.stdout or "--port" in result.stdout or "--symbols" in result.stdout


def test_version_comes_from_the_package_metadata() -> None:
    result = run([*bookstream_argv(), "--version"])
    assert (result.returncode, result.stdout.strip()) == (0, f"bookstream {importlib.metadata.version('bookstream')}")


@pytest.mark.parametrize(("command", "absent"), [
    ("top10", ("--mongo-connection-string", "--mongo-database", "--bitmex-ws-url", "--symbols", "--flush-interval")),
    ("exchange", ("--redis-url", "--mongo-connection-string", "--key-prefix", "--instance-name")),
    ("ingest", ("--mongo-connection-string", "--flush-interval", "--lease-ttl")),
    ("l2builder", ("--bitmex-ws-url", "--symbols", "--ingest-buffer-frames")),
    ("status", ("--metrics-port", "--bitmex-ws-url", "--symbols")),
])
def test_help_lists_only_the_settings_a_subcommand_uses(command: str, absent: tuple[str, ...]) -> None:
    result = run([*bookstream_argv(), command, "--help"])
    assert result.returncode == 0, result.stderr
    shown = set(re.findall(r"--[a-z0-9-]+", result.stdout))
    assert {setting.flag for setting in SETTINGS if setting.field in SERVICE_SETTINGS[command]} <= shown
    assert not shown & set(absent)


def test_start_up_lines_show_only_the_settings_used(run_service: RunService, service_env: dict[str, str]) -> None:
    top10 = run_service("top10", env=dict(service_env, MONGO_CONNECTION_STRING="mongodb://u:hunter2@m/db"))
    exchange = run_service("exchange", "--sim", "--port", str(free_port()), env=base_env(SYMBOLS="XBTUSD"))
    for service, present, absent in ((top10, ("redis_url=", "key_prefix=", "claim_idle="),
                                      ("mongo_url", "ws_url", "hunter2")),
                                     (exchange, ("symbols=XBTUSD", "metrics_port="), ("redis_url", "key_prefix"))):
        started = next(line for line in service.logs().splitlines() if "event=started" in line)
        assert all(text in started for text in present), started
        assert not any(text in started for text in absent), started


def test_a_busy_metrics_port_is_a_one_line_configuration_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for command in ("top10", "ingest"):
            result = run([*bookstream_argv(), command], METRICS_HOST="127.0.0.1", METRICS_PORT=str(port),
                         REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", BITMEX_WS_URL=f"ws://127.0.0.1:{free_port()}")
            lines = result.stderr.strip().splitlines()
            assert result.returncode == 2, result.stderr
            assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
            assert f"METRICS_PORT={port}" in lines[0] and "set METRICS_PORT" in lines[0]


def test_a_busy_exchange_port_is_a_one_line_configuration_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run([*bookstream_argv(), "exchange", "--sim", "--port", str(port)], METRICS_PORT="0")
    *logged, error = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and all(line.startswith("ts=") for line in logged), result.stderr
    assert error == (f"bookstream exchange: configuration error: --port={port}: cannot listen on 127.0.0.1:{port} "
                     "(Address already in use); choose another --port (or --host)")


@pytest.mark.parametrize("uri", ["mongodb://user:p@zz/w0rd@db:27017/bitmex", "mongodb://user:p@zzw0rd@db:27017/bitmex"])
def test_a_mongodb_password_with_a_raw_reserved_character_is_a_configuration_error(uri: str) -> None:
    result = run([*bookstream_argv(), "l2builder"], MONGO_CONNECTION_STRING=uri, METRICS_PORT="0")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1
    assert lines[0].startswith("bookstream l2builder: configuration error: MONGO_CONNECTION_STRING=")
    assert "zz" not in result.stderr and "w0rd" not in result.stderr


def test_healthz_bodies_show_no_host_and_no_credential(run_service: RunService, tmp_path: Path) -> None:
    redis_url = f"redis://user:hunter2@127.0.0.1:{free_port()}/0?password=hunter3"
    ws_url = f"ws://127.0.0.1:{free_port()}/realtime?api-expires=1&api-key=hunter4&api-signature=hunter5"
    env = base_env(REDIS_URL=redis_url, BITMEX_WS_URL=ws_url, HEALTH_STALE_AFTER="0.5", XDG_RUNTIME_DIR=str(tmp_path))
    top10 = run_service("top10", env=env, healthy=False)
    ingest = run_service("ingest", env=env, healthy=False)

    def failed_with_an_error(service: ServiceProcess, field: Callable[[dict[str, Any]], str]) -> bool:
        status, body = service.health()
        return status == 503 and bool(field(json.loads(body)))

    wait_until(lambda: failed_with_an_error(top10, lambda body: str(body["last_error"])), 30, "top10 unhealthy")
    wait_until(lambda: failed_with_an_error(ingest, lambda body: str(body["redis"]["control"]["error"])), 30,
               "ingest unhealthy")
    for service in (top10, ingest):
        body = service.health()[1].decode()
        assert "ConnectionError" in body, body
        for secret in ("hunter", "127.0.0.1"):
            assert secret not in body.replace(f"{ws_url.split('?')[0]}?", ""), body
    assert "api-key=***" in ingest.health()[1].decode()


def test_mongo_unavailable_is_logged_in_one_short_masked_error(run_service: RunService,
                                                              service_env: dict[str, str]) -> None:
    env = dict(service_env, MONGO_CONNECTION_STRING=f"mongodb://u:hunter2@127.0.0.1:{free_port()}/?authSource=admin")
    builder = run_service("l2builder", env=env, healthy=False)
    builder.wait_log("event=mongo_unavailable", timeout=60)
    line = next(line for line in builder.logs().splitlines() if "event=mongo_unavailable" in line)
    error = line.split(" error=", 1)[1]
    assert error.startswith('"ServerSelectionTimeoutError: ') and len(error) < 200, line
    assert "hunter2" not in builder.logs() and "127.0.0.1" not in error and "Topology" not in error
