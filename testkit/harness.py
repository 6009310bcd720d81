"""Real servers and real service processes for tests and benchmarks: redis-server, nx-27017 and `bookstream`.

Everything listens on a free loopback port and is stopped by the fixture that started it; `ALL_PROCESSES`
is a last-resort net so an interrupted run still leaves no process behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Self

import redis

from services.core.slots import cluster_node_urls, is_cluster_url, key_slot

ALL_PROCESSES: list[subprocess.Popen[bytes]] = []
BIN_DIR = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll `predicate` until true; fail the test with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _spawn(argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    log = log_path.open("ab")
    process = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               env=env, start_new_session=True)
    log.close()
    ALL_PROCESSES.append(process)
    return process


def _stop(process: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def stop_all() -> None:
    for process in ALL_PROCESSES:
        _stop(process, signal.SIGKILL)


def redis_client(url: str) -> redis.Redis | redis.RedisCluster:
    """A synchronous client of `url`, one server's or a cluster's: what tests read the services' keys with."""
    if not is_cluster_url(url):
        return redis.Redis.from_url(url)
    return redis.RedisCluster.from_url(cluster_node_urls(url)[0])


def node_url(url: str, key: str) -> str:
    """The one-server URL of the node serving `key` (`url` itself when it names one server)."""
    if not is_cluster_url(url):
        return url
    client = redis.Redis.from_url(cluster_node_urls(url)[0])
    try:
        slots: list[list[Any]] = client.cluster("SLOTS")
    finally:
        client.close()
    slot = key_slot(key)
    host, port, *_ = next(primary for first, last, primary, *_ in slots if first <= slot <= last)
    return f"redis://{host.decode()}:{port}/0"


def redis_server_binary() -> str:
    found = shutil.which("redis-server") or shutil.which("redis-server", path=str(BIN_DIR))
    if found is None:
        raise RuntimeError("redis-server not found on PATH; `make test` installs one")
    return found


