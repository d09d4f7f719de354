"""End to end: the real agent process, a real Mosquitto, the official MCP client over our
MQTT transport (and raw paho where the wire itself is the subject)."""

from __future__ import annotations

import json
import signal
import time

import anyio
import mcp_types as types
import pytest
from mcp import MCPError

from edge_agent.cloud import connect, discover

from .agent_process import AgentProcess, RawSubscriber, write_config

pytestmark = pytest.mark.anyio

NAME = "devices/bench/pi-7"
SID = "bench-pi-7"
DRIVERS = """
[[drivers]]
kind = "relay"
name = "pump_relay"
pin = 17

[[drivers]]
kind = "led"
name = "status_led"
pin = 27

[[drivers]]
kind = "servo"
name = "vent_servo"
pin = 18

[[drivers]]
kind = "ds18b20"
name = "soil_temp"
poll_interval = 1
deadband = 0

[[drivers]]
kind = "system"
name = "system"
"""


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def agent(broker, tmp_path):
    cfg = write_config(tmp_path / "agent.toml", server_name=NAME, server_id=SID, drivers=DRIVERS, page_size=4)
    proc = AgentProcess(cfg, broker.url, SID, NAME).start()
    yield proc
    proc.stop()


def text_of(result) -> str:
    return " ".join(getattr(c, "text", "") for c in result.content)


async def test_presence_is_retained_with_spec_fields_and_user_properties(broker, agent):
    sub = RawSubscriber(broker.url, [f"$mcp-server/presence/+/{NAME}"])
    try:
        msg = sub.wait_for(lambda m: m.retain and m.payload)
    finally:
        sub.close()
    assert msg.topic == f"$mcp-server/presence/{SID}/{NAME}"
    online = json.loads(msg.payload)
    assert online["method"] == "notifications/server/online"
    assert online["params"]["server_name"] == NAME
    assert online["params"]["description"] == "Test bench device"
    assert online["params"]["meta"]["implementation"] == "edge-agent"
    props = dict(msg.properties.UserProperty)
    assert props == {"MCP-COMPONENT-TYPE": "mcp-server", "MCP-MQTT-CLIENT-ID": SID}
    found = await discover(broker.url, "devices/#")
    assert [(s.server_id, s.server_name) for s in found] == [(SID, NAME)]


async def test_sigkill_clears_presence_through_the_will(broker, agent):
    agent.signal(signal.SIGKILL)
    agent.wait()
    # Mosquitto sends the will once it notices the dead TCP connection (immediately on RST).
    sub = RawSubscriber(broker.url, [f"$mcp-server/presence/+/{NAME}"])
    try:
        time.sleep(1.0)
        retained = [m for m in sub.messages if m.retain]
    finally:
        sub.close()
    assert retained == [], "a retained online message survived the agent's death"
    assert await discover(broker.url, "devices/#") == []


async def test_sigterm_clears_presence_and_tells_clients(broker, agent):
    events: list[object] = []

    async def handler(message):
        events.append(message)

    async with connect(broker.url, NAME, message_handler=handler) as session:
        agent.signal(signal.SIGTERM)
        assert agent.wait() == 0
        with anyio.fail_after(10):
            while not any(isinstance(e, Exception) for e in events):
                await anyio.sleep(0.05)
        with pytest.raises(Exception):
            with anyio.fail_after(10):
                await session.send_ping()
    gone = [e for e in events if isinstance(e, Exception)][0]
    assert NAME in str(gone), gone
    assert await discover(broker.url, "devices/#") == []


