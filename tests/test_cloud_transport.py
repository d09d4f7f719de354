"""The cloud-side MCP-over-MQTT client transport, checked on the wire against a real Mosquitto.

The device-side server is not used here: :class:`WirePeer` is a minimal MCP-over-MQTT *server
peer* written with raw paho, inside the test, that records exactly what our client puts on the
wire (topic, payload, user properties) and answers with canned data. End-to-end tests against
the real agent live elsewhere.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import anyio
import mcp_types as types
import paho.mqtt.client as mqtt
import pytest
from mcp import MCPError
from mcp.shared.message import SessionMessage
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_agent.client.discovery import parse_presence, presence_subscriptions
from edge_agent.client.link import suggested_filters, user_properties
from edge_agent.cloud import ServerPresence, connect, discover, mqtt_client
from edge_agent.core import topics
from edge_agent.errors import ServerNotFound, TransportError

from .faults import CuttableProxy

SERVER_NAME = "devices/greenhouse/pi-01"

TOOLS = [
    {"name": "set_led", "description": "Switch the status LED",
     "inputSchema": {"type": "object", "required": ["on"], "properties": {
         "on": {"type": "boolean", "description": "LED on or off"},
         "brightness": {"type": "number", "minimum": 0, "maximum": 1, "unit": "duty",
                        "description": "PWM duty cycle"},
         "blinks": {"type": "integer", "minimum": 0, "maximum": 10},
         "pattern": {"type": "array", "items": {"type": "integer"}},
         "label": {"type": "string"}}}},
    {"name": "fail", "description": "Always fails", "inputSchema": {"type": "object", "properties": {}}},
    {"name": "hang", "description": "Never answers", "inputSchema": {"type": "object", "properties": {}}},
]
TEMPERATURE = {"value": 21.4, "unit": "°C", "timestamp": "2025-08-01T12:00:00Z"}
RESOURCES = {
    "sensor://greenhouse/temperature": {"name": "temperature", "mimeType": "application/json",
                                        "text": json.dumps(TEMPERATURE, ensure_ascii=False)},
    "text://motd": {"name": "motd", "mimeType": "text/plain", "text": "hello from the greenhouse"},
}


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


@dataclass
class Received:
    topic: str
    payload: bytes
    props: dict[str, str]
    retain: bool = False

    @property
    def json(self) -> Any:
        return json.loads(self.payload) if self.payload else None


@dataclass
class WirePeer:
    """A wire-level MCP-over-MQTT server peer (raw paho, MQTT 5) that records what it receives.

    It publishes a retained online presence (will: empty retained), takes ``initialize`` on its
    control topic, subscribes to that client's RPC (No Local), presence and capability topics
    and answers on the RPC topic; it answers ``ping``, ``tools/list``, ``tools/call``,
    ``resources/list|read|subscribe|unsubscribe`` and ``prompts/list`` from canned data.
    ``tools/call`` of ``hang`` is never answered.
    """

    broker_url: str
    server_name: str = SERVER_NAME
    server_id: str = "peer-1"
    description: str = "wire-level test peer"
    updates_on_subscribe: int = 0  # send this many resources/updated after a resources/subscribe
    received: list[Received] = field(default_factory=list)
    clients: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._cond = threading.Condition()
        self.presence = topics.server_presence(self.server_id, self.server_name)
        self.control = topics.server_control(self.server_id, self.server_name)
        self.capability = topics.server_capability(self.server_id, self.server_name)
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.server_id, protocol=mqtt.MQTTv5)
        c.will_set(self.presence, b"", qos=1, retain=True)
        c.on_message = self._on_message
        c.on_socket_open = lambda client, userdata, sock: sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client = c

    # -- lifecycle --
    def start(self) -> "WirePeer":
        props = Properties(PacketTypes.CONNECT)
        props.UserProperty = [("MCP-COMPONENT-TYPE", "mcp-server"), ("MCP-META", "{}")]
        self.client.connect("127.0.0.1", _port(self.broker_url), clean_start=True, properties=props)
        self.client.loop_start()
        self.client.subscribe(self.control, qos=1)
        online = {"jsonrpc": "2.0", "method": "notifications/server/online",
                  "params": {"server_name": self.server_name, "description": self.description,
                             "meta": {"location": "greenhouse"}}}
        self._publish(self.presence, online, retain=True).wait_for_publish(5)
        return self

    def go_offline(self) -> None:
        """Clear the retained presence, as a server does before a clean exit."""
        self._publish(self.presence, None, retain=True).wait_for_publish(5)

    def stop(self) -> None:
        if self.client.is_connected():
            self.go_offline()
            self.client.disconnect()
        self.client.loop_stop()

    # -- sending --
    def _publish(self, topic: str, message: Any, *, retain: bool = False) -> mqtt.MQTTMessageInfo:
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("MCP-COMPONENT-TYPE", "mcp-server"), ("MCP-MQTT-CLIENT-ID", self.server_id)]
        if message is None:
            payload = b""
        elif isinstance(message, bytes):
            payload = message
        else:
            payload = json.dumps(message).encode()
        return self.client.publish(topic, payload, qos=1, retain=retain, properties=props)

    def rpc_topic(self, client_id: str) -> str:
        return topics.rpc(client_id, self.server_id, self.server_name)

    def send_rpc(self, client_id: str, message: Any) -> None:
        self._publish(self.rpc_topic(client_id), message).wait_for_publish(5)

    def notify_capability(self, method: str, params: dict | None = None) -> None:
        msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            msg["params"] = params
        self._publish(self.capability, msg).wait_for_publish(5)

    # -- receiving --
    def _on_message(self, client: mqtt.Client, userdata: Any, m: mqtt.MQTTMessage) -> None:
        rec = Received(m.topic, bytes(m.payload), user_properties(m.properties), bool(m.retain))
        with self._cond:
            self.received.append(rec)
            self._cond.notify_all()
        try:
            msg = json.loads(rec.payload) if rec.payload else None
        except ValueError:
            return
        parsed = topics.parse(m.topic)
        if not isinstance(msg, dict) or parsed is None:
            return
        if parsed.kind == "control" and msg.get("method") == "initialize":
            cid = rec.props["MCP-MQTT-CLIENT-ID"]
            self.clients.append(cid)
            self.client.subscribe([
                (self.rpc_topic(cid), SubscribeOptions(qos=1, noLocal=True)),
                (topics.client_presence(cid), SubscribeOptions(qos=1)),
                (topics.client_capability(cid), SubscribeOptions(qos=1)),
            ])
            result = {"protocolVersion": msg["params"]["protocolVersion"],
                      "capabilities": {"tools": {"listChanged": True}, "prompts": {},
                                       "resources": {"subscribe": True, "listChanged": True}},
                      "serverInfo": {"name": "wire-peer", "version": "0.0.1"}}
            self._publish(self.rpc_topic(cid), {"jsonrpc": "2.0", "id": msg["id"], "result": result})
        elif parsed.kind == "rpc" and "method" in msg and "id" in msg:
            result = self._answer(msg["method"], msg.get("params") or {})
            if result is not None:
                self._publish(m.topic, {"jsonrpc": "2.0", "id": msg["id"], "result": result})
            if msg["method"] == "resources/subscribe":
                for _ in range(self.updates_on_subscribe):
                    self._publish(self.capability, {"jsonrpc": "2.0", "method": "notifications/resources/updated",
                                                    "params": {"uri": msg["params"]["uri"]}})

    def _answer(self, method: str, params: dict) -> dict | None:
        if method in ("ping", "resources/subscribe", "resources/unsubscribe"):
            return {}
        if method == "tools/list":
            return {"tools": TOOLS}
        if method == "tools/call":
            name, args = params["name"], params.get("arguments") or {}
            if name == "hang":
                return None
            if name == "fail":
                return {"content": [{"type": "text", "text": "the LED driver is not responding"}], "isError": True}
            return {"content": [{"type": "text", "text": f"set_led {json.dumps(args, sort_keys=True)}"}],
                    "structuredContent": args}
        if method == "resources/list":
            return {"resources": [{"uri": u, "name": r["name"], "mimeType": r["mimeType"]} for u, r in RESOURCES.items()]}
        if method == "resources/read":
            r = RESOURCES[params["uri"]]
            return {"contents": [{"uri": params["uri"], "mimeType": r["mimeType"], "text": r["text"]}]}
        if method == "prompts/list":
            return {"prompts": [{"name": "diagnose", "description": "Diagnose the greenhouse",
                                 "arguments": [{"name": "zone", "required": True}]}]}
        return {}

    def wait_for(self, predicate: Callable[[Received], bool], timeout: float = 5.0) -> Received:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for rec in self.received:
                    if predicate(rec):
                        return rec
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"peer did not receive the expected message; got {[r.topic for r in self.received]}")
                self._cond.wait(left)

    async def await_for(self, predicate: Callable[[Received], bool], timeout: float = 5.0) -> Received:
        """:meth:`wait_for` without blocking the event loop."""
        return await anyio.to_thread.run_sync(self.wait_for, predicate, timeout)


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def peer(broker):
    p = WirePeer(broker.url).start()
    yield p
    p.stop()


def _rpc_messages(peer: WirePeer, cid: str) -> list[Received]:
    return [r for r in peer.received if r.topic == peer.rpc_topic(cid)]


# --------------------------------------------------------------------------------------------
# Session over the wire
# --------------------------------------------------------------------------------------------

@pytest.mark.anyio
async def test_session_round_trip_and_what_goes_on_the_wire(broker, peer):
    async with connect(broker.url, SERVER_NAME) as session:
        tools = await session.list_tools()
        assert [t.name for t in tools.tools] == ["set_led", "fail", "hang"]
        await session.send_ping()
        result = await session.call_tool("set_led", {"on": True, "brightness": 0.5})
        assert result.content[0].text == 'set_led {"brightness": 0.5, "on": true}'
        assert session.server_info.name == "wire-peer"
        cid = peer.clients[0]

    # initialize went to the server control topic, with both user properties
    init = peer.wait_for(lambda r: r.topic == peer.control)
    assert init.json["method"] == "initialize"
    assert init.props == {"MCP-COMPONENT-TYPE": "mcp-client", "MCP-MQTT-CLIENT-ID": cid}
    assert cid.startswith("mcp-client-") and topics.check_id(cid)

    # everything later went to the RPC topic, each PUBLISH with both user properties
    rpc = _rpc_messages(peer, cid)
    assert [r.json.get("method") for r in rpc] == ["notifications/initialized", "tools/list", "ping", "tools/call"]
    assert all(r.props == {"MCP-COMPONENT-TYPE": "mcp-client", "MCP-MQTT-CLIENT-ID": cid} for r in rpc)
    # No Local: had our client received its own requests back, the SDK would have answered
    # them with errors; the peer saw requests and notifications only.
    assert all("result" not in r.json and "error" not in r.json for r in rpc)
    assert not any(r.topic == peer.control and r.json.get("method") != "initialize" for r in peer.received)

    # on exit: notifications/disconnected on the client presence topic, not retained
    bye = peer.wait_for(lambda r: r.topic == topics.client_presence(cid))
    assert bye.json == {"jsonrpc": "2.0", "method": "notifications/disconnected"}
    assert bye.props == {"MCP-COMPONENT-TYPE": "mcp-client", "MCP-MQTT-CLIENT-ID": cid}
    assert not bye.retain


@pytest.mark.anyio
async def test_a_new_mcp_client_id_for_every_use_unless_given(broker, peer):
    for _ in range(2):
        async with connect(broker.url, SERVER_NAME) as session:
            await session.send_ping()
    async with connect(broker.url, SERVER_NAME, client_id="my-cloud-client") as session:
        await session.send_ping()
    assert len(set(peer.clients)) == 3 and peer.clients[2] == "my-cloud-client"


@pytest.mark.anyio
@pytest.mark.filterwarnings("ignore::mcp.MCPDeprecationWarning")
async def test_resource_updated_reaches_only_subscribers_list_changed_always(broker, peer):
    seen: list[Any] = []
    got_update = anyio.Event()

    async def handler(message: Any) -> None:
        seen.append(message)
        if isinstance(message, types.ResourceUpdatedNotification):
            got_update.set()

    async with connect(broker.url, SERVER_NAME, message_handler=handler) as session:
        await session.subscribe_resource("sensor://greenhouse/temperature")
        await session.subscribe_resource("text://motd")
        await session.unsubscribe_resource("text://motd")
        peer.notify_capability("notifications/resources/updated", {"uri": "text://motd"})
        peer.notify_capability("notifications/resources/updated", {"uri": "sensor://elsewhere"})
        peer.notify_capability("notifications/tools/list_changed")
        peer.notify_capability("notifications/resources/updated", {"uri": "sensor://greenhouse/temperature"})
        with anyio.fail_after(5):
            await got_update.wait()
        read = await session.read_resource("sensor://greenhouse/temperature")
        assert json.loads(read.contents[0].text) == TEMPERATURE

    kinds = [type(m).__name__ for m in seen]
    assert kinds == ["ToolListChangedNotification", "ResourceUpdatedNotification"]
    assert str(seen[1].params.uri) == "sensor://greenhouse/temperature"


@pytest.mark.anyio
async def test_server_going_offline_fails_pending_and_later_requests_quickly(broker, peer):
    transport_errors: list[Exception] = []

    async def handler(message: Any) -> None:
        if isinstance(message, Exception):
            transport_errors.append(message)

    async with connect(broker.url, SERVER_NAME, message_handler=handler) as session:
        outcome: dict[str, Any] = {}

        async def call_hanging_tool() -> None:
            try:
                await session.call_tool("hang", {}, read_timeout_seconds=60)
            except MCPError as exc:
                outcome["error"] = exc
                outcome["at"] = time.monotonic()

        async with anyio.create_task_group() as tg:
            tg.start_soon(call_hanging_tool)
            await peer.await_for(lambda r: r.json and r.json.get("method") == "tools/call")
            cleared = time.monotonic()
            peer.go_offline()
        assert outcome["at"] - cleared < 2.0
        assert str(outcome["error"]) == f"server {SERVER_NAME} (peer-1) went offline"

        started = time.monotonic()
        with pytest.raises(MCPError, match="went offline"):
            await session.list_tools()
        assert time.monotonic() - started < 1.0

    assert any(isinstance(e, TransportError) and "went offline" in str(e) for e in transport_errors)


@pytest.mark.anyio
async def test_disconnected_notification_on_the_rpc_topic_ends_the_session(broker, peer):
    async with connect(broker.url, SERVER_NAME) as session:
        cid = peer.clients[0]
        peer.send_rpc(cid, {"jsonrpc": "2.0", "method": "notifications/disconnected"})
        with anyio.fail_after(3):
            while True:  # the notification overtakes nothing: poll until the bridge saw it
                try:
                    await session.send_ping()
                except MCPError as exc:
                    assert "disconnected this client" in str(exc)
                    break
                await anyio.sleep(0.02)


@pytest.mark.anyio
async def test_malformed_payload_is_an_exception_item_not_a_crash(broker, peer):
    async with mqtt_client(broker.url, SERVER_NAME) as (read, write):
        init = types.JSONRPCRequest(jsonrpc="2.0", id="init_1", method="initialize", params={
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}})
        await write.send(SessionMessage(init))
        with anyio.fail_after(3):
            first = await read.receive()
        assert isinstance(first.message, types.JSONRPCResponse) and first.message.id == "init_1"
        cid = peer.clients[0]

        peer.send_rpc(cid, b"{not json")
        peer.send_rpc(cid, {"jsonrpc": "2.0", "method": "notifications/message",
                            "params": {"level": "info", "data": "still alive"}})
        with anyio.fail_after(3):
            bad = await read.receive()
            good = await read.receive()
        assert isinstance(bad, ValueError) and peer.rpc_topic(cid) in str(bad)
        assert isinstance(good.message, types.JSONRPCNotification)
        assert good.message.params["data"] == "still alive"


# --------------------------------------------------------------------------------------------
# The client's will: cut the TCP link under the client, as a flaky network would
# --------------------------------------------------------------------------------------------

@pytest.mark.anyio
async def test_link_loss_publishes_the_will_and_fails_requests(broker, peer):
    proxy = CuttableProxy(broker.port)
    try:
        async with connect(f"mqtt://127.0.0.1:{proxy.port}", SERVER_NAME) as session:
            await session.send_ping()
            cid = peer.clients[0]
            proxy.cut()
            will = await peer.await_for(lambda r: r.topic == topics.client_presence(cid))
            assert will.json == {"jsonrpc": "2.0", "method": "notifications/disconnected"}
            assert will.props == {"MCP-COMPONENT-TYPE": "mcp-client", "MCP-MQTT-CLIENT-ID": cid}
            assert not will.retain
            with anyio.fail_after(3):
                while True:
                    try:
                        await session.send_ping()
                    except MCPError as exc:
                        assert "lost connection to broker" in str(exc)
                        break
                    await anyio.sleep(0.02)
    finally:
        proxy.close()


# --------------------------------------------------------------------------------------------
# Discovery and server selection
# --------------------------------------------------------------------------------------------

def _raw_publish(broker_url: str, topic: str, payload: bytes, *, retain: bool = True) -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"raw-{time.monotonic_ns()}", protocol=mqtt.MQTTv5)
    c.connect("127.0.0.1", _port(broker_url))
    c.loop_start()
    c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)
    c.disconnect()
    c.loop_stop()


@pytest.mark.anyio
async def test_discover_lists_online_servers_and_ignores_empty_and_malformed(broker):
    a = WirePeer(broker.url, server_name="devices/greenhouse/pi-01", server_id="pi-01-a", description="greenhouse").start()
    b = WirePeer(broker.url, server_name="devices/barn/esp-02", server_id="esp-02", description="barn").start()
    gone = WirePeer(broker.url, server_name="devices/barn/old", server_id="old-1").start()
    try:
        gone.stop()  # its retained presence is now cleared with an empty payload
        _raw_publish(broker.url, topics.server_presence("junk-1", "devices/junk/x"), b"not json")
        found = await discover(broker.url, timeout=0.3)
        assert found == [
            ServerPresence("esp-02", "devices/barn/esp-02", "barn", {"location": "greenhouse"},
                           topics.server_presence("esp-02", "devices/barn/esp-02")),
            ServerPresence("pi-01-a", "devices/greenhouse/pi-01", "greenhouse", {"location": "greenhouse"},
                           topics.server_presence("pi-01-a", "devices/greenhouse/pi-01")),
        ]
        only_barn = await discover(broker.url, "devices/barn/#", timeout=0.2)
        assert [p.server_id for p in only_barn] == ["esp-02"]
    finally:
        a.stop()
        b.stop()


@pytest.mark.anyio
async def test_server_not_found_names_the_server_and_the_broker(broker):
    started = time.monotonic()
    with pytest.raises(ServerNotFound) as info:
        async with mqtt_client(broker.url, "devices/nowhere/pi-09", discovery_timeout=0.3):
            pass
    assert time.monotonic() - started < 3
    assert "'devices/nowhere/pi-09'" in str(info.value) and broker.url in str(info.value)


@pytest.mark.anyio
async def test_server_id_picks_one_replica_and_unknown_id_is_reported(broker):
    r1 = WirePeer(broker.url, server_id="replica-1").start()
    r2 = WirePeer(broker.url, server_id="replica-2").start()
    try:
        async with connect(broker.url, SERVER_NAME, server_id="replica-2") as session:
            await session.send_ping()
        assert r2.clients and not r1.clients
        async with connect(broker.url, SERVER_NAME) as session:  # random replica
            await session.send_ping()
        assert len(r1.clients) + len(r2.clients) == 2
        with pytest.raises(ServerNotFound, match="online server-ids: replica-1, replica-2"):
            async with mqtt_client(broker.url, SERVER_NAME, server_id="replica-3", discovery_timeout=0.2):
                pass
    finally:
        r1.stop()
        r2.stop()


@pytest.mark.anyio
async def test_unreachable_broker_is_one_clear_transport_error():
    from edge_agent.testing.broker import free_port

    url = f"mqtt://127.0.0.1:{free_port()}"
    with pytest.raises(TransportError) as info:
        async with mqtt_client(url, SERVER_NAME):
            pass
    assert str(info.value) == f"cannot reach broker {url}: Connection refused"


# --------------------------------------------------------------------------------------------
# CONNECT on the wire: a one-shot fake broker reads the packet and refuses it
# --------------------------------------------------------------------------------------------

def _read_connect(conn: socket.socket) -> dict[str, Any]:
    """Read one MQTT 5 CONNECT packet and decode what the spec cares about."""
    def exact(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            assert chunk, "connection closed mid-packet"
            data += chunk
        return data

    assert exact(1) == b"\x10"
    length, shift = 0, 0
    while True:
        byte = exact(1)[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    body = memoryview(exact(length))

    def string(at: int) -> tuple[bytes, int]:
        n = int.from_bytes(body[at:at + 2], "big")
        return bytes(body[at + 2:at + 2 + n]), at + 2 + n

    name, at = string(0)
    level, flags = body[at], body[at + 1]
    at += 4  # level, flags, keepalive
    props, used = Properties(PacketTypes.CONNECT).unpack(bytes(body[at:]))
    at += used
    client_id, at = string(at)
    out = {"protocol": (name, level), "clean_start": bool(flags & 0x02), "props": props,
           "client_id": client_id.decode(), "will": None}
    if flags & 0x04:
        will_props, used = Properties(PacketTypes.WILLMESSAGE).unpack(bytes(body[at:]))
        at += used
        topic, at = string(at)
        payload, at = string(at)
        out["will"] = {"topic": topic.decode(), "payload": payload, "retain": bool(flags & 0x20),
                       "qos": (flags >> 3) & 3, "props": dict(getattr(will_props, "UserProperty", []))}
    return out


@pytest.mark.anyio
async def test_connect_packet_carries_mcp_user_properties_clean_session_and_the_will():
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    captured: dict[str, Any] = {}

    def fake_broker() -> None:
        conn, _ = server.accept()
        with conn:
            captured.update(_read_connect(conn))
            conn.sendall(bytes([0x20, 3, 0x00, 0x87, 0x00]))  # CONNACK: Not authorized

    thread = threading.Thread(target=fake_broker, daemon=True)
    thread.start()
    url = f"mqtt://127.0.0.1:{port}"
    try:
        with pytest.raises(TransportError) as info:
            async with mqtt_client(url, SERVER_NAME, meta={"location": "lab"}):
                pass
    finally:
        server.close()
    assert str(info.value) == f"broker {url} refused the connection: Not authorized"

    assert captured["protocol"] == (b"MQTT", 5) and captured["clean_start"]
    cid = captured["client_id"]
    assert cid.startswith("mcp-client-")
    assert captured["props"].SessionExpiryInterval == 0
    up = dict(captured["props"].UserProperty)
    assert up["MCP-COMPONENT-TYPE"] == "mcp-client"
    assert json.loads(up["MCP-META"]) == {"version": "0.1.0", "implementation": "edge-agent", "location": "lab"}
    will = captured["will"]
    assert will["topic"] == topics.client_presence(cid) and not will["retain"] and will["qos"] == 1
    assert json.loads(will["payload"]) == {"jsonrpc": "2.0", "method": "notifications/disconnected"}
    assert will["props"] == {"MCP-COMPONENT-TYPE": "mcp-client", "MCP-MQTT-CLIENT-ID": cid}


@pytest.mark.anyio
async def test_round_trips_are_sub_millisecond_class_with_tcp_nodelay():
    """With Nagle on, each QoS 1 request/response on loopback costs ~40 ms (delayed ACK).

    Mosquitto applies Nagle on its own sockets unless ``set_tcp_nodelay true``; our client sets
    TCP_NODELAY in ``on_socket_open`` (without it this measures ~35 ms per ping).
    """
    from edge_agent.testing.broker import LocalBroker

    with LocalBroker(extra_conf="set_tcp_nodelay true") as fast_broker:
        p = WirePeer(fast_broker.url).start()
        try:
            async with connect(fast_broker.url, SERVER_NAME) as session:
                await session.send_ping()
                started = time.perf_counter()
                for _ in range(50):
                    await session.send_ping()
                per_ping = (time.perf_counter() - started) / 50
        finally:
            p.stop()
    assert per_ping < 0.015, f"{per_ping * 1000:.1f} ms per ping: is TCP_NODELAY set?"


# --------------------------------------------------------------------------------------------
# Pure pieces
# --------------------------------------------------------------------------------------------

def test_broker_suggested_server_name_filters_are_used_for_discovery(caplog):
    assert suggested_filters({}) is None
    assert suggested_filters({"MCP-SERVER-NAME-FILTERS": '["devices/barn/#"]'}) == ["devices/barn/#"]
    assert suggested_filters({"MCP-SERVER-NAME-FILTERS": "devices/#"}) is None  # not JSON: ignored
    assert presence_subscriptions(None, SERVER_NAME) == [f"$mcp-server/presence/+/{SERVER_NAME}"]
    assert presence_subscriptions(["devices/#"], SERVER_NAME) == ["$mcp-server/presence/+/devices/#"]
    with caplog.at_level("WARNING"):
        presence_subscriptions(["devices/barn/#"], SERVER_NAME)
    assert "outside the broker's suggested filters" in caplog.text


def test_parse_presence():
    topic = topics.server_presence("s1", "devices/a/b")
    assert parse_presence(topic, b"") is None
    p = parse_presence(topic, b'{"jsonrpc":"2.0","method":"notifications/server/online","params":{"description":"d"}}')
    assert (p.server_id, p.server_name, p.description, p.meta) == ("s1", "devices/a/b", "d", {})
    with pytest.raises(ValueError, match="not JSON"):
        parse_presence(topic, b"{")
    with pytest.raises(ValueError, match="not a notifications/server/online"):
        parse_presence(topic, b'{"method":"x"}')
