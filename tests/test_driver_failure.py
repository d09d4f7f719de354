"""A driver whose hardware fails and comes back: the agent keeps serving, the caller gets
``isError``, subscribers get ``list_changed`` and a log message, and ``device://health`` tells."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from edge_agent import drivers
from edge_agent.cloud import connect
from edge_agent.device import config as cfg
from edge_agent.device.runtime import Agent
from edge_agent.drivers.base import Driver, SensorSpec, ToolSpec, no_arguments
from edge_agent.errors import DriverError

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


class FileBackedPump(Driver):
    """A test driver whose 'hardware' is a file: deleting it is unplugging the device."""

    kind = "test_file_pump"
    options_schema = {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"],
                      "additionalProperties": False}

    def _hw(self) -> Path:
        p = Path(self.options["path"])
        if not p.exists():
            raise DriverError(f"pump controller at {p} not responding (unplugged?)")
        return p

    def tools(self):
        def pulse():
            self._hw().write_text("1")
            return {"pulsed": True}

        return [ToolSpec("pulse", "Pulse the pump", no_arguments(), pulse,
                         output_schema={"type": "object", "properties": {"pulsed": {"type": "boolean"}}})]

    def sensors(self):
        return [SensorSpec("level", "Pump level", lambda: float(self._hw().read_text() or 0), unit="%",
                           poll_interval=0.2)]


@pytest.fixture
def pump_kind():
    drivers.DRIVER_KINDS[FileBackedPump.kind] = f"{__name__}:FileBackedPump"
    yield
    drivers.DRIVER_KINDS.pop(FileBackedPump.kind, None)


async def test_failing_driver_keeps_agent_alive_and_recovers(broker, tmp_path, pump_kind):
    hw = tmp_path / "pump"
    hw.write_text("0")
    config = cfg.from_dict({
        "device": {"server_name": "devices/test/pump", "server_id": "pump-1", "simulate": True,
                   "state_dir": str(tmp_path / "state")},
        "drivers": [{"kind": "test_file_pump", "name": "pump", "path": str(hw)},
                    {"kind": "relay", "name": "valve", "pin": 5}],
    })
    agent = Agent(config, broker_url=broker.url)
    await agent.start(connect_timeout=10)
    seen: list[str] = []
    logs: list[str] = []

    async def handler(message):
        root = getattr(message, "root", message)
        method = getattr(root, "method", "")
        seen.append(method)
        if method == "notifications/message":
            logs.append(f"{root.params.level}: {root.params.data}")

    async def wait_until(cond, what: str):
        with anyio.fail_after(10, ):
            while not cond():
                await anyio.sleep(0.05)

    try:
        async with connect(broker.url, "devices/test/pump", message_handler=handler) as session:
            await session.set_logging_level("info")
            assert not (await session.call_tool("pump_pulse", {})).is_error

            hw.unlink()  # unplugged
            failed = await session.call_tool("pump_pulse", {})
            assert failed.is_error and "not responding" in failed.content[0].text
            await wait_until(lambda: "notifications/tools/list_changed" in seen, "list_changed")
            await wait_until(lambda: any("pump failed" in line for line in logs), "error log")
            health = json.loads((await session.read_resource("device://health")).contents[0].text)
            assert health["status"] == "degraded"
            assert health["drivers"]["pump"]["status"] == "degraded" and "not responding" in health["drivers"]["pump"]["error"]
            assert health["drivers"]["valve"]["status"] == "ok"
            tools = {t.name: t for t in (await session.list_tools()).tools}
            assert tools["pump_pulse"].description.startswith("[DEGRADED")
            # the other driver is unaffected, and a stale reading says so
            assert not (await session.call_tool("valve_on", {})).is_error
            level = json.loads((await session.read_resource("sensor://pump/level")).contents[0].text)
            assert level.get("stale") is True and "not responding" in level["error"]

            seen.clear()
            hw.write_text("42")  # plugged back in
            await wait_until(lambda: "notifications/tools/list_changed" in seen, "list_changed on recovery")
            health = json.loads((await session.read_resource("device://health")).contents[0].text)
            assert health["status"] == "ok" and health["drivers"]["pump"]["failures"] >= 1
            assert not (await session.call_tool("pump_pulse", {})).is_error
            tools = {t.name: t for t in (await session.list_tools()).tools}
            assert not tools["pump_pulse"].description.startswith("[DEGRADED")
    finally:
        await agent.stop()


async def test_driver_that_cannot_start_is_reported(broker, tmp_path):
    config = cfg.from_dict({
        "device": {"server_name": "devices/test/w1", "server_id": "w1-1", "simulate": False,
                   "state_dir": str(tmp_path / "state")},
        "drivers": [{"kind": "ds18b20", "name": "soil", "device_id": "28-000000000000"}],
    })
    agent = Agent(config, broker_url=broker.url)
    await agent.start(connect_timeout=10)
    try:
        async with connect(broker.url, "devices/test/w1") as session:
            health = json.loads((await session.read_resource("device://health")).contents[0].text)
            assert health["drivers"]["soil"]["status"] in ("failed", "degraded")
            assert "28-000000000000" in health["drivers"]["soil"]["error"]
            await session.send_ping()
    finally:
        await agent.stop()