async def test_tools_list_call_and_validation(broker, agent):
    async with connect(broker.url, NAME) as session:
        init = session.initialize_result
        assert init.server_info.name == "edge-agent" and init.server_info.version
        assert init.capabilities.tools.list_changed and init.capabilities.resources.subscribe
        # pagination: page_size is 4 in this config, so several pages
        tools, cursor, pages = [], None, 0
        while True:
            page = await session.list_tools(params=types.PaginatedRequestParams(cursor=cursor) if cursor else None)
            tools += page.tools
            pages += 1
            cursor = page.next_cursor
            if not cursor:
                break
        assert pages > 1
        by_name = {t.name: t for t in tools}
        assert {"pump_relay_on", "pump_relay_off", "pump_relay_set", "status_led_blink", "vent_servo_set_angle"} <= set(by_name)
        assert by_name["pump_relay_on"].annotations.destructive_hint is True
        angle = by_name["vent_servo_set_angle"].input_schema["properties"]["angle"]
        assert angle["minimum"] == -90 and angle["maximum"] == 90

        on = await session.call_tool("pump_relay_on", {})
        assert not on.is_error
        state = json.loads((await session.read_resource("sensor://pump_relay/state")).contents[0].text)
        assert state["value"] is True

        too_far = await session.call_tool("vent_servo_set_angle", {"angle": 500})
        assert too_far.is_error and "500" in text_of(too_far)
        wrong_type = await session.call_tool("vent_servo_set_angle", {"angle": "left"})
        assert wrong_type.is_error
        moved = await session.call_tool("vent_servo_set_angle", {"angle": 30})
        assert not moved.is_error
        with pytest.raises(MCPError) as exc:
            await session.call_tool("no_such_tool", {})
        assert exc.value.error.code == -32602
        await session.send_ping()


async def test_resources_units_history_and_subscription(broker, agent):
    updates: list[str] = []

    async def handler(message):
        if isinstance(message, types.ServerNotification) and isinstance(message, types.ServerNotification):
            root = getattr(message, "root", message)
            if getattr(root, "method", "") == "notifications/resources/updated":
                updates.append(str(root.params.uri))

    async with connect(broker.url, NAME, message_handler=handler) as session:
        resources = []
        cursor = None
        while True:
            page = await session.list_resources(params=types.PaginatedRequestParams(cursor=cursor) if cursor else None)
            resources += page.resources
            cursor = page.next_cursor
            if not cursor:
                break
        uris = {str(r.uri) for r in resources}
        assert {"sensor://soil_temp/temperature", "sensor://pump_relay/state", "device://health", "device://info"} <= uris
        soil = json.loads((await session.read_resource("sensor://soil_temp/temperature")).contents[0].text)
        assert soil["unit"] == "°C" and isinstance(soil["value"], float) and soil["timestamp"].endswith("Z")
        templates = (await session.list_resource_templates()).resource_templates
        assert templates[0].uri_template == "sensor://{driver}/{sensor}/history"

        await session.subscribe_resource("sensor://pump_relay/state")
        await session.call_tool("pump_relay_on", {})
        await session.call_tool("pump_relay_off", {})
        with anyio.fail_after(10):
            while updates.count("sensor://pump_relay/state") < 2:
                await anyio.sleep(0.05)
        history = json.loads((await session.read_resource("sensor://pump_relay/state/history")).contents[0].text)
        assert [s["value"] for s in history["samples"]][-2:] == [True, False]
        limited = json.loads((await session.read_resource("sensor://pump_relay/state/history?limit=1")).contents[0].text)
        assert len(limited["samples"]) == 1
        await session.unsubscribe_resource("sensor://pump_relay/state")
        with pytest.raises(MCPError) as exc:
            await session.read_resource("sensor://nope/none")
        assert exc.value.error.code == -32002


async def test_prompts_and_completion(broker, agent):
    async with connect(broker.url, NAME) as session:
        prompts = {p.name: p for p in (await session.list_prompts()).prompts}
        assert "device_health_report" in prompts
        got = await session.get_prompt("device_health_report", {"focus": "soil_temp", "detail": "full"})
        text = got.messages[0].content.text
        assert NAME in text and "soil_temp" in text and "°C" in text
        with pytest.raises(MCPError):
            await session.get_prompt("device_health_report", {"focus": "no_such_driver"})
        done = await session.complete(types.PromptReference(type="ref/prompt", name="device_health_report"),
                                      {"name": "focus", "value": "pu"})
        assert done.completion.values == ["pump_relay"]


