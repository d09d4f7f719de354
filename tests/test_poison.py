"""Poison-proof links (issue 13, item 1): a PUBLISH that paho's decoder refuses (U+FEFF, NUL or
invalid UTF-8 in a property or in the topic), sent by another client of the same broker, is
dropped and counted by the adapter (``edge_agent.mqtt.loop``); it never closes the
connection of the device, the cloud client or the gateway.

The hostile client speaks raw MQTT 5 over a socket, so it can send bytes paho itself would
not. Mosquitto decides what it forwards; what it forwards must not harm us."""

from __future__ import annotations

import json
import socket
import struct
import time
from dataclasses import dataclass

import anyio
import pytest
from paho.mqtt import _packet
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties, VariableByteIntegers

from edge_agent.client.link import MqttLink
from edge_agent.mqtt.broker_url import parse_broker_url

from .agent_process import AgentProcess, write_config
from .raw_client import RawMcpClient

NAME = "devices/poison/pi-1"
SID = "poison-pi-1"
DRIVERS = """
[[drivers]]
kind = "led"
name = "status_led"
pin = 27
"""
WARNING = "dropped a malformed MQTT message"


# ---------------------------------------------------------------------------- a raw MQTT 5 client
def _vbi(n: int) -> bytes:
    return VariableByteIntegers.encode(n)


def _str(b: bytes) -> bytes:
    return struct.pack("!H", len(b)) + b


def _props(*items: bytes) -> bytes:
    body = b"".join(items)
    return _vbi(len(body)) + body


