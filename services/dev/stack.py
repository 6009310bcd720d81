"""The local stack of `bookstream dev`: Redis, a MongoDB-protocol server, the simulator and the three services.

Start order follows dependencies (servers, then the exchange, then the services that connect to them);
stop order is the reverse, because l2builder writes its last books to MongoDB and top10 and l2builder
leave their consumer groups in Redis when told to stop.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis

from services.dev.processes import (
    Child,
    bookstream_argv,
    find_binary,
    free_port,
    port_open,
    spawn,
    stop_group,
    wait_for,
)
from services.dev.state import DevState
from services.runtime.config import mask_url

SERVICES = ("ingest", "top10", "l2builder")
SERVICE_GRACE_S = 20.0
"""l2builder flushes its books and releases its leases on SIGTERM: give it the time docker compose gives."""
SERVER_GRACE_S = 10.0
START_TIMEOUT_S = 30.0
# Settings the stack decides for its children; the rest of the environment (LOG_LEVEL, FLUSH_INTERVAL, ...)
# passes through.
DECIDED_SETTINGS = ("REDIS_URL", "MONGO_CONNECTION_STRING", "MONGO_DATABASE", "KEY_PREFIX", "BITMEX_WS_URL",
                    "SYMBOLS", "METRICS_HOST", "METRICS_PORT", "INSTANCE_NAME")


@dataclass(frozen=True, slots=True)
class StackOptions:
    symbols: tuple[str, ...]
    rate: float
    seed: int
    data_dir: Path
    persistent: bool
    redis_port: int
    mongo_port: int
    external_mongo_url: str | None
    key_prefix: str
    mongo_database: str


class DevStack:
    """Starts the children in order and stops them in reverse; `start` may be cancelled half-way."""

    def __init__(self, options: StackOptions, environ: dict[str, str]) -> None:
        self.options = options
        self.servers: list[Child] = []
        self.services: list[Child] = []
        self.redis_port = 0
        self.redis_url = ""
        self.mongo_url = options.external_mongo_url or ""
        self.ws_url = ""
        self._environ = {key: value for key, value in environ.items() if key not in DECIDED_SETTINGS}
        self._ports: set[int] = set()
        self.log_dir = options.data_dir / "logs"

    def _port(self, preferred: int = 0) -> int:
        """A free port not yet handed to another child (a port is only bound once the child starts)."""
        port = free_port(preferred)
        while port in self._ports:
            port = free_port()
        self._ports.add(port)
        return port

    def start(self, cancelled: Callable[[], bool]) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        redis_child = self._start_redis()
        mongo = self._start_mongo()
        client = redis.Redis(port=self.redis_port, socket_connect_timeout=0.5, socket_timeout=1)
        try:
            wait_for(lambda: _pings(client), redis_child, START_TIMEOUT_S, cancelled)
        finally:
            client.close()
        if mongo is not None:
            mongo_child, mongo_port = mongo
            wait_for(lambda: port_open(mongo_port), mongo_child, START_TIMEOUT_S, cancelled)

        exchange_port = self._port()
        self.ws_url = f"ws://127.0.0.1:{exchange_port}/realtime"
        exchange = self._start_service("exchange", [
            "--sim", "--host", "127.0.0.1", "--port", str(exchange_port), "--symbols", ",".join(self.options.symbols),
            "--rate", f"{self.options.rate:g}", "--seed", str(self.options.seed)])
        # Ingest would connect, fail and back off; waiting here makes the first connection the good one.
        wait_for(lambda: port_open(exchange_port), exchange, START_TIMEOUT_S, cancelled)
        for name in SERVICES:
            self._start_service(name, [])

    def _start_redis(self) -> Child:
        binary = find_binary("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found on PATH: install it (apt-get install redis-server, "
                               "brew install redis) or run scripts/ensure-redis-server .venv")
        self.redis_port = port = self._port(self.options.redis_port)
        directory = self.options.data_dir / "redis"
        directory.mkdir(parents=True, exist_ok=True)
        child = spawn("redis-server", [
            binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory), "--save", "",
            "--appendonly", "yes" if self.options.persistent else "no"], self.log_dir, death_signal=signal.SIGTERM)
        self.servers.append(child)
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        return child

    def _start_mongo(self) -> tuple[Child, int] | None:
        if self.options.external_mongo_url:
            return None
        binary = find_binary("nx-27017")
        if binary is None:
            raise RuntimeError("nx-27017 not found: install the local extra (pip install -e '.[local]') "
                               "or set MONGO_CONNECTION_STRING to a MongoDB of your own")
        port = self._port(self.options.mongo_port)
        directory = self.options.data_dir / "mongo"
        directory.mkdir(parents=True, exist_ok=True)
        child = spawn("nx-27017", [
            binary, "--data-dir", str(directory), "--host", "127.0.0.1", "-p", str(port),
            "--log-file", str(self.log_dir / "nx-27017.server.log"), "--pid-file", str(directory / "nx.pid")],
            self.log_dir, death_signal=signal.SIGTERM)
        self.servers.append(child)
        self.mongo_url = f"mongodb://127.0.0.1:{port}"
        return child, port

    def _start_service(self, name: str, extra_args: list[str]) -> Child:
        metrics_port = self._port()
        env = dict(self._environ, REDIS_URL=self.redis_url, MONGO_CONNECTION_STRING=self.mongo_url,
                   MONGO_DATABASE=self.options.mongo_database, KEY_PREFIX=self.options.key_prefix,
                   BITMEX_WS_URL=self.ws_url, SYMBOLS=",".join(self.options.symbols), METRICS_HOST="127.0.0.1",
                   METRICS_PORT=str(metrics_port), INSTANCE_NAME=f"dev-{name}")
        child = spawn(name, [*bookstream_argv(name), *extra_args], self.log_dir, env, metrics_port)
        self.services.append(child)
        return child

    def health(self) -> dict[str, str]:
        return {child.name: child.health() for child in self.services}

    def stop(self, hurry: Callable[[], bool]) -> None:
        stop_group(self.services, SERVICE_GRACE_S, hurry)
        stop_group(self.servers, SERVER_GRACE_S, hurry)

    def state(self) -> DevState:
        return DevState(
            pid=os.getpid(), redis_url=self.redis_url, mongo_url=self.mongo_url, key_prefix=self.options.key_prefix,
            mongo_database=self.options.mongo_database, data_dir=str(self.options.data_dir),
            processes={child.name: child.pid for child in (*self.servers, *self.services)},
            metrics_ports={child.name: child.metrics_port for child in self.services if child.metrics_port})

    def describe(self) -> str:
        """Where everything runs, for the first lines of output."""
        metrics = "  ".join(f"{child.name} :{child.metrics_port}" for child in self.services)
        return "\n".join((
            f"bookstream dev: {','.join(self.options.symbols)} at {self.options.rate:g} changes/s "
            f"(seed {self.options.seed})",
            f"  redis     {self.redis_url}   (redis-cli -p {self.redis_port}, key prefix {self.options.key_prefix})",
            f"  mongodb   {mask_url(self.mongo_url)}   (database {self.options.mongo_database})",
            f"  exchange  {self.ws_url}",
            f"  metrics   {metrics}   (http://127.0.0.1:PORT/metrics, /healthz)",
            f"  logs      {self.log_dir}",
            "`bookstream status` in another terminal shows every detail; Ctrl-C stops everything."))


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