async def test_progress_logging_and_cancellation(broker, agent):
    progress: list[float] = []
    logs: list[str] = []

    async def on_progress(p, total, message):
        progress.append(p)

    async def handler(message):
        root = getattr(message, "root", message)
        if getattr(root, "method", "") == "notifications/message":
            logs.append(str(root.params.data))

    async with connect(broker.url, NAME, message_handler=handler) as session:
        await session.set_logging_level("debug")
        r = await session.call_tool("status_led_blink", {"times": 3, "on_time": 0.05, "off_time": 0.05},
                                    progress_callback=on_progress)
        assert not r.is_error
        assert progress == sorted(progress) and len(progress) == 3

        # cancellation: a long sweep is cancelled by the caller; the agent stays responsive
        with anyio.move_on_after(0.5):
            await session.call_tool("vent_servo_sweep", {"from": -90, "to": 90, "step_deg": 1, "dwell": 0.2})
        t0 = time.monotonic()
        moved = await session.call_tool("vent_servo_set_angle", {"angle": 0})
        assert not moved.is_error and time.monotonic() - t0 < 3, "the cancelled sweep kept the servo busy"


async def test_two_clients_at_once_and_client_leaving(broker, agent):
    async with connect(broker.url, NAME) as a, connect(broker.url, NAME) as b:
        ra, rb = await a.call_tool("pump_relay_on", {}), await b.call_tool("pump_relay_off", {})
        assert not ra.is_error and not rb.is_error
        health = json.loads((await a.read_resource("device://health")).contents[0].text)
        assert health["sessions"] == 2
    async with connect(broker.url, NAME) as c:
        with anyio.fail_after(5):
            while True:
                health = json.loads((await c.read_resource("device://health")).contents[0].text)
                if health["sessions"] == 1:
                    break
                await anyio.sleep(0.1)


async def test_bad_input_on_the_wire(broker, agent):
    """Malformed JSON, an unknown method, a request other than initialize on the control topic:
    each answered with the right JSON-RPC error, and the agent keeps serving."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    cid = "raw-client-1"
    rpc = f"$mcp-rpc/{cid}/{SID}/{NAME}"
    sub = RawSubscriber(broker.url, [rpc], client_id=cid)
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("MCP-COMPONENT-TYPE", "mcp-client"), ("MCP-MQTT-CLIENT-ID", cid)]
    try:
        sub.client.publish(f"$mcp-server/{SID}/{NAME}", json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
                           qos=1, properties=props)
        err = json.loads(sub.wait_for(lambda m: b'"id":1' in m.payload).payload)
        assert err["error"]["code"] == -32600
        assert "initialize" in err["error"]["message"]
        sub.client.publish(f"$mcp-server/{SID}/{NAME}", json.dumps({"jsonrpc": "2.0", "id": "init", "method": "initialize",
                           "params": {"protocolVersion": "2024-11-05", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}}),
                           qos=1, properties=props)
        init = json.loads(sub.wait_for(lambda m: b'"id":"init"' in m.payload).payload)
        assert init["result"]["protocolVersion"] == "2024-11-05"
        sub.client.publish(rpc, b"{this is not json", qos=1, properties=props)
        err = json.loads(sub.wait_for(lambda m: b"-32700" in m.payload).payload)
        assert err["id"] is None
        sub.client.publish(rpc, json.dumps({"jsonrpc": "2.0", "id": 3, "method": "no/such"}), qos=1, properties=props)
        assert json.loads(sub.wait_for(lambda m: b'"id":3' in m.payload).payload)["error"]["code"] == -32601
        # a control message without MCP-MQTT-CLIENT-ID cannot be answered; it is dropped, not fatal
        sub.client.publish(f"$mcp-server/{SID}/{NAME}", b'{"jsonrpc":"2.0","id":9,"method":"initialize"}', qos=1)
    finally:
        sub.close()
    async with connect(broker.url, NAME) as session:
        await session.send_ping()
