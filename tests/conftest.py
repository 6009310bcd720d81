"""Fixtures: real Redis and MongoDB-protocol servers, `bookstream` subprocesses, the real captures.

Set REDIS_URL, REDIS_CLUSTER_URL or MONGO_CONNECTION_STRING to run the same tests against servers of your
own; every test then works under its own key prefix and database, so it never touches anything else there.

The end-to-end tests that take `redis_target` run twice: on one server and on a Redis Cluster (3 primaries,
3 replicas, started once per session); `service_env` then points the services at that target.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest

from testkit.harness import (
    MongoServer,
    RedisClusterServers,
    RedisServer,
    ServiceProcess,
    base_env,
    free_port,
    stop_all,
)

REPO = Path(__file__).resolve().parents[1]
CAPTURE_CANDIDATES = (REPO.parent / "shared/data/bitmex-2021", Path("/work/shared/data/bitmex-2021"))
STARTED = pytest.StashKey[list[ServiceProcess]]()
"""The `bookstream` processes a test started, so a private server's teardown can stop them first."""


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


def pytest_sessionfinish() -> None:
    stop_all()


@pytest.fixture(scope="session")
def captures_dir() -> Path:
    """The real BitMEX captures (read in place, never copied); skips the test when they are absent."""
    override = os.environ.get("BOOKSTREAM_CAPTURES")
    for candidate in ((Path(override),) if override else CAPTURE_CANDIDATES):
        if (candidate / "2021-04-05.capture").exists():
            return candidate
    pytest.skip("real captures not found (set BOOKSTREAM_CAPTURES to the bitmex-2021 folder)")


def _shared_server(variable: str, server: Callable[[], RedisServer | MongoServer]) -> Iterator[str]:
    """The URL in $`variable`, or that of a private server started for the session and stopped after it."""
    if os.environ.get(variable):
        yield os.environ[variable]
        return
    started = server().start()
    yield started.url
    started.stop()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis URL shared by the session: $REDIS_URL, or a private redis-server."""
    yield from _shared_server("REDIS_URL", lambda: RedisServer(tmp_path_factory.mktemp("redis")))


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """The session's private local Redis Cluster, for tests that change its topology (failover, resharding):
    they leave every slot served, so the tests sharing it by key prefix carry on."""
    cluster = RedisClusterServers(tmp_path_factory.mktemp("redis-cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def redis_cluster_url(request: pytest.FixtureRequest) -> str:
    """A Redis Cluster URL shared by the session: $REDIS_CLUSTER_URL, or the private local cluster's."""
    if os.environ.get("REDIS_CLUSTER_URL"):
        return os.environ["REDIS_CLUSTER_URL"]
    cluster: RedisClusterServers = request.getfixturevalue("redis_cluster")
    return cluster.url


@pytest.fixture(params=["single", "cluster"])
def redis_target(request: pytest.FixtureRequest) -> str:
    """The Redis URL of this run of the test: one server, then a cluster (tests share each, by key prefix)."""
    return str(request.getfixturevalue("redis_url" if request.param == "single" else "redis_cluster_url"))


@pytest.fixture(scope="session")
def mongo_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A MongoDB URL shared by the session: $MONGO_CONNECTION_STRING, or a private nx-27017."""
    yield from _shared_server("MONGO_CONNECTION_STRING", lambda: MongoServer(tmp_path_factory.mktemp("mongo")))


@pytest.fixture
def private_cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisClusterServers]:
    """A cluster of this test's own, whose primaries it may kill; its services are stopped before it."""
    cluster = RedisClusterServers(tmp_path / "cluster").start()
    yield cluster
    stop_services(request.node)
    cluster.stop()


@pytest.fixture
def redis_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server this test may stop, kill and restart."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    stop_services(request.node)
    server.kill()


@pytest.fixture
def mongo_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MongoServer]:
    """A private MongoDB-protocol server this test may restart (needs the local nx-27017)."""
    if os.environ.get("MONGO_CONNECTION_STRING"):
        pytest.skip("restarting the MongoDB server needs the local nx-27017 server")
    server = MongoServer(tmp_path / "mongo").start()
    yield server
    stop_services(request.node)
    server.kill()


@pytest.fixture
def key_prefix() -> str:
    """A key prefix of this test's own, so tests sharing a Redis never see each other's keys."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def mongo_database() -> str:
    return f"bookstream_test_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def service_env(request: pytest.FixtureRequest, mongo_url: str, key_prefix: str,
                mongo_database: str) -> dict[str, str]:
    """Settings for services under test: this test's servers (its `redis_target` when it takes one), prefix
    and database; no metrics port."""
    target = "redis_target" if "redis_target" in request.fixturenames else "redis_url"
    return base_env(REDIS_URL=str(request.getfixturevalue(target)), MONGO_CONNECTION_STRING=mongo_url,
                    KEY_PREFIX=key_prefix, MONGO_DATABASE=mongo_database, METRICS_PORT="0", LOG_LEVEL="INFO")


RunService = Callable[..., ServiceProcess]


def stop_services(node: pytest.Item) -> None:
    """Stop (SIGTERM) what the test started that still runs: before its private servers go, or a service
    would spend its stop waiting for a server that is no longer there."""
    for service in node.stash.get(STARTED, []):
        if service.alive():
            service.terminate(timeout=15)


@pytest.fixture
def run_service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunService]:
    """Start `bookstream <args>` as a real subprocess; `healthy=True` waits for its /healthz.

    Every process is stopped at teardown; when the test failed, their logs are printed so the
    failure report shows what each service said.
    """
    started = request.node.stash.setdefault(STARTED, [])

    def start(*args: str, env: dict[str, str] | None = None, healthy: bool = True,
              name: str | None = None, timeout: float = 30) -> ServiceProcess:
        process_env = dict(env if env is not None else base_env())
        port = free_port()
        process_env["METRICS_PORT"] = str(port)
        process_env.setdefault("METRICS_HOST", "127.0.0.1")
        label = name or f"{args[0]}-{len(started)}"
        service = ServiceProcess(label, args, process_env, tmp_path / f"{label}.log", port)
        started.append(service)
        if healthy:
            service.wait_healthy(timeout)
        return service

    yield start
    stop_services(request.node)
    failed = any(getattr(getattr(request.node, f"report_{when}", None), "failed", False)
                 for when in ("setup", "call"))
    if failed:
        for service in started:
            print(f"\n===== log of {service.name} ({' '.join(service.args)}) =====\n{service.logs()[-20000:]}")
