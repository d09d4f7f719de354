"""``edge-agent gateway --expose catalog``: a model-like script that only uses the four fleet tools
(through the official ``mcp`` client) finds every greenhouse with soil temperature above 25 °C
among 1,000 simulated devices and opens their vents; the resource templates answer the same."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any
from urllib.parse import quote

import pytest

from edge_agent.gateway.command import GatewayOptions, build
from edge_agent.testing.fleet_sim import LoopDriver, SimDevice, start_all

from .test_gateway_inprocess import client

pytestmark = pytest.mark.anyio

N = 1000
GREENHOUSES = 250


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
async def farm(broker):
    """1,000 devices: 250 greenhouse controllers (soil temperature 15-32 °C, location
    'greenhouse row R'), the rest ordinary simulated devices in barns and offices."""
    rng = random.Random(7)
    driver = LoopDriver(asyncio.get_running_loop())
    devices = []
    for i in range(N):
        if i < GREENHOUSES:
            d = SimDevice(broker.url, f"gh-{i:04d}", f"devices/farm/gh-{i:04d}", driver=driver, profile="greenhouse",
                          location=f"greenhouse row {i % 10}", description="Greenhouse controller")
            d.temperature = round(rng.uniform(15.0, 32.0), 1)
        else:
            d = SimDevice(broker.url, f"x-{i:04d}", f"devices/farm/x-{i:04d}", driver=driver,
                          location=rng.choice(["barn 1", "barn 2", "office"]))
            d.temperature = round(rng.uniform(15.0, 40.0), 1)  # hot, but no greenhouse
        devices.append(d)
    await start_all(devices, batch=200)
    yield devices
    for d in devices:
        d.kill()
    driver.close()


async def call(session: Any, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    result = await session.call_tool(tool, arguments)
    assert not result.is_error, result.content
    return json.loads(result.content[0].text)  # what a model reads: the text


async def test_model_finds_hot_greenhouses_and_opens_their_vents(broker, farm):
    options = GatewayOptions(broker=broker.url, server_name_filter="devices/farm/#", expose="catalog",
                             ping_interval=0)
    async with build(options) as gw, client(gw) as s:
        listed = await s.list_tools()
        assert [t.name for t in listed.tools] == ["find_devices", "describe_device", "call_device_tool",
                                                  "read_device"]

        # the "model": search, page through, read, decide, act
        found: list[dict[str, Any]] = []
        cursor = None
        while True:
            page = await call(s, "find_devices", {"location": "greenhouse", "sensor": "soil temperature",
                                                  **({"cursor": cursor} if cursor else {})})
            found += page["devices"]
            cursor = page.get("nextCursor")
            if not cursor:
                break
        assert len(found) == GREENHOUSES and page["total"] == GREENHOUSES
        first = await call(s, "describe_device", {"device": found[0]["device"]})
        assert "vent_set" in [t["name"] for t in first["tools"]]
        hot = []
        for device in found:
            readings = (await call(s, "read_device", {"device": device["device"],
                                                      "sensors": ["soil temperature"]}))["readings"]
            assert len(readings) == 1 and readings[0]["unit"] == "°C"
            if readings[0]["value"] > 25:
                hot.append(device["device"])
        for name in hot:
            result = await call(s, "call_device_tool", {"device": name, "tool": "vent_set",
                                                        "arguments": {"open": True}})
            assert result == {"open": True}

        expected = {d.server_name for d in farm[:GREENHOUSES] if d.temperature > 25}
        assert 10 < len(expected) < GREENHOUSES
        assert set(hot) == expected
        assert {d.server_name for d in farm if d.vent_open} == expected
        assert not any(d.calls for d in farm[GREENHOUSES:])  # nothing else was touched
        # the catalog was fetched once per kind of device, not once per device
        assert gw.fleet.catalogs.fetched <= 2

        # the other ways to search, and errors a model can read
        by_unit = await call(s, "find_devices", {"unit": "%", "limit": 1000})
        assert by_unit["total"] == GREENHOUSES
        by_capability = await call(s, "find_devices", {"capability": "relay", "limit": 1000})
        assert by_capability["total"] == N - GREENHOUSES
        by_name = await call(s, "find_devices", {"name": "gh-000", "limit": 1000})
        assert sorted(d["device"] for d in by_name["devices"]) == [f"devices/farm/gh-000{i}" for i in range(10)]
        by_filter = await call(s, "find_devices", {"name": "devices/farm/+", "limit": 1})
        assert by_filter["total"] == N and by_filter["nextCursor"] == "1"
        barns = await call(s, "find_devices", {"query": "barn 2", "limit": 1000})
        assert barns["total"] == sum(d.location == "barn 2" for d in farm)
        wrong = await s.call_tool("call_device_tool", {"device": "devices/farm/nope", "tool": "vent_set"})
        assert wrong.is_error and "no device named 'devices/farm/nope'" in wrong.content[0].text

        # resource templates: the same answers as reads
        templates = [t.uri_template for t in (await s.list_resource_templates()).resource_templates]
        assert "fleet://device/{+device}" in templates
        text = (await s.read_resource("fleet://devices?location=greenhouse&sensor=soil")).contents[0].text
        assert json.loads(text)["total"] == GREENHOUSES
        name = sorted(expected)[0]
        readings = json.loads((await s.read_resource(f"fleet://readings/{quote(name)}")).contents[0].text)
        assert {r["uri"] for r in readings["readings"]} == {"sensor://soil/temperature", "sensor://air/humidity"}
        described = json.loads((await s.read_resource(f"fleet://device/{name}")).contents[0].text)
        assert described["meta"]["location"].startswith("greenhouse row")
