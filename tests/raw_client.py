"""A bare MCP-over-MQTT client on raw paho, for link tests where the wire itself is the subject:
persistent MQTT sessions (clean start off, session expiry), paho's auto-reconnect, every
message recorded with its ``EDGE-AGENT-SEQ``, CBOR or JSON payloads."""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass

import cbor2
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_agent.mqtt.broker_url import parse_broker_url


@dataclass
class Received:
    topic: str
    message: dict | None
    seq: int | None
    content_type: str | None
    retain: bool
    at: float


class RawMcpClient:
    def __init__(self, broker_url: str, client_id: str, server_id: str, server_name: str, *,
                 persistent: bool = False, cbor: bool = False):
        self.cid, self.sid, self.name, self.cbor = client_id, server_id, server_name, cbor
        self.rpc = f"$mcp-rpc/{client_id}/{server_id}/{server_name}"
        self.received: list[Received] = []
        self.lock = threading.Lock()
        self.ids = itertools.count(1)
        url = parse_broker_url(broker_url)
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        c.reconnect_delay_set(0.2, 1)
        c.on_message = self._on_message
        self.connected = threading.Event()
        c.on_connect = lambda *a: self.connected.set()
        c.on_disconnect = lambda *a: self.connected.clear()
        c.will_set(f"$mcp-client/presence/{client_id}", json.dumps({"jsonrpc": "2.0", "method": "notifications/disconnected"}))
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 600 if persistent else 0
        props.UserProperty = [("MCP-COMPONENT-TYPE", "mcp-client"), ("MCP-META", "{}")]
        c.connect(url.host, url.port, keepalive=5, clean_start=not persistent, properties=props)
        c.loop_start()
        assert self.connected.wait(5)
        done = threading.Event()
        c.on_subscribe = lambda *a: done.set()
        c.subscribe([(self.rpc, SubscribeOptions(qos=1, noLocal=True)),
                     (f"$mcp-server/capability/{server_id}/{server_name}", SubscribeOptions(qos=1)),
                     (f"$mcp-server/presence/{server_id}/{server_name}", SubscribeOptions(qos=1))])
        assert done.wait(5)
        self.client = c

    def _on_message(self, client, userdata, m) -> None:
        ct = getattr(m.properties, "ContentType", None)
        up = dict(getattr(m.properties, "UserProperty", None) or [])
        try:
            msg = (cbor2.loads(m.payload) if ct == "application/cbor" else json.loads(m.payload)) if m.payload else None
        except ValueError:
            msg = None
        seq = int(up["EDGE-AGENT-SEQ"]) if "EDGE-AGENT-SEQ" in up else None
        with self.lock:
            self.received.append(Received(m.topic, msg, seq, ct, bool(m.retain), time.time()))

    def publish(self, topic: str, message: dict, *, expiry: int | None = None) -> None:
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("MCP-COMPONENT-TYPE", "mcp-client"), ("MCP-MQTT-CLIENT-ID", self.cid)]
        if self.cbor:
            props.ContentType = "application/cbor"
            payload = cbor2.dumps(message)
        else:
            payload = json.dumps(message).encode()
        if expiry is not None:
            props.MessageExpiryInterval = expiry
        self.client.publish(topic, payload, qos=1, properties=props)

    def send(self, method: str, params: dict | None = None, *, id=None, expiry: int | None = None) -> int:
        msg_id = next(self.ids) if id is None else id
        msg = {"jsonrpc": "2.0", "id": msg_id, "method": method}
        if params is not None:
            msg["params"] = params
        topic = f"$mcp-server/{self.sid}/{self.name}" if method == "initialize" else self.rpc
        self.publish(topic, msg, expiry=expiry)
        return msg_id

    def notify(self, method: str, params: dict | None = None) -> None:
        msg = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            msg["params"] = params
        self.publish(self.rpc, msg)

    def responses(self, msg_id) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.message and r.message.get("id") == msg_id and "method" not in r.message]

    def wait_response(self, msg_id, timeout: float = 15.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.responses(msg_id)
            if got:
                return got[0].message
            time.sleep(0.02)
        raise AssertionError(f"no response to {msg_id} within {timeout} s")

    def request(self, method: str, params: dict | None = None, timeout: float = 15.0) -> dict:
        return self.wait_response(self.send(method, params), timeout)

    def initialize(self) -> dict:
        r = self.request("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                        "clientInfo": {"name": "raw", "version": "0"}})
        self.notify("notifications/initialized")
        return r

    def seqs(self) -> list[int]:
        with self.lock:
            return [r.seq for r in self.received if r.seq is not None]

    def close(self, goodbye: bool = True) -> None:
        if goodbye:
            self.publish(f"$mcp-client/presence/{self.cid}", {"jsonrpc": "2.0", "method": "notifications/disconnected"})
            time.sleep(0.1)
        self.client.loop_stop()
        self.client.disconnect()
