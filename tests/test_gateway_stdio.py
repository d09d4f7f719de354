"""End to end over stdio: the official ``mcp`` client spawns ``python -m edge_agent gateway``,
which reaches a real agent process and a simulated device through a real Mosquitto."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from edge_agent.gateway.names import resource_uri
from edge_agent.testing.fleet_sim import LoopDriver, SimDevice

from .agent_process import AgentProcess, write_config

pytestmark = pytest.mark.anyio

AGENT_NAME, AGENT_ID = "devices/greenhouse/gh3-pi", "gh3-pi"
AGENT_TOOL = "devices.greenhouse.gh3-pi__"
SIM_NAME, SIM_ID = "devices/lab/sim-1", "sim-1"
SIM_TOOL = "devices.lab.sim-1__"
DRIVERS = """
[[drivers]]
kind = "relay"
name = "pump_relay"
pin = 17
"""


@pytest.fixture
def anyio_backend():
    return "asyncio"


class Notes:
    """Every notification the client receives, and a way to wait for one."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    async def handler(self, message: Any) -> None:
        self.items.append(message)

    async def wait_for(self, predicate, timeout: float = 10.0) -> Any:
        with anyio.fail_after(timeout):
            while True:
                for item in self.items:
                    if predicate(item):
                        return item
                await anyio.sleep(0.02)


def gateway_params(broker_url: str, *extra: str) -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable,
                                 args=["-m", "edge_agent", "gateway", "--broker", broker_url, "--filter", "devices/#",
                                       *extra])


def tool_names(result: types.ListToolsResult) -> set[str]:
    return {t.name for t in result.tools}


async def test_stdio_gateway_lists_calls_reads_subscribes_and_follows_the_fleet(broker, tmp_path):
    agent = AgentProcess(write_config(tmp_path / "agent.toml", server_name=AGENT_NAME, server_id=AGENT_ID,
                                      drivers=DRIVERS), broker.url, AGENT_ID, AGENT_NAME).start()
    driver = LoopDriver(asyncio.get_running_loop())
    sim = SimDevice(broker.url, SIM_ID, SIM_NAME, driver=driver)
    await sim.start()
    notes = Notes()
    errlog = open(tmp_path / "gateway.log", "w")
    try:
        async with stdio_client(gateway_params(broker.url), errlog=errlog) as (read, write), \
                ClientSession(read, write, message_handler=notes.handler, read_timeout_seconds=30) as s:
            init = await s.initialize()
            assert init.capabilities.tools.list_changed and init.capabilities.resources.subscribe

            # tools of both devices, namespaced; one call on each
            names = tool_names(await s.list_tools())
            assert {AGENT_TOOL + "pump_relay_on", AGENT_TOOL + "pump_relay_off", SIM_TOOL + "echo"} <= names
            on = await s.call_tool(AGENT_TOOL + "pump_relay_on", {})
            assert not on.is_error, on
            echo = await s.call_tool(SIM_TOOL + "echo", {"text": "hello"})
            assert echo.structured_content == {"text": "hello", "server_id": SIM_ID}

            # read and subscribe to a resource of the real agent
            uri = resource_uri(AGENT_NAME, "sensor://pump_relay/state")
            assert uri in {r.uri for r in (await s.list_resources()).resources}
            state = await s.read_resource(uri)
            assert json.loads(state.contents[0].text)["value"] is True and state.contents[0].uri == uri
            await s.subscribe_resource(uri)
            await s.call_tool(AGENT_TOOL + "pump_relay_off", {})
            await notes.wait_for(lambda n: isinstance(n, types.ResourceUpdatedNotification) and n.params.uri == uri)
            assert json.loads((await s.read_resource(uri)).contents[0].text)["value"] is False

            # the agent is killed: list_changed, and its tools are gone
            notes.items.clear()
            agent.signal(signal.SIGKILL)
            agent.wait()
            await notes.wait_for(lambda n: isinstance(n, types.ToolListChangedNotification))
            names = tool_names(await s.list_tools())
            assert SIM_TOOL + "echo" in names and not any(n.startswith(AGENT_TOOL) for n in names)

            # ... and comes back: list_changed again, tools back, calls work, the subscription too
            notes.items.clear()
            agent.start()
            await notes.wait_for(lambda n: isinstance(n, types.ToolListChangedNotification), timeout=20)
            assert AGENT_TOOL + "pump_relay_on" in tool_names(await s.list_tools())
            again = await s.call_tool(AGENT_TOOL + "pump_relay_on", {})
            assert not again.is_error, again
            await notes.wait_for(lambda n: isinstance(n, types.ResourceUpdatedNotification) and n.params.uri == uri)
    finally:
        errlog.close()
        agent.stop()
        await sim.stop()
        driver.close()
