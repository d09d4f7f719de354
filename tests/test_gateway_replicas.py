"""Three replicas of one server-name behind the gateway (Streamable HTTP, several client
sessions): round-robin spreads the sessions, each session sticks to its replica, and killing
the replica a session is on moves it to another with exactly one failed request."""

from __future__ import annotations

import asyncio
from collections import Counter
from contextlib import AsyncExitStack

import anyio
import pytest
from mcp import ClientSession, MCPError
from mcp.client.streamable_http import streamable_http_client

from edge_agent.testing.fleet_sim import LoopDriver, SimDevice

from .test_gateway_http import GatewayProcess

pytestmark = pytest.mark.anyio

NAME = "devices/pool/worker"
WHOAMI, SLOW = "devices.pool.worker__whoami", "devices.pool.worker__slow"


@pytest.fixture
def anyio_backend():
    return "asyncio"


async def whoami(session: ClientSession) -> str:
    return (await session.call_tool(WHOAMI, {})).structured_content["server_id"]


async def test_round_robin_spreads_sessions_and_failover_costs_one_request(broker, tmp_path):
    driver = LoopDriver(asyncio.get_running_loop())
    replicas = {sid: SimDevice(broker.url, sid, NAME, driver=driver) for sid in ("w-1", "w-2", "w-3")}
    for device in replicas.values():
        await device.start()
    gateway = await GatewayProcess(broker.url, tmp_path / "gateway.log", "--strategy", "round-robin").ready()
    try:
        async with AsyncExitStack() as stack:
            sessions = []
            for _ in range(6):
                read, write = await stack.enter_async_context(streamable_http_client(gateway.url))
                session = await stack.enter_async_context(ClientSession(read, write, read_timeout_seconds=30))
                await session.initialize()
                sessions.append(session)

            # spread: round-robin over the sessions' first calls; sticky: later calls stay put
            placed = [await whoami(s) for s in sessions]
            assert placed == ["w-1", "w-2", "w-3", "w-1", "w-2", "w-3"]
            for s, sid in zip(sessions, placed):
                assert [await whoami(s) for _ in range(3)] == [sid] * 3
            assert Counter(d.calls for d in replicas.values()) == Counter({8: 3})

            # kill w-1 while a call of session 0 is in flight on it
            victim = replicas["w-1"]
            failures: list[Exception] = []

            async def in_flight() -> None:
                try:
                    await sessions[0].call_tool(SLOW, {"seconds": 10, "steps": 100})
                except MCPError as exc:
                    failures.append(exc)

            async with anyio.create_task_group() as tg:
                tg.start_soon(in_flight)
                with anyio.fail_after(5):
                    while victim.calls < 9:
                        await anyio.sleep(0.02)
                victim.kill()
            assert len(failures) == 1
            assert "devices/pool/worker (w-1)" in str(failures[0]) and "offline" in str(failures[0])

            # both sessions that were on w-1 go on elsewhere, without another error
            moved = {i: await whoami(sessions[i]) for i in (0, 3)}
            assert set(moved.values()) <= {"w-2", "w-3"}
            assert [await whoami(sessions[0]) for _ in range(3)] == [moved[0]] * 3
            assert [await whoami(s) for s in sessions[1:3] + sessions[4:]] == ["w-2", "w-3", "w-2", "w-3"]
    finally:
        assert gateway.stop() == 0, (tmp_path / "gateway.log").read_text()
        for device in replicas.values():
            await device.stop()
        driver.close()
