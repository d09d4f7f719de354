"""End to end over Streamable HTTP: ``python -m edge_agent gateway --http HOST:PORT`` and the
official ``mcp`` client, against simulated devices on a real Mosquitto."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mcp_types as types
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from edge_agent.gateway.names import resource_uri
from edge_agent.testing.broker import free_port
from edge_agent.testing.fleet_sim import LoopDriver, SimDevice

from .test_gateway_stdio import Notes, tool_names

pytestmark = pytest.mark.anyio

A, B = ("devices/greenhouse/gh1", "gh1"), ("devices/greenhouse/gh2", "gh2")


@pytest.fixture
def anyio_backend():
    return "asyncio"


class GatewayProcess:
    """``python -m edge_agent gateway --http 127.0.0.1:PORT ...`` with its port awaited."""

    def __init__(self, broker_url: str, log_path: Path, *extra: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.log_path = log_path
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "gateway", "--broker", broker_url, "--http", f"127.0.0.1:{self.port}",
             *extra], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(log_path, "ab"))

    async def ready(self, timeout: float = 20.0) -> "GatewayProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                await asyncio.sleep(0.05)
        raise AssertionError(f"gateway not listening after {timeout} s:\n{self.log_path.read_text()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


async def test_http_gateway_lists_calls_reads_subscribes_and_follows_the_fleet(broker, tmp_path):
    driver = LoopDriver(asyncio.get_running_loop())
    a, b = (SimDevice(broker.url, sid, name, driver=driver) for name, sid in (A, B))
    await a.start()
    await b.start()
    gateway = await GatewayProcess(broker.url, tmp_path / "gateway.log").ready()
    notes = Notes()
    try:
        async with streamable_http_client(gateway.url) as (read, write), \
                ClientSession(read, write, message_handler=notes.handler, read_timeout_seconds=30) as s:
            init = await s.initialize()
            assert init.capabilities.tools.list_changed and init.capabilities.resources.subscribe

            names = tool_names(await s.list_tools())
            assert {"devices.greenhouse.gh1__echo", "devices.greenhouse.gh2__set_relay"} <= names
            one = await s.call_tool("devices.greenhouse.gh1__echo", {"text": "to gh1"})
            two = await s.call_tool("devices.greenhouse.gh2__set_relay", {"on": True})
            assert one.structured_content == {"text": "to gh1", "server_id": "gh1"}
            assert two.structured_content == {"on": True} and b.relay is True

            uri = resource_uri(A[0], "sim://temperature")
            assert json.loads((await s.read_resource(uri)).contents[0].text) == {"value": 21.5, "unit": "°C"}
            await s.subscribe_resource(uri)
            a.set_temperature(25.0)
            await notes.wait_for(lambda n: isinstance(n, types.ResourceUpdatedNotification) and n.params.uri == uri)
            assert json.loads((await s.read_resource(uri)).contents[0].text)["value"] == 25.0

            notes.items.clear()
            b.kill()  # no DISCONNECT: the broker publishes the empty retained will
            await notes.wait_for(lambda n: isinstance(n, types.ToolListChangedNotification))
            names = tool_names(await s.list_tools())
            assert "devices.greenhouse.gh1__echo" in names and not any("gh2" in n for n in names)

            notes.items.clear()
            b = b.restarted()
            await b.start()
            await notes.wait_for(lambda n: isinstance(n, types.ToolListChangedNotification))
            assert "devices.greenhouse.gh2__echo" in tool_names(await s.list_tools())
            back = await s.call_tool("devices.greenhouse.gh2__echo", {"text": "back"})
            assert back.structured_content == {"text": "back", "server_id": "gh2"}
    finally:
        assert gateway.stop() == 0, (tmp_path / "gateway.log").read_text()
        await a.stop()
        await b.stop()
        driver.close()
