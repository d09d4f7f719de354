"""MCP 2026-07-28 (session-less) over MQTT, our extension (docs/architecture.md, "Session-less
MCP over MQTT"), with the official SDK's ``mcp.Client`` in its default mode (``auto``: probe
``server/discover``, fall back to ``initialize``) and ``ClientSession.initialize()`` side by
side: the real agent process and simulated devices, through a real Mosquitto."""

from __future__ import annotations

import asyncio
import re
import time

import anyio
import mcp_types as types
import pytest
from mcp import Client, MCPError

from edge_agent.cloud import connect, discover, mqtt_client
from edge_agent.testing.fleet_sim import LoopDriver, SimDevice

from .agent_process import AgentProcess, write_config
from .test_cloud_transport import SERVER_NAME as PEER_NAME
from .test_cloud_transport import WirePeer

pytestmark = pytest.mark.anyio

NAME = "devices/modern/pi-3"
SID = "modern-pi-3"
DRIVERS = """
[[drivers]]
kind = "relay"
name = "pump_relay"
pin = 17

[[drivers]]
kind = "ds18b20"
name = "soil_temp"
poll_interval = 1
deadband = 0
"""
SIM_NAME = "devices/modern/sim"
VERSIONS = ["2026-07-28", "2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"]


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def agent(broker, tmp_path):
    cfg = write_config(tmp_path / "agent.toml", server_name=NAME, server_id=SID, drivers=DRIVERS)
    proc = AgentProcess(cfg, broker.url, SID, NAME).start()
    yield proc
    proc.stop()


@pytest.fixture
async def sim(broker):
    """A simulated device that announces the session-less extension in its presence."""
    device = SimDevice(broker.url, "sim-m1", SIM_NAME, driver=LoopDriver(asyncio.get_running_loop()))
    device.meta["protocolVersions"] = VERSIONS
    await device.start()
    yield device
    await device.stop()


async def timed_connect(broker_url: str, name: str, **kw) -> float:
    """Seconds to enter ``Client(mqtt_client(...))`` (broker connect, discovery, negotiation)."""
    start = time.perf_counter()
    async with Client(mqtt_client(broker_url, name), **kw):
        return time.perf_counter() - start


async def test_default_client_speaks_2026_07_28_and_connects_fast(broker, agent):
    async with Client(mqtt_client(broker.url, NAME)) as client:
        assert client.session.protocol_version == "2026-07-28"
        assert client.session.discover_result.supported_versions == VERSIONS
        assert client.session.server_info.name == "edge-agent"
        tools = await client.list_tools()  # the SDK checks the 2026 shape: resultType, ttlMs, cacheScope
        assert "pump_relay_on" in {t.name for t in tools.tools}
        on = next(t for t in tools.tools if t.name == "pump_relay_on")  # driver version + schema digest
        assert re.fullmatch(r"\d+\.\d+[^+]*\+[0-9a-f]{8}", on.meta["dev.edge-agent/toolVersion"])
        presence = (await discover(broker.url, NAME))[0]
        assert presence.meta["protocolVersions"] == VERSIONS and presence.meta["catalogDigest"]
        result = await client.call_tool("pump_relay_on", {})
        assert not result.is_error and result.structured_content == {"state": True}
        with pytest.raises(MCPError) as err:
            await client.read_resource("sensor://nowhere")
        assert err.value.error.code == types.INVALID_PARAMS  # 2026-07-28: resource not found is -32602
    # the SDK's probe used to wait 10 s for its timeout: now the best of three is well under 0.5 s
    best = min([await timed_connect(broker.url, NAME) for _ in range(3)])
    assert best < 0.5, f"{best:.3f} s to connect"
    assert "session-less, server/discover" in agent.log()


async def test_handshake_and_session_less_clients_side_by_side(broker, agent):
    async with connect(broker.url, NAME) as legacy, Client(mqtt_client(broker.url, NAME)) as client:
        uri = next(r.uri for r in (await client.list_resources()).resources if "pump_relay" in str(r.uri))
        async with client.listen(resource_subscriptions=[str(uri)]) as sub:
            assert sub.honored.resource_subscriptions == [str(uri)]
            await legacy.call_tool("pump_relay_on", {})  # the handshake client actuates
            with anyio.fail_after(10):
                event = await sub.__anext__()
            assert str(event.uri) == str(uri)
        legacy_result = await legacy.call_tool("pump_relay_off", {})
        assert legacy_result.structured_content == {"state": False}
    async with Client(mqtt_client(broker.url, NAME), mode="legacy") as client:
        assert client.session.protocol_version == "2025-11-25"
        assert (await client.call_tool("pump_relay_on", {})).structured_content == {"state": True}