class ServerProcess:
    """A server child process on a free port with its files in `workdir`; `start` is the server's own."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        _stop(self.process)

    def kill(self) -> None:
        _stop(self.process, signal.SIGKILL)

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()


class RedisServer(ServerProcess):
    """A private redis-server with append-only persistence, so a restart keeps the streams.

    `extra_args` are further redis-server options (a cluster node's, say)."""

    def __init__(self, workdir: Path, extra_args: Sequence[str] = (), port: int | None = None) -> None:
        super().__init__(workdir)
        self.extra_args = list(extra_args)
        if port is not None:
            self.port = port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> Self:
        self.process = _spawn([redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                               "--dir", str(self.workdir), "--save", "", "--appendonly", "yes",
                               "--appendfsync", "everysec", "--protected-mode", "no", *self.extra_args],
                              self.workdir / "redis.log")
        client = redis.Redis.from_url(self.url, socket_timeout=1)

        def ready() -> bool:
            try:
                return bool(client.ping())
            except redis.exceptions.RedisError:
                return False

        try:
            wait_until(ready, 20, f"redis-server on port {self.port}")
        finally:
            client.close()
        return self


CLUSTER_NODE_TIMEOUT_MS = 2000
"""How long cluster nodes wait before calling a silent node failed: short, so a failover test is quick."""


def _free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def _cluster_ok(port: int, masters: int) -> bool:
    """Whether the node says cluster_state:ok and already sees `masters` primaries, every other node as a replica
    (right after joining, a replica-to-be is still listed as a primary without slots)."""
    client = redis.Redis(port=port, socket_timeout=1)
    try:
        info: dict[str, Any] = client.cluster("INFO")
        table: dict[str, dict[str, Any]] = client.cluster("NODES")
    except redis.exceptions.RedisError:
        return False
    finally:
        client.close()
    listed = sum(1 for entry in table.values() if "master" in entry["flags"] and "fail" not in entry["flags"])
    return info.get("cluster_state") == "ok" and listed == masters


class RedisClusterServers:
    """A real local Redis Cluster: `masters` primaries, each with `replicas_per_master` replicas, joined by
    `redis-cli --cluster create`, every node a `RedisServer` (append-only, as the single-node harness)."""

    def __init__(self, workdir: Path, masters: int = 3, replicas_per_master: int = 1) -> None:
        self.workdir = workdir
        self.masters, self.replicas_per_master = masters, replicas_per_master
        self.nodes = [RedisServer(workdir / f"node{index}", port=_free_cluster_port(),
                                  extra_args=["--cluster-enabled", "yes",
                                              "--cluster-config-file", "nodes.conf",
                                              "--cluster-node-timeout", str(CLUSTER_NODE_TIMEOUT_MS),
                                              # A replica's first sync at once, not after Redis's default 5 s.
                                              "--repl-diskless-sync-delay", "0"])
                      for index in range(masters * (1 + replicas_per_master))]

    @property
    def url(self) -> str:
        """The bookstream URL naming this cluster (two seed nodes are enough: the rest are discovered)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes[:2]) + "/"

    def start(self) -> Self:
        for node in self.nodes:
            node.start()
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli not found on PATH; it comes with redis-server (`make test` installs it)")
        subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{node.port}" for node in self.nodes),
                        "--cluster-replicas", str(self.replicas_per_master), "--cluster-yes"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                       timeout=60)
        self.wait_ok()
        self.wait_synced()
        return self

    def wait_synced(self, timeout: float = 30) -> None:
        """Wait until every replica has finished its sync with its primary: until then a failover would
        promote a replica without the primary's data (which no production cluster promotes by itself)."""
        def synced() -> bool:
            for node in self._live():
                client = redis.Redis(port=node.port, socket_timeout=1)
                try:
                    info = client.info("replication")
                except redis.exceptions.RedisError:
                    return False
                finally:
                    client.close()
                if info.get("role") == "slave" and info.get("master_link_status") != "up":
                    return False
            return True

        wait_until(synced, timeout, "every replica in sync with its primary", interval=0.1)

    def wait_ok(self, timeout: float = 30) -> None:
        """Wait until every running node says cluster_state:ok and sees every slot served."""
        def ok() -> bool:
            return all(_cluster_ok(node.port, self.masters) for node in self._live())

        wait_until(ok, timeout, "cluster_state:ok on every node", interval=0.1)

    def primaries(self) -> list[RedisServer]:
        """The nodes serving slots now, as their own CLUSTER NODES says (a failover changes them)."""
        live = self._live()
        table = self._table(live[0])
        ports = {int(address.rsplit(":", 1)[1]) for address, entry in table.items()
                 if "master" in entry["flags"] and "fail" not in entry["flags"] and entry["slots"]}
        return [node for node in live if node.port in ports]

    def owner(self, slot: int) -> RedisServer:
        """The primary serving `slot`, as the first live node sees it."""
        live = self._live()
        for address, entry in self._table(live[0]).items():
            # A range of one slot (left by a resharding) is listed as its lone number.
            if "master" in entry["flags"] and any(int(span[0]) <= slot <= int(span[-1]) for span in entry["slots"]):
                return next(node for node in self.nodes if node.port == int(address.rsplit(":", 1)[1]))
        raise AssertionError(f"no primary serves slot {slot}")

    def node_id(self, node: RedisServer) -> str:
        return str(self._table(node)[f"127.0.0.1:{node.port}"]["node_id"])

    def replica_of(self, primary: RedisServer) -> RedisServer:
        """A replica of `primary`, as a live node sees it (`primary` itself may be dead)."""
        table = self._table(self._live()[0])
        primary_id = str(table[f"127.0.0.1:{primary.port}"]["node_id"])
        ports = {int(address.rsplit(":", 1)[1]) for address, entry in table.items()
                 if entry["master_id"] == primary_id and "fail" not in entry["flags"]}
        return next(node for node in self._live() if node.port in ports)

    def take_over(self, dead: RedisServer) -> RedisServer:
        """Promote a replica of the primary `dead` (killed) at once with CLUSTER FAILOVER TAKEOVER, rather than
        wait for the cluster to notice; returns the new primary once every live node sees it serve."""
        replica = self.replica_of(dead)
        client = redis.Redis(port=replica.port, socket_timeout=5)
        try:
            try:
                client.cluster("FAILOVER", "TAKEOVER")
            except redis.exceptions.ResponseError as exc:
                # The cluster may have promoted it by itself already: nothing left to do.
                if "master" not in str(exc).lower():
                    raise
        finally:
            client.close()

        def promoted() -> bool:
            return all("master" in self._table(node)[f"127.0.0.1:{replica.port}"]["flags"] for node in self._live())

        wait_until(promoted, 20, f"node {replica.port} promoted in place of {dead.port}", 0.1)
        self.wait_ok()
        return replica

    def _live(self) -> list[RedisServer]:
        return [node for node in self.nodes if node.process and node.process.poll() is None]

    def fail_over(self, primary: RedisServer) -> RedisServer:
        """Promote a replica of `primary` with CLUSTER FAILOVER (nothing is lost: it waits for the replica to
        catch up); returns the new primary once every node agrees."""
        replica = self.replica_of(primary)
        client = redis.Redis(port=replica.port, socket_timeout=5)

        def linked() -> bool:
            return client.info("replication").get("master_link_status") == "up"

        def promoted() -> bool:
            return all("master" in self._table(node)[f"127.0.0.1:{replica.port}"]["flags"]
                       and "slave" in self._table(node)[f"127.0.0.1:{primary.port}"]["flags"]
                       for node in self._live())

        try:
            # A manual failover needs the replica in sync, and gives up (silently) after a few seconds
            # when the primary does not pause in time: asked again until it happens.
            wait_until(linked, 30, f"replica {replica.port} in sync with {primary.port}", interval=0.1)
            for attempt in range(3):
                client.cluster("FAILOVER")
                try:
                    wait_until(promoted, 15, f"node {replica.port} promoted in place of {primary.port}", 0.1)
                    break
                except AssertionError:
                    if attempt == 2:
                        raise
        finally:
            client.close()
        self.wait_ok()
        return replica

    def _table(self, node: RedisServer) -> dict[str, dict[str, Any]]:
        client = redis.Redis(port=node.port, socket_timeout=2)
        try:
            table: dict[str, dict[str, Any]] = client.cluster("NODES")
        finally:
            client.close()
        return table

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class MongoServer(ServerProcess):
    """A MongoDB wire-protocol server (nx-27017, SQLite-backed) with its data in a file, kept across restarts."""

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}"

    def start(self) -> Self:
        binary = shutil.which("nx-27017", path=str(BIN_DIR)) or shutil.which("nx-27017")
        if binary is None:
            raise RuntimeError("nx-27017 not found; install the test extra (`make test` does)")
        self.process = _spawn([binary, "--data-dir", str(self.workdir / "data"), "--host", "127.0.0.1",
                               "-p", str(self.port), "--log-file", str(self.workdir / "nx.log"),
                               "--pid-file", str(self.workdir / "nx.pid")], self.workdir / "mongo.log")

        def ready() -> bool:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.5):
                return True
            return False

        wait_until(ready, 20, f"nx-27017 on port {self.port}")
        return self


