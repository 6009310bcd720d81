"""Process lifecycle shared by the services: event loop choice, signals, health server, clean stop."""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from services.common.config import Settings
from services.common.health import HealthCheck, HealthServer
from services.common.logs import EventLog, configure_logging

ServiceMain = Callable[[asyncio.Event], Coroutine[Any, Any, int]]


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency everywhere but Windows
        return None
    return uvloop.new_event_loop


def run_service(name: str, settings: Settings, main: ServiceMain, check: HealthCheck) -> int:
    """Run `main(stop)` until it returns; SIGTERM and SIGINT set `stop` so it can flush and hand off.

    The health server runs beside it when `settings.metrics_port` is not 0. Objects allocated during
    start-up are frozen out of the garbage collector's generations so full collections stay short.
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
            await health.start()
        log.info("started", instance=settings.instance_name, metrics_port=settings.metrics_port,
                 **{k: v for k, v in settings.describe().items() if k in ("redis_url", "key_prefix")})
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
