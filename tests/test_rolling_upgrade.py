"""Rolling upgrade of one server-name (issue 14 item 4): two replicas at different tool versions
behind the gateway and for the cloud client. A session is pinned to the catalog digest it
listed, so no call reaches a replica whose tool schema it did not list; new sessions get the
newest release; when the last replica of the old release leaves, ``list_changed`` is
announced; a ``dev.edge-agent/deprecated`` note passes through the gateway."""

from __future__ import annotations

import asyncio

import mcp_types as types
import pytest
from mcp import MCPError

from edge_agent.cloud import connect
from edge_agent.gateway.command import GatewayOptions, build
from edge_agent.server.catalog import catalog_digest
from edge_agent.testing.fleet_sim import LoopDriver, SimDevice

from .test_gateway_inprocess import client, wait_until

pytestmark = pytest.mark.anyio

NAME = "devices/pool/pump"
ECHO, WHOAMI = "devices.pool.pump__echo", "devices.pool.pump__whoami"
DEPRECATED = "whoami is removed in 2.0: call echo"


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
async def driver():
    d = LoopDriver(asyncio.get_running_loop())
    yield d
    d.close()


def release(device: SimDevice, version: str, *, loud: bool = False, deprecate: str | None = None) -> SimDevice:
    """Make ``device`` run release ``version`` (2.0 changes echo's schema: ``loud`` is required)."""
    tools = device.server.registry.tools
    for tool in tools.values():
        tool.version = version
    if loud:
        echo = tools["echo"]
        echo.input_schema = {**echo.input_schema, "properties": {**echo.input_schema["properties"],
                                                                 "loud": {"type": "boolean"}},
                             "required": ["text", "loud"]}
    if deprecate:
        tools["whoami"].meta = {**tools["whoami"].meta, "dev.edge-agent/deprecated": deprecate}
    device.meta["version"] = version
    device.catalog_changed()  # presence announces the new catalogDigest
    return device


def echo_entry(listed: types.ListToolsResult) -> types.Tool:
    return next(t for t in listed.tools if t.name == ECHO)


async def test_sessions_stay_on_the_release_they_listed(broker, driver):
    old = release(SimDevice(broker.url, "pump-a", NAME, driver=driver), "1.0", deprecate=DEPRECATED)
    new = release(SimDevice(broker.url, "pump-b", NAME, driver=driver), "2.0", loud=True)
    assert catalog_digest(old.server) != catalog_digest(new.server)
    await old.start()
    notes: list = []
    try:
        async with build(GatewayOptions(broker=broker.url)) as gw, client(gw, notes) as a:
            listed_a = await a.list_tools()
            entry = echo_entry(listed_a)
            assert entry.meta["dev.edge-agent/toolVersion"].startswith("1.0+")
            assert "loud" not in entry.input_schema["properties"]
            whoami = next(t for t in listed_a.tools if t.name == WHOAMI)
            assert whoami.meta["dev.edge-agent/deprecated"] == DEPRECATED  # passed on in the list

            await new.start()  # the rollout begins: a replica of release 2.0 joins
            await wait_until(lambda: len(gw.fleet.replicas_of(NAME)) == 2)
            for i in range(10):
                result = await a.call_tool(ECHO, {"text": f"a{i}"})
                assert result.structured_content["server_id"] == "pump-a"
            called = await a.call_tool(WHOAMI, {})
            assert called.meta["dev.edge-agent/deprecated"] == DEPRECATED  # and with each call
            assert (old.calls, new.calls) == (11, 0)

            async with client(gw) as b:  # a new session lists the newest release and stays there
                entry_b = echo_entry(await b.list_tools())
                assert entry_b.meta["dev.edge-agent/toolVersion"].startswith("2.0+")
                for i in range(5):
                    result = await b.call_tool(ECHO, {"text": f"b{i}", "loud": True})
                    assert not result.is_error and result.structured_content["server_id"] == "pump-b"
                assert (old.calls, new.calls) == (11, 5)

            notes.clear()
            await old.stop()  # the last replica of release 1.0 leaves
            await wait_until(lambda: any(isinstance(n, types.ToolListChangedNotification) for n in notes))
            with pytest.raises(MCPError) as err:  # never sent to release 2.0, whose echo a never listed
                await a.call_tool(ECHO, {"text": "stale"})
            assert err.value.error.code == types.INVALID_PARAMS and "list the tools again" in err.value.error.message
            assert new.calls == 5
            relisted = echo_entry(await a.list_tools())
            assert relisted.meta["dev.edge-agent/toolVersion"].startswith("2.0+")
            result = await a.call_tool(ECHO, {"text": "fresh", "loud": False})
            assert result.structured_content["server_id"] == "pump-b" and new.calls == 6
    finally:
        await old.stop()
        await new.stop()


async def test_cloud_client_takes_the_newest_release(broker, driver):
    old = release(SimDevice(broker.url, "pump-a", NAME, driver=driver), "1.0")
    new = release(SimDevice(broker.url, "pump-b", NAME, driver=driver), "2.0", loud=True)
    await old.start()
    await new.start()
    try:
        for _ in range(6):
            async with connect(broker.url, NAME) as session:
                result = await session.call_tool("whoami", {})
                assert result.structured_content["server_id"] == "pump-b"
    finally:
        await old.stop()
        await new.stop()