async def test_listen_gets_list_changes_tagged_and_ends_when_cancelled(broker, sim):
    async with Client(mqtt_client(broker.url, SIM_NAME)) as client:
        assert client.session.protocol_version == "2026-07-28"
        async with client.listen(tools_list_changed=True, resource_subscriptions=["sim://temperature"]) as sub:
            session = next(iter(sim.server.sessions.values()))
            assert session.modern and len(session.listens) == 1
            sim.set_temperature(30.0)
            with anyio.fail_after(10):
                first = await sub.__anext__()
            assert str(first.uri) == "sim://temperature"
            sim.catalog_changed()
            with anyio.fail_after(10):
                second = await sub.__anext__()
            assert type(second).__name__ == "ToolsListChanged"
        # leaving the listen cancels it (notifications/cancelled): the device forgets the stream
        with anyio.fail_after(5):
            while session.listens:
                await anyio.sleep(0.01)
        assert (await client.call_tool("echo", {"text": "still here"})).structured_content["text"] == "still here"
    with anyio.fail_after(5):  # the goodbye on the client presence topic ends the device's state
        while sim.server.sessions:
            await anyio.sleep(0.01)


async def test_unknown_version_is_answered_with_the_supported_ones(broker, sim):
    async with Client(mqtt_client(broker.url, SIM_NAME)) as client:
        with pytest.raises(MCPError) as err:
            await client.session.send_discover("2099-01-01")
        assert err.value.error.code == -32022
        assert err.value.error.data == {"supported": VERSIONS, "requested": "2099-01-01"}


async def test_forgotten_client_opens_again_on_the_control_topic(broker, sim):
    async with Client(mqtt_client(broker.url, SIM_NAME)) as client:
        await client.call_tool("echo", {"text": "a"})
        sim.drop_clients()  # the device forgets it (idle, or its session bound): disconnected on RPC
        with anyio.fail_after(5):
            while sim.server.sessions:
                await anyio.sleep(0.01)
        await anyio.sleep(0.1)  # (the notification reaches the client)
        result = await client.call_tool("echo", {"text": "b"})
        assert result.structured_content["text"] == "b"


def _confirm_set_relay(sim: SimDevice) -> None:
    tool = sim.server.registry.tools["set_relay"]
    tool.meta = {**tool.meta, "dev.edge-agent/confirm": True}


async def test_a_confirm_tool_asks_through_input_required(broker, sim):
    _confirm_set_relay(sim)
    asked: list[str] = []

    async def accept(ctx, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"confirm": True})

    async def decline(ctx, params: types.ElicitRequestParams) -> types.ElicitResult:
        return types.ElicitResult(action="decline")

    async with Client(mqtt_client(broker.url, SIM_NAME), elicitation_callback=accept) as client:
        result = await client.call_tool("set_relay", {"on": True})
        assert not result.is_error and sim.relay is True
        assert len(asked) == 1 and "set_relay" in asked[0] and '"on": true' in asked[0]
        raw = await client.session.call_tool("set_relay", {"on": False}, allow_input_required=True)
        assert isinstance(raw, types.InputRequiredResult) and sim.relay is True  # asked, not run
        with pytest.raises(MCPError) as err:  # someone else's (or a forged) requestState
            await client.session.call_tool("set_relay", {"on": True}, request_state=raw.request_state,
                                           input_responses={"confirm": {"action": "accept", "content": {"confirm": True}}},
                                           allow_input_required=True)
        assert err.value.error.code == types.INVALID_PARAMS and sim.relay is True
    async with Client(mqtt_client(broker.url, SIM_NAME), elicitation_callback=decline) as client:
        result = await client.call_tool("set_relay", {"on": False})
        assert result.is_error and "not confirmed" in result.content[0].text and sim.relay is True
    # a client that cannot be asked (no elicitation capability, or the handshake) runs it as before
    async with Client(mqtt_client(broker.url, SIM_NAME)) as client:
        assert not (await client.call_tool("set_relay", {"on": False})).is_error and sim.relay is False


async def test_handshake_only_peer_still_connects_at_once(broker):
    """A server that announces nothing of the extension (as the EMQX SDKs' servers): the
    transport answers the SDK's discover probe itself, so ``initialize`` follows at once."""
    peer = WirePeer(broker.url).start()
    try:
        start = time.perf_counter()
        async with Client(mqtt_client(broker.url, PEER_NAME)) as client:
            elapsed = time.perf_counter() - start
            assert client.session.protocol_version == "2025-11-25"
            assert [t.name for t in (await client.list_tools()).tools][:1] == ["set_led"]
        assert elapsed < 0.5, f"{elapsed:.3f} s"
        assert not [r for r in peer.received if b"server/discover" in r.payload]  # never on the wire
    finally:
        peer.stop()


async def test_log_messages_only_for_requests_that_opt_in(broker, sim):
    seen: list[types.LoggingMessageNotificationParams] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        seen.append(params)

    async with Client(mqtt_client(broker.url, SIM_NAME), logging_callback=on_log) as client:
        session = next(iter(sim.server.sessions.values()))
        sim.server.log_all("error", "not tied to a request")
        sim.server.log_to(session, "error", "no opt-in", request_level=None)
        sim.server.log_to(session, "info", "below the level", request_level="warning")
        sim.server.log_to(session, "error", "opted in", request_level="warning")
        await client.call_tool("echo", {"text": "flush"})
        with anyio.fail_after(5):
            while not seen:
                await anyio.sleep(0.01)
        assert [p.data for p in seen] == ["opted in"]
