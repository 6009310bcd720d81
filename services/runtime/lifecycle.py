"""Process lifecycle shared by the services: event loop choice, signals, health server, clean stop."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from services.runtime.config import ConfigError, Settings
from services.runtime.health import HealthCheck, HealthServer
from services.runtime.logs import EventLog, configure_logging

ServiceMain = Callable[[asyncio.Event], Coroutine[Any, Any, int]]


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency everywhere but Windows
        return None
    return uvloop.new_event_loop


def listen_error(setting: str, host: str, port: int, exc: OSError, remedy: str) -> str:
    """The one-line configuration error of a server that cannot listen: in use, not an address of this host..."""
    reason = os.strerror(exc.errno) if exc.errno else type(exc).__name__  # asyncio's strerror repeats the address
    return f"{setting}={port}: cannot listen on {host}:{port} ({reason}); {remedy}"


def run_service(name: str, settings: Settings, main: ServiceMain, check: HealthCheck) -> int:
    """Run `main(stop)` until it returns; SIGTERM and SIGINT set `stop` so it can flush and hand off.

    The health server runs beside it when `settings.metrics_port` is not 0; a port it cannot listen on is a
    ConfigError (exit code 2), so two services on one host fail with a line that says what to change.
    Objects allocated during start-up are frozen out of the garbage collector's generations so full
    collections stay short.
    """
    configure_logging(settings.log_level)
    log = EventLog(name)

    async def supervise() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        health = None
        if settings.metrics_port:
            health = HealthServer(settings.metrics_host, settings.metrics_port, check)
            try:
                await health.start()
            except OSError as exc:
                raise ConfigError(listen_error("METRICS_PORT", settings.metrics_host, settings.metrics_port, exc,
                                               "set METRICS_PORT (--metrics-port) to a free port, or 0")) from None
        log.info("started", **{field: ",".join(value) if isinstance(value, tuple) else value
                               for field, value in settings.describe(name).items()})
        gc.freeze()
        try:
            code = await main(stop)
        finally:
            if health is not None:
                await health.close()
        log.info("stopped", code=code)
        return code

    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(supervise())
