"""The catalog digest (edge_agent/server/catalog.py): canonical, in the device's retained
presence (``meta["catalogDigest"]``), re-published when the catalog changes; the simulated
fleet does the same."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import anyio
import pytest

from edge_agent import drivers
from edge_agent.cloud import discover
from edge_agent.device import config as cfg
from edge_agent.device.runtime import Agent
from edge_agent.drivers.base import Driver, SensorSpec, ToolSpec, no_arguments
from edge_agent.errors import DriverError
from edge_agent.server.catalog import catalog, catalog_digest, digest_of
from edge_agent.server.mcp import McpServer, ServerInfo
from edge_agent.server.registry import Registry, Tool
from edge_agent.testing.fleet_sim import LoopDriver, SimDevice

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


async def _nothing(args, ctx):
    return None


def _server(*names: str) -> McpServer:
    reg = Registry()
    for name in names:
        reg.add_tool(Tool(name, f"tool {name}", {"type": "object", "properties": {}}, _nothing))
    return McpServer(reg, ServerInfo(name="t", version="1"))


def test_digest_is_sha256_of_canonical_json_of_the_lists():
    server = _server("a", "b")
    cat = catalog(server)
    assert set(cat) == {"tools", "resources", "resourceTemplates", "prompts"}
    assert [t["name"] for t in cat["tools"]] == ["a", "b"]
    canonical = json.dumps(cat, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert catalog_digest(server) == hashlib.sha256(canonical).hexdigest()[:16]
    # key order inside an entry does not matter; list order and content do
    reordered = {k: [dict(reversed(list(e.items()))) for e in v] for k, v in cat.items()}
    assert digest_of(reordered) == catalog_digest(server)
    assert catalog_digest(_server("a", "b")) == catalog_digest(server)
    assert catalog_digest(_server("b", "a")) != catalog_digest(server)
    assert catalog_digest(_server("a", "b", "c")) != catalog_digest(server)
    server.registry.tools["a"].warning = "flaky"  # described as [DEGRADED: ...]
    assert catalog_digest(server) != catalog_digest(_server("a", "b"))


class FilePump(Driver):
    """A driver whose 'hardware' is a file: deleting it is unplugging the device."""

    kind = "test_digest_pump"
    options_schema = {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"],
                      "additionalProperties": False}

    def _hw(self) -> Path:
        p = Path(self.options["path"])
        if not p.exists():
            raise DriverError(f"pump at {p} not responding")
        return p

    def tools(self):
        return [ToolSpec("pulse", "Pulse the pump", no_arguments(), lambda: self._hw().write_text("1"))]

    def sensors(self):
        return [SensorSpec("level", "Pump level", lambda: float(self._hw().read_text() or 0), unit="%",
                           poll_interval=0.1)]


@pytest.fixture
def pump_kind():
    drivers.DRIVER_KINDS[FilePump.kind] = f"{__name__}:FilePump"
    yield
    drivers.DRIVER_KINDS.pop(FilePump.kind, None)


async def _digest(url: str, name: str) -> str | None:
    found = await discover(url, name, timeout=5, until_retained=True)
    return found[0].meta.get("catalogDigest") if found else None


async def _wait_digest(url: str, name: str, not_equal: str | None) -> str | None:
    with anyio.fail_after(15):
        while (digest := await _digest(url, name)) == not_equal:
            await anyio.sleep(0.1)
    return digest


async def test_agent_presence_carries_digest_and_republishes_on_change(broker, tmp_path, pump_kind):
    hw = tmp_path / "pump"
    hw.write_text("0")
    config = cfg.from_dict({
        "device": {"server_name": "devices/test/pump", "server_id": "pump-1", "simulate": True,
                   "state_dir": str(tmp_path / "state")},
        "drivers": [{"kind": FilePump.kind, "name": "pump", "path": str(hw)}],
    })
    agent = Agent(config, broker_url=broker.url)
    await agent.start(connect_timeout=10)
    try:
        first = await _digest(broker.url, "devices/test/pump")
        assert first is not None and first == catalog_digest(agent.server)
        hw.unlink()  # the poll fails: the driver is degraded, its tool described so
        degraded = await _wait_digest(broker.url, "devices/test/pump", first)
        assert degraded == catalog_digest(agent.server) and degraded != first
        hw.write_text("3")  # recovered: back to the first catalog
        assert await _wait_digest(broker.url, "devices/test/pump", degraded) == first
    finally:
        await agent.stop()


async def test_simulated_device_digest_and_catalog_change(broker):
    driver = LoopDriver()
    a = SimDevice(broker.url, "sim-a", "devices/sim/a", driver=driver)
    b = SimDevice(broker.url, "sim-b", "devices/sim/b", driver=driver)
    await a.start()
    await b.start()
    try:
        found = {p.server_id: p.meta for p in await discover(broker.url, "devices/sim/+", until_retained=True)}
        assert found["sim-a"]["catalogDigest"] == found["sim-b"]["catalogDigest"] == catalog_digest(a.server)
        a.server.registry.add_tool(Tool("extra", "An extra tool", {"type": "object", "properties": {}}, _nothing))
        a.catalog_changed()
        with anyio.fail_after(10):
            while True:
                found = {p.server_id: p.meta for p in await discover(broker.url, "devices/sim/+", until_retained=True)}
                if found["sim-a"]["catalogDigest"] != found["sim-b"]["catalogDigest"]:
                    break
        assert found["sim-a"]["catalogDigest"] == catalog_digest(a.server)
    finally:
        await a.stop()
        await b.stop()
