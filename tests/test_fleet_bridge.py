"""Devices behind a site Mosquitto bridged to a central one (docs/fleet.md, "Bridged sites"):
the gateway on the central broker finds, lists, calls and reads them, and sees one go."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from edge_agent.client.discovery import discover
from edge_agent.gateway.command import GatewayOptions, build
from edge_agent.testing.broker import LocalBroker
from edge_agent.testing.fleet_sim import LoopDriver, SimDevice, start_all

from .test_gateway_inprocess import client

pytestmark = pytest.mark.anyio

SITE = "sites/a"


def site_bridge(central_port: int, site: str = SITE) -> str:
    """The site broker's bridge to the central one (a ``connection`` in its mosquitto.conf):
    presence and capability topics of the site's servers go out; control topics of the site's
    servers and every client's presence come in; RPC goes both ways. docs/fleet.md shows it."""
    return "\n".join([
        "connection central",
        f"address 127.0.0.1:{central_port}",
        "bridge_protocol_version mqttv50",
        "cleansession true",
        "restart_timeout 1",
        f"topic $mcp-server/presence/+/{site}/# out 1",
        f"topic $mcp-server/capability/+/{site}/# out 1",
        f"topic $mcp-server/+/{site}/# in 1",
        "topic $mcp-client/# in 1",
        "topic $mcp-rpc/# both 1",
    ]) + "\n"


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def central():
    with LocalBroker() as b:
        yield b


@pytest.fixture
def site(central):
    with LocalBroker(extra_conf=site_bridge(central.port)) as b:
        yield b


async def test_gateway_on_central_broker_serves_devices_on_a_bridged_site(central, site):
    driver = LoopDriver(asyncio.get_running_loop())
    devices = [SimDevice(site.url, f"gh-{i}", f"{SITE}/gh-{i}", driver=driver, profile="greenhouse",
                         location="greenhouse") for i in range(3)]
    await start_all(devices)
    try:
        names = {d.server_name for d in devices}
        with anyio.fail_after(20):  # the bridge connects on its own schedule; retained presence follows
            while {p.server_name for p in await discover(central.url, f"{SITE}/#", until_retained=True)} != names:
                await anyio.sleep(0.2)
        options = GatewayOptions(broker=central.url, server_name_filter="sites/#", ping_interval=0)
        async with build(options) as gw, client(gw) as s:
            tools = [t.name for t in (await s.list_tools()).tools]
            assert sorted(tools) == sorted(f"sites.a.gh-{i}__vent_set" for i in range(3))
            result = await s.call_tool("sites.a.gh-1__vent_set", {"open": True})
            assert result.structured_content == {"open": True}
            assert [d.vent_open for d in devices] == [False, True, False]
            assert devices[1].calls == 1  # RPC "both" ways: no request looped back over the bridge
            devices[2].temperature = 27.5
            reading = await s.read_resource("mcp-mqtt://sites/a/gh-2/sensor%3A%2F%2Fsoil%2Ftemperature")
            assert '"value": 27.5' in reading.contents[0].text

            devices[0].kill()  # its will (empty retained presence) crosses the bridge too
            with anyio.fail_after(20):
                while "sites/a/gh-0" in gw.fleet.server_names():
                    await anyio.sleep(0.05)
            assert sorted(t.name for t in (await s.list_tools()).tools) == [
                "sites.a.gh-1__vent_set", "sites.a.gh-2__vent_set"]
            assert not (await s.call_tool("sites.a.gh-2__vent_set", {"open": True})).is_error
    finally:
        for d in devices:
            d.kill()
        driver.close()
