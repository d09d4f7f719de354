"""The server side of MCP over MQTT, on paho-mqtt 2.x (MQTT 5).

Owns the MQTT connection of one MCP server instance: CONNECT with the MCP user properties and
the retained empty will, the retained online presence, the control topic, per-client
subscriptions (RPC with No Local) and the server capability topic. It moves bytes; it does not
know what a tool is. Incoming messages are handed to the asyncio loop through
``loop.call_soon_threadsafe`` (paho's network thread never runs our code otherwise).

Source: mqtt-ai/mcp-over-mqtt ``specification/2025-03-26/basic/mqtt_transport.md``
(topics, user properties, service registration/unregistration, initialization, shutdown).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from dataclasses import dataclass, field
from typing import Any, Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from ..errors import TransportError
from . import topics
from .broker_url import BrokerURL

log = logging.getLogger(__name__)

DISCONNECTED = {"jsonrpc": "2.0", "method": "notifications/disconnected"}


def _encode(msg: dict[str, Any]) -> bytes:
    return json.dumps(msg, separators=(",", ":"), ensure_ascii=False).encode()


def user_properties(props: Any) -> dict[str, str]:
    """The MQTT 5 user properties of a packet as a dict (last value wins)."""
    return dict(getattr(props, "UserProperty", None) or [])


@dataclass
class LinkSettings:
    """MQTT link parameters (the ``lan`` profile: the spec's defaults).

    ``keepalive``: seconds (MQTT keepalive; a dead link is noticed after ~1.5× this).
    ``qos``: QoS of RPC messages and notifications (0 or 1). ``session_expiry``: seconds
    (0 = clean session, as the spec requires). ``reconnect_min``/``reconnect_max``: seconds
    of paho's reconnect backoff.
    """

    keepalive: int = 30
    qos: int = 1
    session_expiry: int = 0
    clean_start: bool = True
    reconnect_min: int = 1
    reconnect_max: int = 30
    max_inflight: int = 20


@dataclass
class _Counters:
    connects: int = 0
    disconnects: int = 0
    published: int = 0
    received: int = 0
    malformed: int = 0


class MqttServerTransport:
    """One MCP server instance's MQTT link.

    Callbacks (run on the asyncio loop): ``on_control(client_id, payload)`` for a message on
    the control topic (``initialize``), ``on_rpc(client_id, payload)`` for a message on an RPC
    topic of this server, ``on_client_gone(client_id)`` when a client's presence says
    ``notifications/disconnected`` (or is empty), ``on_connected()`` after every (re)connect
    once presence is online.
    """

    def __init__(self, *, server_id: str, server_name: str, description: str, meta: dict[str, Any],
                 broker: BrokerURL, loop: asyncio.AbstractEventLoop,
                 on_control: Callable[[str, bytes], Any], on_rpc: Callable[[str, bytes], Any],
                 on_client_gone: Callable[[str], Any], on_connected: Callable[[], Any] | None = None,
                 settings: LinkSettings | None = None, username: str | None = None,
                 password: str | None = None):
        self.server_id = topics.check_id(server_id, "server-id")
        self.server_name = topics.check_server_name(server_name)
        self.description = description
        self.meta = meta
        self.broker = broker
        self.loop = loop
        self.settings = settings or LinkSettings()
        self.on_control, self.on_rpc, self.on_client_gone = on_control, on_rpc, on_client_gone
        self.on_connected = on_connected
        self.clients: set[str] = set()
        self.counters = _Counters()
        self.connected = asyncio.Event()
        self._first_connack: asyncio.Future | None = None
        self._pending_sub: dict[int, asyncio.Future] = {}
        self._stopping = False

        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.server_id, protocol=mqtt.MQTTv5)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        c.on_unsubscribe = self._on_subscribe
        c.on_socket_open = _nodelay
        c.reconnect_delay_set(self.settings.reconnect_min, self.settings.reconnect_max)
        c.max_inflight_messages_set(self.settings.max_inflight)
        user, pw = username or broker.username, password or broker.password
        if user:
            c.username_pw_set(user, pw)
        if broker.tls:
            c.tls_set()
        self.client = c
        self._pub_props = Properties(PacketTypes.PUBLISH)
        self._pub_props.UserProperty = [("MCP-COMPONENT-TYPE", topics.COMPONENT_SERVER),
                                        ("MCP-MQTT-CLIENT-ID", self.server_id)]
        self._set_will()

    # ----------------------------------------------------------------- topics
    @property
    def presence_topic(self) -> str:
        return topics.server_presence(self.server_id, self.server_name)

    @property
    def control_topic(self) -> str:
        return topics.server_control(self.server_id, self.server_name)

    @property
    def capability_topic(self) -> str:
        return topics.server_capability(self.server_id, self.server_name)

    def rpc_topic(self, client_id: str) -> str:
        return topics.rpc(client_id, self.server_id, self.server_name)

    def online_message(self) -> dict[str, Any]:
        """The retained ``notifications/server/online`` (always with server_name, description, meta)."""
        return {"jsonrpc": "2.0", "method": "notifications/server/online",
                "params": {"server_name": self.server_name, "description": self.description, "meta": self.meta}}

    def _set_will(self) -> None:
        # Spec "Service Unregistration": will = empty retained payload on the presence topic.
        self.client.will_set(self.presence_topic, payload=None, qos=1, retain=True)

    def _connect_properties(self) -> Properties:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.settings.session_expiry
        props.UserProperty = [("MCP-COMPONENT-TYPE", topics.COMPONENT_SERVER),
                              ("MCP-META", json.dumps({"implementation": "edge-agent", **self.meta}, separators=(",", ":")))]
        return props

    # ----------------------------------------------------------------- lifecycle
    async def start(self, timeout: float | None = 30.0) -> None:
        """Connect (paho retries in the background until the broker answers) and wait until
        the presence is online. ``timeout=None`` waits forever.

        Raises:
            TransportError: the broker refused the connection (bad credentials, not authorised)
                or did not answer within ``timeout`` seconds.
        """
        self._first_connack = self.loop.create_future()
        self.client.connect_async(self.broker.host, self.broker.port, keepalive=self.settings.keepalive,
                                  clean_start=self.settings.clean_start, properties=self._connect_properties())
        self.client.loop_start()
        try:
            await asyncio.wait_for(asyncio.shield(self._first_connack), timeout)
        except asyncio.TimeoutError:
            raise TransportError(f"broker {self.broker} did not accept a connection within {timeout} s") from None
        await self.connected.wait()

    async def stop(self, *, notify_clients: bool = True, timeout: float = 5.0) -> None:
        """Clean shutdown: tell clients ``notifications/disconnected``, clear the retained
        presence (empty payload), then DISCONNECT (no will is sent on a clean disconnect)."""
        self._stopping = True
        if self.client.is_connected():
            infos = []
            if notify_clients:
                for cid in list(self.clients):
                    infos.append(self._publish(self.rpc_topic(cid), _encode(DISCONNECTED), self.settings.qos))
            infos.append(self._publish(self.presence_topic, b"", 1, retain=True))
            await asyncio.to_thread(_wait_all, infos, timeout)
            self.client.disconnect()
        self.client.loop_stop()
        self.connected.clear()

    # ----------------------------------------------------------------- sending
    def _publish(self, topic: str, payload: bytes, qos: int, retain: bool = False) -> mqtt.MQTTMessageInfo:
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=self._pub_props)
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS or info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            self.counters.published += 1
        return info

    def send_rpc(self, client_id: str, message: dict[str, Any]) -> None:
        """Publish a JSON-RPC message on ``$mcp-rpc/{client_id}/{server-id}/{server-name}``."""
        self._publish(self.rpc_topic(client_id), _encode(message), self.settings.qos)

    def send_capability(self, message: dict[str, Any]) -> None:
        """Publish a notification on the server capability topic (list_changed, resources/updated)."""
        self._publish(self.capability_topic, _encode(message), self.settings.qos)

    def publish_presence(self) -> None:
        self._publish(self.presence_topic, _encode(self.online_message()), 1, retain=True)

    # ----------------------------------------------------------------- per-client topics
    def _client_filters(self, client_id: str) -> list[tuple[str, SubscribeOptions]]:
        q = self.settings.qos
        return [
            (topics.client_presence(client_id), SubscribeOptions(qos=q)),
            (topics.client_capability(client_id), SubscribeOptions(qos=q)),
            (self.rpc_topic(client_id), SubscribeOptions(qos=q, noLocal=True)),
        ]

    async def serve_client(self, client_id: str, timeout: float = 10.0) -> None:
        """Subscribe to a client's presence, capability and RPC (No Local) topics and wait for
        the SUBACK: the spec requires this before the initialize response.

        Raises:
            TransportError: no SUBACK within ``timeout`` s, or the broker refused a filter.
        """
        topics.check_id(client_id, "mcp-client-id")
        self.clients.add(client_id)
        if not self.client.is_connected():
            return  # re-subscribed on reconnect
        fut = self.loop.create_future()
        rc, mid = self.client.subscribe(self._client_filters(client_id))
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise TransportError(f"subscribe for client {client_id} failed: {mqtt.error_string(rc)}")
        self._pending_sub[mid] = fut
        try:
            codes = await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise TransportError(f"no SUBACK for client {client_id} within {timeout} s") from None
        finally:
            self._pending_sub.pop(mid, None)
        bad = [c for c in codes if getattr(c, "is_failure", False)]
        if bad:
            raise TransportError(f"broker refused subscriptions for client {client_id}: {bad}")

    def drop_client(self, client_id: str, *, notify: bool) -> None:
        """Stop serving a client: optionally send it ``notifications/disconnected`` on its RPC
        topic (server-initiated de-initialize), then unsubscribe its three topics."""
        if notify:
            self.send_rpc(client_id, DISCONNECTED)
        self.clients.discard(client_id)
        if self.client.is_connected():
            self.client.unsubscribe([t for t, _ in self._client_filters(client_id)])

    # ----------------------------------------------------------------- paho callbacks (network thread)
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self.loop.call_soon_threadsafe(self._connected, reason_code, properties)

    def _connected(self, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("broker %s refused the connection: %s", self.broker, reason_code)
            if self._first_connack and not self._first_connack.done():
                self._first_connack.set_exception(TransportError(f"broker {self.broker} refused the connection: {reason_code}"))
                self.client.loop_stop()
            return
        self.counters.connects += 1
        suggested = user_properties(properties).get("MCP-SERVER-NAME")
        if suggested and suggested != self.server_name:
            try:
                topics.check_server_name(suggested)
            except ValueError as exc:
                log.warning("ignoring the broker's MCP-SERVER-NAME: %s", exc)
            else:
                # Spec: the server MUST use the broker's server-name. The will was registered
                # under the old name; the next reconnect registers it under the new one.
                log.info("broker assigned server-name %s (configured: %s)", suggested, self.server_name)
                self.server_name = suggested
                self._set_will()
        log.info("connected to %s as %s (%s)", self.broker, self.server_id, self.server_name)
        subs = [(self.control_topic, SubscribeOptions(qos=self.settings.qos))]
        for cid in self.clients:
            subs.extend(self._client_filters(cid))
        self.client.subscribe(subs)
        self.publish_presence()
        if self._first_connack and not self._first_connack.done():
            self._first_connack.set_result(True)
        self.connected.set()
        if self.on_connected:
            self.on_connected()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.loop.call_soon_threadsafe(self._disconnected, reason_code)

    def _disconnected(self, reason_code) -> None:
        self.connected.clear()
        self.counters.disconnects += 1
        if not self._stopping:
            log.warning("lost the broker %s (%s); reconnecting", self.broker, reason_code)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        self.loop.call_soon_threadsafe(self._subacked, mid, reason_codes)

    def _subacked(self, mid, reason_codes) -> None:
        fut = self._pending_sub.get(mid)
        if fut is not None and not fut.done():
            fut.set_result(list(reason_codes or []))

    def _on_message(self, client, userdata, message: mqtt.MQTTMessage) -> None:
        self.loop.call_soon_threadsafe(self._route, message.topic, message.payload, message.properties)

    def _route(self, topic: str, payload: bytes, properties: Any) -> None:
        """Route by topic prefix (interop checklist), not by our subscription table."""
        self.counters.received += 1
        parsed = topics.parse(topic)
        if parsed is None:
            return
        if parsed.kind == "control":
            if parsed.server_id != self.server_id:
                return
            sender = user_properties(properties).get("MCP-MQTT-CLIENT-ID")
            try:
                topics.check_id(sender or "", "MCP-MQTT-CLIENT-ID")
            except ValueError as exc:
                self.counters.malformed += 1
                log.warning("control message without a valid MCP-MQTT-CLIENT-ID user property dropped: %s", exc)
                return
            self.on_control(sender, payload)
        elif parsed.kind == "rpc":
            if parsed.server_id == self.server_id and parsed.client_id:
                self.on_rpc(parsed.client_id, payload)
        elif parsed.kind == "client-presence":
            if parsed.client_id in self.clients and _is_disconnected(payload):
                self.on_client_gone(parsed.client_id)
        # client-capability: roots/list_changed; this server does not use roots.


def _is_disconnected(payload: bytes) -> bool:
    """Empty payload or a ``notifications/disconnected`` JSON-RPC notification."""
    if not payload:
        return True
    try:
        return json.loads(payload).get("method") == "notifications/disconnected"
    except (ValueError, AttributeError):
        return False


def _nodelay(client, userdata, sock) -> None:
    """Disable Nagle: a QoS 1 round trip on loopback drops from ~40 ms to well under 1 ms."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):  # a TLS/websocket wrapper without setsockopt
        pass


def _wait_all(infos: list[mqtt.MQTTMessageInfo], timeout: float) -> None:
    for info in infos:
        try:
            info.wait_for_publish(timeout)
        except (RuntimeError, ValueError):
            pass