class Hostile:
    """A bare MQTT 5 client on a socket: CONNECT, then QoS 1 PUBLISH packets built byte by byte."""

    def __init__(self, broker_url: str, client_id: str = "hostile"):
        url = parse_broker_url(broker_url)
        self.sock = socket.create_connection((url.host, url.port), timeout=5)
        self.mid = 0
        self.received: list[bytes] = []
        var = _str(b"MQTT") + b"\x05" + b"\x02" + struct.pack("!H", 30) + _props()  # clean start, keepalive 30
        self._send(0x10, var + _str(client_id.encode()))
        kind, body = self._read()
        assert kind == 0x20 and body[1] == 0, f"CONNACK refused: {body!r}"

    def _send(self, header: int, body: bytes) -> None:
        self.sock.sendall(bytes([header]) + _vbi(len(body)) + body)

    def _read(self) -> tuple[int, bytes]:
        head = self._recv(1)
        length, mult = 0, 1
        while True:
            b = self._recv(1)[0]
            length += (b & 0x7F) * mult
            mult *= 128
            if b < 0x80:
                break
        return head[0] & 0xF0, self._recv(length)

    def _recv(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("the broker closed the connection")
            data += chunk
        return data

    def _expect(self, want: int) -> bytes:
        """The body of the next packet of type ``want``; PUBLISH packets (QoS 0) before it are kept."""
        while True:
            kind, body = self._read()
            if kind == want:
                return body
            if kind == 0xE0:
                raise ConnectionError(f"the broker sent DISCONNECT {body[:1].hex()}")
            assert kind == 0x30, f"unexpected packet 0x{kind:02X}"
            self.received.append(body)

    def subscribe(self, topic: str) -> None:
        """QoS 0, No Local; waits for the SUBACK."""
        self.mid += 1
        self._send(0x82, struct.pack("!H", self.mid) + _props() + _str(topic.encode()) + b"\x04")
        body = self._expect(0x90)
        assert body[-1] == 0x00, body

    def publish(self, topic: bytes, props: bytes, payload: bytes, *, retain: bool = False) -> bool:
        """QoS 1; True if the broker acknowledged it (then it was forwarded to subscribers),
        False if it closed the connection instead (it refused the packet)."""
        self.mid += 1
        try:
            self._send(0x32 | (1 if retain else 0), _str(topic) + struct.pack("!H", self.mid) + props + payload)
            body = self._expect(0x40)
        except (ConnectionError, OSError):
            return False
        assert struct.unpack("!H", body[:2])[0] == self.mid
        return len(body) < 3 or body[2] in (0x00, 0x10)  # success / no matching subscribers

    def initialize(self, cid: str) -> None:
        """Open a session on the device as ``cid`` (whose RPC topic the device then subscribes)."""
        self.subscribe(f"$mcp-rpc/{cid}/{SID}/{NAME}")
        msg = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
               "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "h", "version": "0"}}}
        assert self.publish(f"$mcp-server/{SID}/{NAME}".encode(), _mcp(cid), json.dumps(msg).encode())
        self._expect(0x30)  # the answer: the device serves the session
        self.received.clear()

    def close(self) -> None:
        self.sock.close()


@dataclass(frozen=True)
class Poison:
    name: str
    props: bytes  # the property block
    forwarded: bool | None  # does Mosquitto forward it? (None: either is fine)


def _mcp(cid: str, *extra: bytes) -> bytes:
    return _props(b"\x26" + _str(b"MCP-COMPONENT-TYPE") + _str(b"mcp-client"),
                  b"\x26" + _str(b"MCP-MQTT-CLIENT-ID") + _str(cid.encode()), *extra)


def poisons(cid: str) -> list[Poison]:
    bom = "\ufeff".encode()
    return [
        Poison("bom-user-property", _mcp(cid, b"\x26" + _str(b"k") + _str(b"v" + bom)), True),
        Poison("bom-content-type", _mcp(cid, b"\x03" + _str(b"application/json" + bom)), True),
        Poison("bom-response-topic", _mcp(cid, b"\x08" + _str(b"re/" + bom)), True),
        Poison("bom-user-property-key", _mcp(cid, b"\x26" + _str(bom + b"k") + _str(b"v")), True),
        Poison("nul-content-type", _mcp(cid, b"\x03" + _str(b"a\x00b")), None),
        Poison("not-utf8-user-property", _mcp(cid, b"\x26" + _str(b"k") + _str(b"\xff\xfe")), None),
        # correlation data is binary: any bytes are fine for paho and for us; never dropped
        Poison("binary-correlation-data", _mcp(cid, b"\x09" + _str(b"\x00\xff" + bom)), True),
    ]


def ping(cid: str) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": f"poison-{time.monotonic_ns()}", "method": "ping"}).encode()


# ---------------------------------------------------------------------------- paho still needs the workaround
def test_paho_still_refuses_u_feff_so_the_workaround_is_needed():
    """If this fails, paho changed: it no longer refuses U+FEFF (or NUL) in a property, or no
    longer passes bad topics through. Then DecodedProperties' marking and the adapter's
    topic check may be revisited (edge_agent.mqtt.loop.malformed_reason)."""
    for bad in ("v\ufeff", "a\x00b"):
        p = Properties(PacketTypes.PUBLISH)
        p.ContentType = bad  # paho packs it happily...
        with pytest.raises(MalformedPacket):
            Properties(PacketTypes.PUBLISH).unpack(p.pack())  # ...and refuses it when reading
    # the topic is not checked by paho's decoder at all: U+FEFF passes, invalid UTF-8 fails late
    packet = _str(b"t/\xef\xbb\xbf") + struct.pack("!H", 1) + b"\x00" + b"x"
    assert _packet.decode_publish(0x32, packet, MQTTProtocolVersion.MQTTv5).topic == "t/\ufeff".encode()
    assert _packet.decode_publish(0x32, _str(b"t/\xff") + struct.pack("!H", 1) + b"\x00",
                                  MQTTProtocolVersion.MQTTv5).topic == b"t/\xff"


# ---------------------------------------------------------------------------- the device
def _link(client: RawMcpClient) -> dict:
    r = client.request("resources/read", {"uri": "device://link"})
    return json.loads(r["result"]["contents"][0]["text"])


def test_poison_on_control_and_rpc_topics_keeps_the_device_up(broker, tmp_path):
    agent = AgentProcess(write_config(tmp_path / "a.toml", server_name=NAME, server_id=SID, drivers=DRIVERS),
                         broker.url, SID, NAME).start()
    good = RawMcpClient(broker.url, "good-client", SID, NAME)  # raw paho: never sent poison here
    hostile: Hostile | None = None
    try:
        good.initialize()
        # the RPC topic poisoned is that of a session the hostile client opens itself ("victim"),
        # so that no paho client of the test receives the poison
        control, rpc = f"$mcp-server/{SID}/{NAME}".encode(), f"$mcp-rpc/victim/{SID}/{NAME}".encode()
        delivered = 0
        for poison in poisons("victim"):
            for topic in (control, rpc):
                if hostile is None:
                    hostile = Hostile(broker.url)
                    hostile.initialize("victim")
                forwarded = hostile.publish(topic, poison.props, ping("victim"))
                if poison.forwarded is not None:
                    assert forwarded == poison.forwarded, (poison.name, topic)
                if not forwarded:
                    hostile.close()
                    hostile = None
                elif poison.name != "binary-correlation-data":
                    delivered += 1
                # the device answers at once, on the same connection
                assert good.request("ping", timeout=10)["result"] == {}, (poison.name, topic)
        link = _link(good)
        assert link["connected"] and link["connects"] == 1, link  # never reconnected
        assert delivered >= 8  # the U+FEFF ones at least (both topics) reached the device...
        assert link["dropped_malformed"] == delivered, link  # ...and every one was dropped
        assert good.request("tools/list")["result"]["tools"]
    finally:
        if hostile is not None:
            hostile.close()
        good.close()
        agent.stop()
    # one warning with the reason, the rest counted (rate-limited)
    warnings = [line for line in agent.log().splitlines() if WARNING in line]
    assert len(warnings) == 1, agent.log()
    assert "U+FEFF" in warnings[0] and "paho would have closed the connection" in warnings[0]


# ---------------------------------------------------------------------------- the cloud side (and the gateway)
@pytest.fixture
def anyio_backend():
    return "asyncio"  # the adapter drives paho from asyncio


@pytest.mark.anyio
async def test_poison_and_poisoned_topics_reach_no_cloud_handler(broker):
    """The cloud client's and the gateway's links (MqttLink, on the same adapter): poisoned
    properties and topics with U+FEFF or invalid UTF-8 never reach ``on_message``; the link
    stays up and the next good message arrives."""
    got: list[str] = []
    async with MqttLink(broker.url, client_id="cloud-watch") as link:
        link.on_message = lambda m: got.append(m.topic)
        await link.subscribe([("watch/#", False)])
        hostile = Hostile(broker.url, "hostile-2")
        try:
            sent = [
                hostile.publish(b"watch/a", _mcp("x", b"\x26" + _str(b"k") + _str("\ufeff".encode())), b"{}"),
                hostile.publish("watch/b\ufeff".encode(), _props(), b"{}", retain=True),
            ]
            assert sent == [True, True]  # Mosquitto forwards U+FEFF in properties and topics
            for topic in (b"watch/\xff", b"watch/\x00"):  # Mosquitto refuses these itself (if it did not: dropped)
                if not hostile.publish(topic, _props(), b"{}"):
                    hostile.close()
                    hostile = Hostile(broker.url, "hostile-2")
            assert hostile.publish(b"watch/ok", _props(), b"{}")
        finally:
            hostile.close()
        with anyio.fail_after(5):
            while "watch/ok" not in got:
                await anyio.sleep(0.01)
        assert got == ["watch/ok"] and link.lost is None
        assert link._driver is not None and link._driver.malformed(link._client) >= 2

    # the retained one is dropped again by a fresh link, which stays up
    got.clear()
    async with MqttLink(broker.url, client_id="cloud-watch-2") as link2:
        link2.on_message = lambda m: got.append(m.topic)
        await link2.subscribe([("watch/#", False)])
        with anyio.fail_after(5):
            while link2._driver is None or link2._driver.malformed(link2._client) < 1:
                await anyio.sleep(0.01)
        assert got == [] and link2.lost is None


# ---------------------------------------------------------------------------- retained poison
def test_retained_poison_and_initialize_on_the_control_topic_are_ignored(broker, tmp_path):
    """A retained poison on the control topic would replay at every (re)connect; a retained
    ``initialize`` would open a session at every agent start. The device subscribes its control
    and RPC topics with Retain Handling 2 and drops retained requests anyway."""
    control = f"$mcp-server/{SID}/{NAME}".encode()
    planted = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                          "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                                     "clientInfo": {"name": "planted", "version": "0"}}}).encode()
    hostile = Hostile(broker.url, "planter")
    watcher = Hostile(broker.url, "watcher")
    try:
        watcher.subscribe(f"$mcp-rpc/planted/{SID}/{NAME}")  # where the device would answer the planted one
        assert hostile.publish(control, _mcp("planted"), planted, retain=True)
        # a retained request on the RPC topic the device subscribes when good-client initializes
        assert hostile.publish(f"$mcp-rpc/good-client/{SID}/{NAME}".encode(), _mcp("good-client"),
                               b'{"jsonrpc": "2.0", "id": "planted-ping", "method": "ping"}', retain=True)
        # and a retained poison
        assert hostile.publish(control, _mcp("x", b"\x03" + _str("\ufeff".encode())), b"{}", retain=True)
    finally:
        hostile.close()
    agent = AgentProcess(write_config(tmp_path / "a.toml", server_name=NAME, server_id=SID, drivers=DRIVERS),
                         broker.url, SID, NAME).start()
    good = RawMcpClient(broker.url, "good-client", SID, NAME)
    try:
        good.initialize()
        assert good.request("ping")["result"] == {}
        link = _link(good)
        assert link["connects"] == 1 and link["dropped_malformed"] == 0, link  # the broker kept them to itself
        assert watcher.received == []  # no session was opened for the planted initialize
        assert good.responses("planted-ping") == []  # the planted request was not answered
        watcher.sock.settimeout(0.5)
        with pytest.raises(OSError):  # (socket.timeout) nothing arrives later either
            watcher._read()
    finally:
        watcher.close()
        good.close()
        agent.stop()
    assert "planted" not in agent.log()


# ---------------------------------------------------------------------------- identifier length
def test_too_long_client_id_gets_no_session_and_reconnects_stay_healthy(broker, tmp_path):
    """A 65,500-byte MCP-MQTT-CLIENT-ID would make $mcp-rpc/{id}/{server-id}/{server-name}
    longer than an MQTT string: once kept, the device could not subscribe (nor publish presence)
    at any later reconnect. Ids are limited to 256 bytes (edge_agent.core.topics.MAX_ID)."""
    fast = "\n[link]\nreconnect_min = 0.1\nreconnect_max = 0.5\n"
    agent = AgentProcess(write_config(tmp_path / "a.toml", server_name=NAME, server_id=SID, drivers=DRIVERS + fast),
                         broker.url, SID, NAME).start()
    good: RawMcpClient | None = None
    try:
        long_id = "L" * 65500
        hostile = Hostile(broker.url, "long-id")
        try:
            msg = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                   "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "l", "version": "0"}}}
            assert hostile.publish(f"$mcp-server/{SID}/{NAME}".encode(), _mcp(long_id), json.dumps(msg).encode())
        finally:
            hostile.close()
        good = RawMcpClient(broker.url, "good-client", SID, NAME)
        good.initialize()
        assert good.request("ping")["result"] == {}
        link = _link(good)
        assert link["malformed"] == 1 and link["connects"] == 1, link  # refused as an invalid sender id
        good.close()
        good = None

        # a reconnect: the device subscribes its control topic again and publishes its presence
        broker.stop()
        watcher = None
        broker.start()
        try:
            from .agent_process import RawSubscriber

            watcher = RawSubscriber(broker.url, [f"$mcp-server/presence/{SID}/{NAME}"])
            watcher.wait_for(lambda m: bool(m.payload) and json.loads(m.payload)["method"] == "notifications/server/online",
                             20)
        finally:
            if watcher is not None:
                watcher.close()
        good = RawMcpClient(broker.url, "good-client-2", SID, NAME)
        good.initialize()
        link = _link(good)
        assert link["connects"] == 2 and link["connected"], link
    finally:
        if good is not None:
            good.close()
        agent.stop()
    assert "MCP-MQTT-CLIENT-ID is 65500 bytes; at most 256" in agent.log()


# ---------------------------------------------------------------------------- poisoned presence (cloud)
def test_poisoned_retained_presence_does_not_break_edge_agent_devices(broker):
    """``edge-agent devices`` lists the good servers and exits 0 when poisoned presences are
    retained next to them (paho would have closed its connection: no listing at all)."""
    import subprocess
    import sys

    online = json.dumps({"jsonrpc": "2.0", "method": "notifications/server/online",
                         "params": {"server_name": "devices/good/pi-1", "description": "good one", "meta": {}}}).encode()
    evil = json.dumps({"jsonrpc": "2.0", "method": "notifications/server/online",
                       "params": {"server_name": "devices/evil/x", "description": "evil", "meta": {}}}).encode()
    hostile = Hostile(broker.url, "presence-poisoner")
    try:
        server = _props(b"\x26" + _str(b"MCP-COMPONENT-TYPE") + _str(b"mcp-server"))
        assert hostile.publish(b"$mcp-server/presence/good-1/devices/good/pi-1", server, online, retain=True)
        assert hostile.publish(b"$mcp-server/presence/evil-1/devices/evil/x",  # U+FEFF in a user property
                               _props(b"\x26" + _str(b"k") + _str("\ufeff".encode())), evil, retain=True)
        assert hostile.publish(b"$mcp-server/presence/evil-2/devices/evil/x",  # in the content type
                               _props(b"\x03" + _str("application/json\ufeff".encode())), evil, retain=True)
        assert hostile.publish("$mcp-server/presence/evil-3\ufeff/devices/evil/x".encode(), server, evil, retain=True)
        assert hostile.publish(f"$mcp-server/presence/{'E' * 300}/devices/evil/x".encode(), server, evil, retain=True)
    finally:
        hostile.close()
    done = subprocess.run([sys.executable, "-m", "edge_agent", "devices", "--broker", broker.url, "--timeout", "5"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "devices/good/pi-1" in done.stdout and "good-1" in done.stdout
    assert "evil" not in done.stdout
    assert done.stderr == ""  # (warnings show with -v)
    verbose = subprocess.run([sys.executable, "-m", "edge_agent", "devices", "--broker", broker.url, "-v"],
                             capture_output=True, text=True, timeout=60)
    assert verbose.returncode == 0 and "good-1" in verbose.stdout and "evil" not in verbose.stdout
    # three dropped by the adapter (U+FEFF), one skipped by discovery (a 300-byte server-id)
    assert "dropped 3 presence message(s)" in verbose.stderr, verbose.stderr
    assert "skipping malformed presence: server-id is 300 bytes; at most 256" in verbose.stderr, verbose.stderr


@pytest.mark.anyio
async def test_poisoned_retained_presence_does_not_loop_the_gateway(broker, tmp_path):
    """The gateway (its MqttLink on the adapter) lists the good device's tools and keeps one
    broker connection while poisoned presences are retained; before, paho closed its
    connection at every subscribe and it reconnected in a loop."""
    import asyncio

    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    from edge_agent.testing.fleet_sim import LoopDriver, SimDevice

    from .test_gateway_http import GatewayProcess

    hostile = Hostile(broker.url, "presence-poisoner-2")
    try:
        evil = b'{"jsonrpc": "2.0", "method": "notifications/server/online", "params": {}}'
        assert hostile.publish(b"$mcp-server/presence/evil-1/devices/evil/x",
                               _props(b"\x26" + _str(b"k") + _str("\ufeff".encode())), evil, retain=True)
        assert hostile.publish("$mcp-server/presence/evil-2\ufeff/devices/evil/x".encode(), _props(), evil, retain=True)
    finally:
        hostile.close()
    driver = LoopDriver(asyncio.get_running_loop())
    device = SimDevice(broker.url, "good-gw-1", "devices/good/gw1", driver=driver)
    await device.start()
    log_path = tmp_path / "gateway.log"
    gateway = await GatewayProcess(broker.url, log_path, "-v").ready()
    try:
        async with streamable_http_client(gateway.url) as (read, write, *_), \
                ClientSession(read, write, read_timeout_seconds=30) as session:
            await session.initialize()
            with anyio.fail_after(20):
                while not any(t.name.startswith("devices.good.gw1__") for t in (await session.list_tools()).tools):
                    await anyio.sleep(0.2)
            assert not any("evil" in t.name for t in (await session.list_tools()).tools)
    finally:
        assert gateway.stop() == 0
        await device.stop()
        driver.close()
    text = log_path.read_text()
    assert text.count("gateway connected to") == 1, text  # never reconnected
    assert text.count(WARNING) == 1, text