def bookstream_argv() -> list[str]:
    """The real console script when installed, else the module entry point."""
    script = BIN_DIR / "bookstream"
    return [str(script)] if script.exists() else [sys.executable, "-m", "services.cli"]


class ServiceProcess:
    """One `bookstream <subcommand>` child process with its combined output in a log file."""

    def __init__(self, name: str, args: Sequence[str], env: dict[str, str], log_path: Path,
                 health_port: int | None, command: Sequence[str] | None = None) -> None:
        """`command` runs instead of `bookstream` (a benchmark's launcher with a switch, say)."""
        self.name, self.args, self.env, self.log_path = name, list(args), env, log_path
        self.health_port = health_port
        self.process = _spawn([*(command or bookstream_argv()), *self.args], log_path, env)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def health(self) -> tuple[int, bytes]:
        """`(status, body)` of GET /healthz; status 0 when nothing answers."""
        assert self.health_port, f"{self.name} was started without a health port"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as reply:
                return int(reply.status), reply.read()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read()
        except (OSError, urllib.error.URLError):
            return 0, b""

    def metrics(self) -> str:
        assert self.health_port, f"{self.name} was started without a health port"
        with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/metrics", timeout=2) as reply:
            return str(reply.read().decode())

    def metric(self, name: str, labels: str = "") -> float:
        """Sum of the samples of `name` whose label text contains `labels` (0 when absent)."""
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith(name) and (line[len(name)] in " {") and labels in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    def wait_healthy(self, timeout: float = 30) -> ServiceProcess:
        def healthy() -> bool:
            if not self.alive():
                raise AssertionError(f"{self.name} exited with {self.process.returncode}:\n{self.logs()[-3000:]}")
            return self.health()[0] == 200

        wait_until(healthy, timeout, f"{self.name} /healthz")
        return self

    def wait_log(self, text: str, timeout: float = 30) -> None:
        wait_until(lambda: text in self.logs(), timeout, f"{text!r} in the log of {self.name}")

    def terminate(self, timeout: float = 20) -> int:
        _stop(self.process, signal.SIGTERM, timeout)
        return int(self.process.returncode)

    def kill(self) -> None:
        _stop(self.process, signal.SIGKILL)

    def wait(self, timeout: float = 30) -> int:
        return int(self.process.wait(timeout))


def base_env(**settings: str) -> dict[str, str]:
    """The test process's environment without any bookstream setting, plus `settings`."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("REDIS_URL", "MONGO_CONNECTION_STRING", "SYMBOLS", "KEY_PREFIX", "BITMEX_WS_URL")}
    env.update(settings)
    return env
