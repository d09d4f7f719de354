"""Sensors for tools-only hosts (issue 14 item 3): the demo device's readings as read-only tools
(``<driver>_read``, ``device_state``) with ``readOnlyHint``, an ``outputSchema`` and units, over
MQTT to the official ``mcp`` client; RBAC as for the resources they mirror; off per driver."""

from __future__ import annotations

import tomllib
from importlib import resources

import anyio
import pytest
from mcp import MCPError

from edge_agent.cloud import connect
from edge_agent.device import config as cfg
from edge_agent.device.runtime import Agent

NAME = "devices/greenhouse/gh3-pi"


def demo_data(tmp_path, broker_url: str, **extra) -> dict:
    pkg = resources.files("edge_agent.device")
    data = tomllib.loads(pkg.joinpath("demo.toml").read_text())
    data["drivers"] = tomllib.loads(pkg.joinpath("demo_drivers.toml").read_text())["drivers"]
    data["device"]["state_dir"] = str(tmp_path / "state")
    data["broker"]["urls"] = [broker_url]
    data.update(extra)
    return data


@pytest.fixture
def anyio_backend():
    return "asyncio"


# a tools-only client: its role may call (read-only) tools but no resources/* method at all
TOOLS_ONLY = {"default_role": "viewer",
              "roles": [{"name": "tools_only", "allowed_methods": ["tools/list", "tools/call"],
                         "allowed_tools": "read_only", "allowed_resources": "all"},
                        {"name": "soil_only", "allowed_tools": "read_only",
                         "allowed_resources": ["sensor://soil_temp/*"]}],
              "rules": [{"client_id": "tools-only-*", "role": "tools_only"},
                        {"client_id": "soil-only-*", "role": "soil_only"}]}


@pytest.mark.anyio
async def test_tools_only_client_gets_every_reading_with_its_unit(broker, tmp_path):
    agent = Agent(cfg.from_dict(demo_data(tmp_path, broker.url, rbac=TOOLS_ONLY)))
    await agent.start()
    try:
        channels = agent.channels
        drivers_with_sensors = sorted({ch.driver for ch in channels.values()})
        assert len(channels) >= 15 and len(drivers_with_sensors) >= 10
        async with connect(broker.url, NAME, client_id="tools-only-1") as session:
            with pytest.raises(MCPError, match="Forbidden"):  # really tools-only: resources/* are refused
                await session.read_resource("sensor://soil_temp/temperature")
            tools = {t.name: t for t in (await session.list_tools()).tools}
            for driver in drivers_with_sensors:
                tool = tools[f"{driver}_read"]
                assert tool.annotations is not None and tool.annotations.read_only_hint is True
                assert tool.output_schema and "readings" in tool.output_schema["properties"]
            assert tools["device_state"].annotations.read_only_hint is True
            assert "pump_relay_on" not in tools  # the role lists read-only tools only

            state = await session.call_tool("device_state", {})  # the SDK checks it against outputSchema
            assert not state.is_error, state
            got = {r["uri"]: r for r in state.structured_content["readings"]}
            assert set(got) == set(channels), set(channels) ^ set(got)
            for uri, ch in channels.items():
                assert got[uri]["unit"] == ch.unit, uri
                assert got[uri]["timestamp"] and got[uri]["age_s"] is not None and "stale" in got[uri], got[uri]
            assert got["sensor://soil_temp/temperature"]["unit"] == "°C"
            assert state.structured_content["withheld"] == 0

            soil = await session.call_tool("soil_temp_read", {})
            assert not soil.is_error, soil
            s = soil.structured_content
            assert s["unit"] == "°C" and isinstance(s["value"], float) and s["stale"] is False
            assert 0 <= s["age_s"] < 5 and s["readings"][0]["uri"] == "sensor://soil_temp/temperature"
            air = (await session.call_tool("air_read", {})).structured_content
            assert {r["sensor"]: r["unit"] for r in air["readings"]} == {
                ch.name: ch.unit for ch in channels.values() if ch.driver == "air"}
            print(f"\ntools-only client: {len(got)} readings of {len(drivers_with_sensors)} drivers, each with its unit")
    finally:
        await agent.stop()


@pytest.mark.anyio
async def test_sensor_tools_obey_resource_rbac_and_can_be_turned_off(broker, tmp_path):
    data = demo_data(tmp_path, broker.url, rbac=TOOLS_ONLY)
    for d in data["drivers"]:
        if d["name"] == "water_level":
            d["sensor_tools"] = False
    agent = Agent(cfg.from_dict(data))
    await agent.start()
    try:
        async with connect(broker.url, NAME, client_id="soil-only-1") as session:
            tools = {t.name for t in (await session.list_tools()).tools}
            assert "water_level_read" not in tools and "soil_temp_read" in tools  # off for that driver
            assert "air_read" not in tools  # the role may read none of its resources
            assert not (await session.call_tool("soil_temp_read", {})).is_error
            with pytest.raises(MCPError, match="Forbidden") as exc:
                await session.call_tool("air_read", {})
            assert exc.value.error.code == -32003
            with pytest.raises(MCPError, match="Forbidden"):  # as for the resource it mirrors
                await session.read_resource("sensor://air/temperature")
            state = (await session.call_tool("device_state", {})).structured_content
            assert {r["driver"] for r in state["readings"]} == {"soil_temp"}
            others = [ch for ch in agent.channels.values() if ch.driver not in ("soil_temp", "water_level")]
            assert state["withheld"] == len(others)
            with anyio.fail_after(10):
                await session.call_tool("soil_temp_read", {})
    finally:
        await agent.stop()
