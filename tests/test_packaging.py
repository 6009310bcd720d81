"""docker-compose.yml and the Dockerfile, checked against the code (no Docker engine runs here).

`compose_problems` is the checker; it runs on the real file, and on broken copies to prove it would notice.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.cli import SUBCOMMANDS, build_parser
from services.common.config import SETTINGS_BY_ENV, ConfigError, load_settings

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
INTERPOLATION = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")
HEALTH_URL = re.compile(r"http://127\.0\.0\.1:(\d+)(/\w+)")


def load_compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return loaded


def interpolate(value: object) -> str:
    """Resolve `${VAR:-default}` the way compose does when VAR is unset."""
    return INTERPOLATION.sub(lambda match: match.group(2) or "", str(value))


def is_bookstream(service: dict[str, Any]) -> bool:
    return "build" in service or str(service.get("image", "")).startswith("bookstream")


def service_problems(name: str, service: dict[str, Any], services: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    command = [interpolate(part) for part in service.get("command", [])]
    env = {key: interpolate(value) for key, value in (service.get("environment") or {}).items()}
    if not command or command[0] not in SUBCOMMANDS:
        return [f"{name}: command {command[:1]} is not a bookstream subcommand"]
    for variable in env:
        if variable not in SETTINGS_BY_ENV:
            problems.append(f"{name}: environment variable {variable} is not a known setting")
    parser, _ = build_parser(command)
    try:
        args = parser.parse_args(command)
    except SystemExit:
        return [*problems, f"{name}: command {command} is rejected by `bookstream {command[0]}`"]
    try:
        settings = load_settings(args, environ=env)
    except ConfigError as exc:
        return [*problems, f"{name}: invalid setting: {exc}"]
    test = " ".join(service.get("healthcheck", {}).get("test", []))
    match = HEALTH_URL.search(test)
    if match is None:
        problems.append(f"{name}: healthcheck does not fetch a local URL")
    elif match.group(2) != "/healthz" or int(match.group(1)) != settings.metrics_port or not settings.metrics_port:
        problems.append(f"{name}: healthcheck fetches {match.group(0)}, but /healthz is served on "
                        f"port {settings.metrics_port}")
    for dependency, condition in (service.get("depends_on") or {}).items():
        if dependency not in services:
            problems.append(f"{name}: depends on unknown service {dependency}")
        elif condition.get("condition") != "service_healthy":
            problems.append(f"{name}: depends on {dependency} without condition service_healthy")
        elif "healthcheck" not in services[dependency]:
            problems.append(f"{name}: depends on {dependency}, which has no healthcheck")
    if not service.get("restart"):
        problems.append(f"{name}: no restart policy")
    return problems


def compose_problems(compose: dict[str, Any]) -> list[str]:
    services: dict[str, Any] = compose["services"]
    problems = [problem for name, service in services.items() if is_bookstream(service)
                for problem in service_problems(name, service, services)]
    expected = {"redis", "mongo", "exchange", "ingest", "top10", "l2builder"}
    problems.extend(f"missing service {name}" for name in sorted(expected - set(services)))
    return problems


def test_compose_file_matches_the_code() -> None:
    assert compose_problems(load_compose()) == []


@pytest.mark.parametrize(
    ("service", "path", "value", "expected"),
    [
        ("top10", ("command",), ["top10x"], "not a bookstream subcommand"),
        ("l2builder", ("command",), ["l2builder", "--no-such-flag"], "rejected"),
        ("ingest", ("environment", "REDIS_URLL"), "redis://redis:6379/0", "REDIS_URLL is not a known setting"),
        ("ingest", ("environment", "SYMBOLS"), "", "invalid setting: SYMBOLS"),
        ("top10", ("healthcheck", "test"), ["CMD", "python", "-c", "get('http://127.0.0.1:9999/healthz')"],
         "served on port 9100"),
        ("ingest", ("depends_on", "redis"), {"condition": "service_started"}, "without condition service_healthy"),
        ("l2builder", ("restart",), "", "no restart policy"),
    ],
)
def test_checker_notices_a_broken_compose_file(service: str, path: tuple[str, ...], value: object,
                                               expected: str) -> None:
    compose = copy.deepcopy(load_compose())
    target = compose["services"][service]
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    assert any(expected in problem for problem in compose_problems(compose)), compose_problems(compose)


def test_infrastructure_services() -> None:
    services = load_compose()["services"]
    redis_service, mongo = services["redis"], services["mongo"]
    assert "--appendonly" in redis_service["command"] and "yes" in redis_service["command"]
    assert str(mongo["image"]).startswith("mongo:")
    for name in ("redis", "mongo"):
        assert "ports" not in services[name], f"{name} must not be published to the host by default"
        volume = services[name]["volumes"][0].split(":")[0]
        assert volume in load_compose()["volumes"], f"{name} data must live on a named volume"
        assert "healthcheck" in services[name]
    grace = str(services["l2builder"]["stop_grace_period"])
    assert int(grace.rstrip("s")) >= 20


def test_live_venue_is_one_variable() -> None:
    ingest_env = load_compose()["services"]["ingest"]["environment"]
    assert INTERPOLATION.fullmatch(ingest_env["BITMEX_WS_URL"]).group(1) == "BITMEX_WS_URL"  # type: ignore[union-attr]
    assert interpolate(ingest_env["BITMEX_WS_URL"]) == "ws://exchange:8080/realtime"


def test_compose_serves_metrics_and_the_venue_to_other_containers() -> None:
    # A bare process listens on loopback only; in compose, Prometheus and ingest reach them from elsewhere.
    services = load_compose()["services"]
    for name, service in services.items():
        if is_bookstream(service):
            assert service["environment"]["METRICS_HOST"] == "0.0.0.0", name
    command = services["exchange"]["command"]
    assert command[command.index("--host") + 1] == "0.0.0.0"


def test_dockerfile() -> None:
    lines = [line.strip() for line in (REPO / "Dockerfile").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    assert re.fullmatch(r"FROM python:3\.1\d-slim", lines[0])
    copy_deps = next(i for i, line in enumerate(lines) if line.startswith("COPY pyproject.toml"))
    copy_code = next(i for i, line in enumerate(lines) if line.startswith("COPY services"))
    install_deps = next(i for i, line in enumerate(lines) if "pip install ." in line)
    assert copy_deps < install_deps < copy_code, "dependencies must be installed in a layer before the code"
    user = next(line for line in lines if line.startswith("USER "))
    assert user.split()[1] not in ("root", "0")
    assert 'ENTRYPOINT ["bookstream"]' in lines
