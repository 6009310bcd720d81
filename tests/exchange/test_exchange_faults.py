"""Every fault of `bookstream exchange`, as start-up flags and as `/_faults/*` requests, seen by a client."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

import orjson
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus

from tests.conftest import RunService
from tests.exchange.wire import http_get, open_client, recv_json, recv_until_closed, tables_only
from tests.harness import free_port

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
