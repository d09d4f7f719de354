"""MCP 2026-07-28 through the gateway: the official SDK's ``mcp.Client`` in its default mode
(session-less, per-request ``_meta``) next to a handshake ``ClientSession``, against simulated
devices on a real Mosquitto; ``subscriptions/listen`` for the fleet's list changes and resource
updates (the gateway subscribes the devices for the stream's URIs)."""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from mcp import Client

from edge_agent.gateway.command import GatewayOptions, build
from edge_agent.gateway.names import resource_uri
from edge_agent.testing.fleet_sim import LoopDriver, SimDevice

from .test_gateway_inprocess import client as handshake_client

pytestmark = pytest.mark.anyio

NAME, SID = "devices/lab/modern-1", "modern-1"
TOOL = "devices.lab.modern-1__"


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
async def driver():
    d = LoopDriver(asyncio.get_running_loop())
    yield d
    d.close()


@asynccontextmanager
async def gateway(broker_url: str, **options: Any):
    async with build(GatewayOptions(broker=broker_url, **options)) as gw:
        yield gw


async def test_default_client_and_handshake_client_side_by_side(broker, driver):
    sim = SimDevice(broker.url, SID, NAME, driver=driver)
    await sim.start()
    try:
        async with gateway(broker.url) as gw, Client(gw.server) as modern, handshake_client(gw) as legacy:
            assert modern.session.protocol_version == "2026-07-28"
            tools = await modern.list_tools()
            assert TOOL + "echo" in {t.name for t in tools.tools}
            result = await modern.call_tool(TOOL + "echo", {"text": "hi"})
            assert result.structured_content == {"text": "hi", "server_id": SID}
            assert (await legacy.call_tool(TOOL + "echo", {"text": "ho"})).structured_content["text"] == "ho"

            uri = resource_uri(NAME, "sim://temperature")
            async with modern.listen(tools_list_changed=True, resource_subscriptions=[uri]) as sub:
                assert sub.honored.resource_subscriptions == [uri]
                with anyio.fail_after(10):  # the gateway subscribed the device for the stream
                    while "sim://temperature" not in sim.server.sessions[next(iter(sim.server.sessions))].subscriptions:
                        await anyio.sleep(0.02)
                sim.set_temperature(25.0)
                with anyio.fail_after(10):
                    event = await sub.__anext__()
                assert str(event.uri) == uri
                other = SimDevice(broker.url, "modern-2", "devices/lab/modern-2", driver=driver)
                await other.start()  # a new server-name: the tool list changed
                try:
                    with anyio.fail_after(10):
                        event = await sub.__anext__()
                    assert type(event).__name__ == "ToolsListChanged"
                finally:
                    await other.stop()
            with anyio.fail_after(10):  # the stream ended: the device subscription is dropped
                while any(s.subscriptions for s in sim.server.sessions.values()):
                    await anyio.sleep(0.02)
    finally:
        await sim.stop()


async def test_default_client_over_streamable_http(broker, driver, tmp_path):
    """The gateway as a process: the SDK's ``Client(url)`` default mode speaks 2026-07-28 to
    it (per-request, no session), ``mode="legacy"`` the handshake, both fast."""
    from .test_gateway_http import GatewayProcess

    sim = SimDevice(broker.url, SID, NAME, driver=driver)
    await sim.start()
    gw = await GatewayProcess(broker.url, tmp_path / "gateway.log").ready()
    try:
        for mode, version in (("auto", "2026-07-28"), ("legacy", "2025-11-25")):
            start = time.perf_counter()
            async with Client(gw.url, mode=mode) as c:
                elapsed = time.perf_counter() - start
                assert c.session.protocol_version == version
                result = await c.call_tool(TOOL + "echo", {"text": mode})
                assert result.structured_content == {"text": mode, "server_id": SID}
            assert elapsed < 2.0, f"{mode}: {elapsed:.2f} s to connect"
    finally:
        gw.stop()
        await sim.stop()
