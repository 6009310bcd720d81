"""Every fault of `bookstream exchange`, as start-up flags and as `/_faults/*` requests, seen by a client."""

from __future__ import annotations

import asyncio
import socket
import time
from datetime import datetime
from pathlib import Path

import orjson
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus

from testkit.harness import ServiceProcess, base_env, free_port
from tests.conftest import RunService
from tests.exchange.wire import http_get, open_client, recv_json, recv_until_closed, tables_only

TOPIC = "orderBookL2:XBTUSD"


def start_sim(run_service: RunService, *flags: str, rate: str = "200") -> int:
    port = free_port()
    run_service("exchange", "--sim", "--host", "127.0.0.1", "--port", str(port), "--symbols", "XBTUSD",
                "--rate", rate, *flags)
    return port


def is_table(text: str) -> bool:
    return text.startswith('{"table"') and text.endswith("}")


async def handshake(ws: ClientConnection) -> None:
    """Read the welcome and the ack of the one subscribed topic."""
    assert "info" in await recv_json(ws)
    assert (await recv_json(ws))["subscribe"] == TOPIC


async def timed_frames(ws: ClientConnection, count: int) -> list[tuple[float, str]]:
    return [(time.monotonic(), str(await asyncio.wait_for(ws.recv(), 10))) for _ in range(count)]


def test_drop_after_n_frames_cuts_every_connection_without_a_close_frame(run_service: RunService) -> None:
    port = start_sim(run_service, "--drop-after", "40")

    async def scenario() -> None:
        for _ in range(2):
            async with open_client(port, TOPIC) as ws:
                frames = await recv_until_closed(ws)
                assert sum(map(is_table, frames)) == 40
                assert ws.close_code == 1006, "no closing handshake: the connection was cut"

    asyncio.run(scenario())


def test_drop_every_cuts_connections_at_random_times_around_the_interval(run_service: RunService) -> None:
    port = start_sim(run_service, "--drop-every", "1")

    async def scenario() -> None:
        for _ in range(2):
            started = time.monotonic()
            async with open_client(port, TOPIC) as ws:
                await recv_until_closed(ws)
            assert time.monotonic() - started >= 0.45
            assert ws.close_code == 1006

    asyncio.run(scenario())


def test_reject_answers_the_first_attempts_with_429(run_service: RunService) -> None:
    port = start_sim(run_service, "--reject", "2", "--retry-after", "3")

    async def scenario() -> None:
        for _ in range(2):
            with pytest.raises(InvalidStatus) as rejected:
                async with open_client(port, TOPIC):
                    pass
            response = rejected.value.response
            assert response.status_code == 429 and response.headers["Retry-After"] == "3"
            assert orjson.loads(response.body)["error"]["name"] == "RateLimitError"
        async with open_client(port, TOPIC) as ws:
            await handshake(ws)

    asyncio.run(scenario())


def test_malformed_every_n_frames_adds_a_bad_frame_after_every_nth(run_service: RunService) -> None:
    port = start_sim(run_service, "--malformed-every", "5", rate="500")

    async def scenario() -> list[str]:
        async with open_client(port, TOPIC) as ws:
            await handshake(ws)
            return [text for _, text in await timed_frames(ws, 36)]

    frames = asyncio.run(scenario())
    assert [is_table(text) for text in frames] == ([True] * 5 + [False]) * 6
    bad = [text for text in frames if not is_table(text)]
    assert len(set(bad)) == 3, "several kinds of malformed frames"
    for text in bad:
        with pytest.raises(orjson.JSONDecodeError if not text.startswith("[") else AssertionError):
            assert isinstance(orjson.loads(text), dict)


def test_stall_after_n_frames_holds_everything_back(run_service: RunService) -> None:
    port = start_sim(run_service, "--stall-after", "10", "--stall-for", "1.5", rate="500")

    async def scenario() -> None:
        async with open_client(port, TOPIC) as ws:
            await handshake(ws)
            before = [str(await asyncio.wait_for(ws.recv(), 10)) for _ in range(10)]
            await ws.send("ping")
            text = str(await asyncio.wait_for(ws.recv(), 10))
            received = time.time()
            # The frames carry the time they were made: the stall began right after the tenth one.
            stalled_at = datetime.fromisoformat(tables_only(before)[-1]["data"][0]["timestamp"]).timestamp()
            assert received - stalled_at >= 1.4, "nothing at all for the stall's duration, pong included"
            assert tables_only(before)[0]["action"] == "partial"
            async with asyncio.timeout(15):
                while text != "pong":
                    text = str(await ws.recv())

    asyncio.run(scenario())


def test_error_after_n_frames_sends_an_error_frame_and_carries_on(run_service: RunService) -> None:
    port = start_sim(run_service, "--error-after", "3", rate="500")

    async def scenario() -> None:
        async with open_client(port, TOPIC) as ws:
            await handshake(ws)
            frames = [text for _, text in await timed_frames(ws, 8)]
            assert [is_table(text) for text in frames] == [True] * 3 + [False] + [True] * 4
            error = orjson.loads(frames[3])
            assert error["status"] == 400 and "Injected fault" in error["error"]

    asyncio.run(scenario())


