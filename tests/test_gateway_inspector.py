"""The MCP Inspector's CLI mode (npm ``@modelcontextprotocol/inspector``, pinned in
``tests/node/package.json``, installed by ``make setup`` when Node exists) lists and calls a
device tool through the gateway over stdio: a second, independent MCP client implementation
(the TypeScript SDK)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.testing.fleet_sim import LoopDriver, SimDevice

pytestmark = pytest.mark.anyio

INSPECTOR = Path(__file__).parent / "node" / "node_modules" / ".bin" / "mcp-inspector"


@pytest.fixture
def anyio_backend():
    return "asyncio"


def _skip_reason() -> str | None:
    if shutil.which("node") is None:
        return "Node.js is not installed: the MCP Inspector CLI cannot run"
    if not INSPECTOR.exists():
        return "the MCP Inspector is not installed: run `make setup` (npm ci in tests/node)"
    return None


async def inspector(broker_url: str, *args: str) -> dict:
    """Run ``mcp-inspector --cli ARGS -- python -m edge_agent gateway --broker URL``; its JSON output."""
    proc = await asyncio.create_subprocess_exec(
        str(INSPECTOR), "--cli", *args, "--", sys.executable, "-m", "edge_agent", "gateway", "--broker", broker_url,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, f"inspector failed ({proc.returncode}):\n{out.decode()}\n{err.decode()}"
    return json.loads(out)


@pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")
async def test_inspector_cli_lists_and_calls_a_device_tool_through_the_gateway(broker):
    driver = LoopDriver(asyncio.get_running_loop())
    device = SimDevice(broker.url, "sim-1", "devices/lab/sim-1", driver=driver)
    await device.start()
    try:
        listed = await inspector(broker.url, "--method", "tools/list")
        assert "devices.lab.sim-1__echo" in [t["name"] for t in listed["tools"]]
        # (a variadic --tool-arg goes before --tool-name, or it swallows what follows)
        called = await inspector(broker.url, "--method", "tools/call", "--tool-arg", "text=from the inspector",
                                 "--tool-name", "devices.lab.sim-1__echo")
        assert called["isError"] is False
        assert called["structuredContent"] == {"text": "from the inspector", "server_id": "sim-1"}
    finally:
        await device.stop()
        driver.close()