def test_runtime_fault_requests(run_service: RunService) -> None:
    port = start_sim(run_service, rate="300")

    def fault(path: str) -> dict[str, object]:
        status, body, _ = http_get(port, f"/_faults/{path}")
        assert status == 200, body
        assert isinstance(body, dict)
        return body

    async def next_non_table(ws: ClientConnection) -> tuple[float, str]:
        async with asyncio.timeout(15):
            while True:
                text = str(await ws.recv())
                if not is_table(text):
                    return time.monotonic(), text

    async def scenario() -> None:
        async with open_client(port, TOPIC) as ws:
            await handshake(ws)
            await asyncio.to_thread(fault, "error")
            assert orjson.loads((await next_non_table(ws))[1])["status"] == 400
            assert (await asyncio.to_thread(fault, "malformed?count=2"))["clients"] == 1
            await next_non_table(ws)
            await next_non_table(ws)

            asked = time.monotonic()
            await asyncio.to_thread(fault, "stall?seconds=1")
            await ws.send("ping")
            answered, pong = await next_non_table(ws)
            assert pong == "pong" and answered - asked >= 0.9

            assert (await asyncio.to_thread(fault, "reject?count=1"))["rejecting"] == 1
            with pytest.raises(InvalidStatus):
                async with open_client(port, TOPIC):
                    pass
            async with open_client(port, TOPIC) as second:
                await handshake(second)
                assert (await asyncio.to_thread(fault, "drop"))["clients"] == 2
                for connection in (ws, second):
                    assert len(await recv_until_closed(connection)) < 1000
                    assert connection.close_code == 1006

    asyncio.run(scenario())
    assert http_get(port, "/_faults/unplug")[0] == 404
    assert http_get(port, "/_faults/stall?seconds=-1")[0] == 400


@pytest.mark.parametrize("path", [
    "malformed?count=5e7", "malformed?count=1001", "malformed?count=0", "malformed?count=-1", "malformed?count=1.5",
    "malformed?count=abc", "malformed?count=" + "9" * 400, "reject?count=100000", "reject?retry_after=1e12",
    "stall?seconds=1e9", "stall?seconds=nan", "stall?seconds=inf", "stall?seconds=-1", "stall?seconds=301",
])
def test_fault_requests_refuse_values_out_of_bounds(run_service: RunService, path: str) -> None:
    port = start_sim(run_service, rate="50")

    async def scenario() -> None:
        async with open_client(port, TOPIC) as ws:
            await handshake(ws)
            status, body, _ = await asyncio.to_thread(http_get, port, f"/_faults/{path}")
            assert status == 400, body
            message = body["error"]["message"]
            assert len(message) < 120 and ("integer from" in message or "seconds from" in message), message
            # Nothing was injected: the client keeps receiving well-formed table frames only.
            received = [str(await asyncio.wait_for(ws.recv(), 10)) for _ in range(5)]
            assert all(map(is_table, received)), received

    asyncio.run(scenario())
    assert http_get(port, "/_faults/malformed?count=1000")[0] == 200  # the bound itself is accepted
    assert http_get(port, "/api/v1/orderBook/L2?symbol=XBTUSD&depth=1e9")[0] == 400


def test_the_exchange_and_its_metrics_listen_on_loopback_unless_told(tmp_path: Path) -> None:
    def reachable(address: str, port: int) -> bool:
        try:
            socket.create_connection((address, port), 2).close()
        except OSError:
            return False
        return True

    for flags, other_interfaces in (((), False), (("--host", "0.0.0.0"), True)):
        port, metrics_port = free_port(), free_port()
        env = base_env(METRICS_PORT=str(metrics_port))
        env.pop("METRICS_HOST", None)
        exchange = ServiceProcess("exchange", ["exchange", "--sim", "--port", str(port), *flags], env,
                                  tmp_path / f"exchange-{port}.log", metrics_port)
        try:
            exchange.wait_healthy()
            # 127.0.0.2 is this host too, but not the address 127.0.0.1 a loopback-only server listens on.
            assert reachable("127.0.0.1", port) and reachable("127.0.0.2", port) is other_interfaces
            assert not reachable("127.0.0.2", metrics_port)  # METRICS_HOST defaults to 127.0.0.1
        finally:
            exchange.terminate()


def test_a_hostile_client_cannot_forge_or_colour_log_lines(run_service: RunService) -> None:
    port = free_port()
    exchange = run_service("exchange", "--sim", "--port", str(port), "--symbols", "XBTUSD", "--rate", "50")
    forged = "%0D%0Ats%3D1%20level%3Derror%20event%3Dforged%1B%5B2K%00"

    async def scenario() -> None:
        async with open_client(port, f"orderBookL2:XBTUSD{forged}") as ws:
            assert "info" in await recv_json(ws)

    asyncio.run(scenario())
    exchange.wait_log("event=client_connected")
    logged = exchange.logs()
    assert not any(line.startswith("ts=1 ") for line in logged.splitlines())
    assert "\x1b" not in logged and "\x00" not in logged and "\r" not in logged
    assert 'subscribe="orderBookL2:XBTUSD\\r\\nts=1 level=error event=forged\\x1b[2K\\x00"' in logged
