"""One paho-mqtt 2.x client (MQTT 5) for anyio code on asyncio: the cloud side's only MQTT code.

Concurrency model: the MQTT adapter (:class:`edge_agent.mqtt.loop.LoopDriver`) drives paho from
the event loop itself (``add_reader``/``add_writer`` on the socket, a keepalive timer), so
paho's callbacks run **on the event loop**, in arrival order, and hand their event straight to
the link's handler: no thread, no queue, no wake-up socket. Every piece of state the cloud
side keeps (pending SUBACKs and PUBACKs, discovered servers, pending requests) is touched by
the event loop only. Calls into paho (``publish``, ``subscribe``, ``disconnect``) queue a packet
that the loop writes; only paho's blocking DNS/TCP/TLS connect runs in a worker thread. The
event loop must be asyncio's (anyio's default backend): trio has no ``add_reader``.

Source for the CONNECT / PUBLISH user properties: mqtt-ai/mcp-over-mqtt
``specification/2025-03-26/basic/mqtt_transport.md``, "User Property".
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import anyio
import anyio.abc
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_agent import __version__
from edge_agent.core import topics
from edge_agent.errors import TransportError
from edge_agent.mqtt.broker_url import BrokerURL, parse_broker_url
from edge_agent.mqtt.loop import LoopDriver, PackedProperties

log = logging.getLogger(__name__)

KEEPALIVE = 30
"""MQTT keepalive of the cloud-side client, in seconds."""

PROP_COMPONENT_TYPE = "MCP-COMPONENT-TYPE"
PROP_META = "MCP-META"
PROP_CLIENT_ID = "MCP-MQTT-CLIENT-ID"
PROP_SERVER_NAME_FILTERS = "MCP-SERVER-NAME-FILTERS"
PROP_RBAC = "MCP-RBAC"


@dataclass(frozen=True)
class Incoming:
    """One PUBLISH received from the broker.

    ``payload`` is the raw bytes (empty for a cleared presence); ``user_properties`` maps each
    user property name to its last value.
    """

    topic: str
    payload: bytes
    retain: bool = False
    user_properties: dict[str, str] = field(default_factory=dict)
    content_type: str | None = None


@dataclass(frozen=True)
class Will:
    """The will the broker publishes if this client vanishes (not retained unless asked)."""

    topic: str
    payload: bytes
    retain: bool = False


def user_properties(props: Properties | None) -> dict[str, str]:
    """The user properties of a received packet as a dict (last value wins); ``{}`` if none."""
    pairs = getattr(props, "UserProperty", None) or []
    return {str(k): str(v) for k, v in pairs}


def component_meta(meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``MCP-META`` object: ``{"version", "implementation": "edge-agent"}`` plus ``meta``."""
    return {"version": __version__, "implementation": "edge-agent", **(meta or {})}


def connect_properties(component: str, meta: dict[str, Any] | None = None) -> Properties:
    """CONNECT properties: clean session (Session Expiry Interval 0) and the MCP user properties.

    ``MCP-COMPONENT-TYPE`` = ``component`` and ``MCP-META`` = :func:`component_meta` as JSON.
    """
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 0
    props.UserProperty = [
        (PROP_COMPONENT_TYPE, component),
        (PROP_META, json.dumps(component_meta(meta), separators=(",", ":"))),
    ]
    return props


def publish_properties(component: str, client_id: str, packet_type: int = PacketTypes.PUBLISH) -> Properties:
    """PUBLISH (or will) properties: ``MCP-COMPONENT-TYPE`` and ``MCP-MQTT-CLIENT-ID``."""
    props = Properties(packet_type)
    props.UserProperty = [(PROP_COMPONENT_TYPE, component), (PROP_CLIENT_ID, client_id)]
    return props


def suggested_filters(connack: dict[str, str]) -> list[str] | None:
    """The broker's ``MCP-SERVER-NAME-FILTERS`` from CONNACK user properties, or ``None``.

    A value that is not a JSON array of strings is logged and ignored.
    """
    raw = connack.get(PROP_SERVER_NAME_FILTERS)
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        log.warning("ignoring malformed %s from the broker: %r", PROP_SERVER_NAME_FILTERS, raw)
        return None
    return value


class MqttLink:
    """An MQTT 5 connection of one MCP component, usable from anyio code.

    Use as ``async with MqttLink(url, client_id=...) as link:``. Entering connects (clean
    start, Session Expiry Interval 0, CONNECT user properties, ``TCP_NODELAY``) and waits for
    CONNACK; leaving disconnects cleanly (so the will is *not* published). ``TCP_NODELAY`` is
    set by the adapter.

    Set ``on_message`` (a plain callable, run on the event loop, in arrival order) and
    ``on_lost`` (called once with a reason string if the broker connection drops while the
    link is open) before subscribing.

    Raises (on enter):
        TransportError: ``cannot reach broker mqtt://host:port: Connection refused`` (any
            socket error, or no CONNACK within ``connect_timeout`` seconds), or the broker
            refused the CONNECT (bad credentials, not authorized).
        ValueError: a malformed broker URL or client id.
    """

    def __init__(self, broker_url: str | BrokerURL, *, client_id: str,
                 component: str = topics.COMPONENT_CLIENT, will: Will | None = None, qos: int = 1,
                 username: str | None = None, password: str | None = None,
                 meta: dict[str, Any] | None = None, connect_timeout: float = 10.0,
                 keepalive: int = KEEPALIVE, tls: Any = None):
        self.url = broker_url if isinstance(broker_url, BrokerURL) else parse_broker_url(broker_url)
        self.tls = tls  # edge_agent.mqtt.server.TlsSettings (CA, client certificate and key) for mqtts://
        self.client_id = topics.check_id(client_id, "mcp-client-id")
        self.component = component
        self.qos = qos
        self.connect_timeout = connect_timeout
        self.keepalive = keepalive
        self.connack_properties: dict[str, str] = {}
        self.on_message: Callable[[Incoming], None] | None = None
        self.on_lost: Callable[[str], None] | None = None
        self.lost: str | None = None

        self._will = will
        self._meta = meta
        self._username = username if username is not None else self.url.username
        self._password = password if password is not None else self.url.password
        self._publish_props: Properties = PackedProperties(PacketTypes.PUBLISH)  # same for every message: packed once
        self._publish_props.UserProperty = [(PROP_COMPONENT_TYPE, component), (PROP_CLIENT_ID, self.client_id)]
        self._driver: LoopDriver | None = None  # while entered
        self._gone: anyio.Event | None = None  # set by paho's on_disconnect
        self._connack: anyio.Event | None = None
        self._connack_rc: Any = None
        self._subacks: dict[int, tuple[anyio.Event, list[Any]]] = {}
        self._pubacks: dict[int, anyio.Event] = {}
        self.refused_publishes: dict[int, str] = {}  # mid -> PUBACK reason code the broker refused it with (last 100)
        self._closing = False
        self._task_group: anyio.abc.TaskGroup | None = None
        self._client = self._make_client()

    # -- paho side (runs on the event loop, inside paho's callbacks) -------------------------

    def _post(self, *event: Any) -> None:
        try:
            self._handle(event)
        except Exception:  # a bug in one handler must not stop the link
            log.exception("error handling MQTT event %s", event[0])

    def _make_client(self) -> mqtt.Client:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=mqtt.MQTTv5, reconnect_on_failure=False)
        client.connect_timeout = self.connect_timeout
        client.suppress_exceptions = True  # a bug in a callback must not break paho's read loop
        if self.url.tls:
            tls = self.tls
            client.tls_set(ca_certs=getattr(tls, "ca_file", None), certfile=getattr(tls, "cert_file", None),
                           keyfile=getattr(tls, "key_file", None))
        if self._username:
            client.username_pw_set(self._username, self._password)
        if self._will is not None:
            client.will_set(self._will.topic, self._will.payload, qos=self.qos, retain=self._will.retain,
                            properties=publish_properties(self.component, self.client_id, PacketTypes.WILLMESSAGE))
        client.on_connect = lambda c, u, flags, rc, props: self._post("connack", rc, user_properties(props))
        client.on_subscribe = lambda c, u, mid, rcs, props: self._post("suback", mid, list(rcs))
        client.on_publish = lambda c, u, mid, rc, props: self._post("puback", mid, rc)
        client.on_disconnect = lambda c, u, flags, rc, props: self._post(
            "disconnect", str(rc) if flags.is_disconnect_packet_from_server else "the connection dropped")
        client.on_message = lambda c, u, m: self._post(
            "message", Incoming(m.topic, bytes(m.payload), bool(m.retain), user_properties(m.properties),
                                getattr(m.properties, "ContentType", None)))
        return client

    # -- event-loop side -----------------------------------------------------------------------

    @property
    def dropped_malformed(self) -> int:
        """Incoming messages the adapter dropped unread because paho would have closed the
        connection over them (U+FEFF, NUL or invalid UTF-8 in a property or the topic: see
        :func:`edge_agent.mqtt.loop.malformed_reason`); 0 while not entered."""
        return self._driver.malformed(self._client) if self._driver is not None else 0

    async def __aenter__(self) -> "MqttLink":
        self._driver = LoopDriver(asyncio.get_running_loop(), misc_interval=min(1.0, self.keepalive / 10))
        self._driver.attach(self._client)
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        try:
            await self._connect()
        except BaseException:
            await self._shutdown()
            raise
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._shutdown()

    async def _connect(self) -> None:
        self._connack = anyio.Event()
        props = connect_properties(self.component, self._meta)

        assert self._driver is not None
        try:  # bounded by paho's connect_timeout on the socket
            await self._driver.connect(self._client, self.url.host, self.url.port, keepalive=self.keepalive,
                                       clean_start=True, properties=props)
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise TransportError(f"cannot reach broker {self.url}: {reason}") from exc
        with anyio.move_on_after(self.connect_timeout):
            await self._connack.wait()
        if not self._connack.is_set():
            raise TransportError(f"cannot reach broker {self.url}: no CONNACK within {self.connect_timeout:g} s")
        rc = self._connack_rc
        if getattr(rc, "is_failure", False):
            raise TransportError(f"broker {self.url} refused the connection: {rc}")
        log.debug("connected to %s as %s (CONNACK properties %s)", self.url, self.client_id, self.connack_properties)

    def _handle(self, event: tuple[Any, ...]) -> None:
        kind = event[0]
        if kind == "message":
            if self.on_message is not None:
                self.on_message(event[1])
        elif kind == "connack":
            self._connack_rc, self.connack_properties = event[1], event[2]
            if self._connack is not None:
                self._connack.set()
        elif kind == "suback":
            waiter = self._subacks.pop(event[1], None)
            if waiter is not None:
                waiter[1].extend(event[2])
                waiter[0].set()
        elif kind == "puback":
            if getattr(event[2], "is_failure", False):  # e.g. 0x87 Not authorized (an ACL)
                self.refused_publishes[event[1]] = str(event[2])
                while len(self.refused_publishes) > 100:
                    self.refused_publishes.pop(next(iter(self.refused_publishes)))
            done = self._pubacks.pop(event[1], None)
            if done is not None:
                done.set()
        elif kind == "disconnect":
            if self._gone is not None:
                self._gone.set()
            if self._closing or self.lost is not None:
                return
            self.lost = f"lost connection to broker {self.url}: {event[1]}"
            log.debug("%s", self.lost)
            for done in self._pubacks.values():
                done.set()
            for ev, _ in self._subacks.values():
                ev.set()
            if self.on_lost is not None:
                self.on_lost(self.lost)

    def start_soon(self, func: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``func(*args)`` in the link's task group; it is cancelled when the link closes.

        (The owner's ``yield`` then sits in no task group of its own, so an exception raised by
        the caller's code passes through unwrapped, not as an ``ExceptionGroup``.)
        """
        assert self._task_group is not None, "the link is not open"
        self._task_group.start_soon(cast(Any, func), *args)

    async def subscribe(self, subscriptions: Iterable[tuple[str, bool]], *, qos: int | None = None,
                        marker: tuple[str, bytes] | None = None) -> mqtt.MQTTMessageInfo | None:
        """Subscribe to ``(topic_filter, no_local)`` pairs at ``qos`` (default: the link's QoS);
        wait for the SUBACK. (Retained presence is subscribed at QoS 0: a broker's queue limits,
        e.g. Mosquitto's ``max_queued_messages``, bound QoS 1/2 deliveries only; docs/fleet.md.)
        ``marker``: ``(topic, payload)`` published right behind the SUBSCRIBE, in the same write,
        before the SUBACK: the broker handles it after queuing every retained message the
        subscription brings, so it comes back after them, or is dropped with them when the
        broker's queue overflowed (the end-of-retained marker, :func:`edge_agent.client.discovery.discover`).
        Returns the marker's message info (None without a marker).

        Raises:
            TransportError: the broker refused one of them (e.g. an ACL), or no SUBACK within
                ``connect_timeout`` seconds, or the connection is lost.
        """
        subs = [(t, SubscribeOptions(qos=self.qos if qos is None else qos, noLocal=no_local))
                for t, no_local in subscriptions]
        self._check_alive()
        rc, mid = self._client.subscribe(subs)
        if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:
            raise TransportError(f"cannot subscribe at {self.url}: {mqtt.error_string(rc)}")
        done, codes = anyio.Event(), cast(list[Any], [])
        self._subacks[mid] = (done, codes)
        sent = self.publish(*marker) if marker is not None else None
        with anyio.move_on_after(self.connect_timeout):
            await done.wait()
        self._check_alive()
        if not done.is_set():
            self._subacks.pop(mid, None)
            raise TransportError(f"broker {self.url} did not acknowledge the subscription within {self.connect_timeout:g} s")
        for (topic, _), code in zip(subs, codes):
            if getattr(code, "is_failure", False):
                raise TransportError(f"broker {self.url} refused the subscription to {topic}: {code}")
        log.debug("subscribed to %s", [t for t, _ in subs])
        return sent

    def unsubscribe(self, topic_filters: list[str]) -> None:
        """Unsubscribe (fire and forget; a no-op once the connection is gone)."""
        if self.lost is None and not self._closing and topic_filters:
            self._client.unsubscribe(topic_filters)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False,
                content_type: str | None = None) -> mqtt.MQTTMessageInfo:
        """Queue a PUBLISH with the MCP user properties at the link's QoS; returns at once.
        ``content_type`` sets the MQTT 5 Content Type (``application/cbor`` for CBOR).

        Raises:
            TransportError: the connection is gone.
        """
        self._check_alive()
        props = self._publish_props
        if content_type:
            props = publish_properties(self.component, self.client_id)
            props.ContentType = content_type
        if self._driver is None:
            return self._client.publish(topic, payload, qos=self.qos, retain=retain, properties=props)
        return self._driver.publish(self._client, topic, payload, qos=self.qos, retain=retain, properties=props)

    async def publish_and_wait(self, topic: str, payload: bytes, *, retain: bool = False,
                               timeout: float = 2.0) -> bool:
        """Publish and wait up to ``timeout`` seconds for the PUBACK (QoS 0: for the write).

        Returns ``True`` if acknowledged in time. Raises ``TransportError`` if already lost.
        """
        done = anyio.Event()
        info = self.publish(topic, payload, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return False
        if info.is_published():
            return True
        self._pubacks[info.mid] = done
        with anyio.move_on_after(timeout):
            await done.wait()
        self._pubacks.pop(info.mid, None)
        return done.is_set() and self.lost is None

    def _check_alive(self) -> None:
        if self.lost is not None:
            raise TransportError(self.lost)

    async def _shutdown(self) -> None:
        """Disconnect cleanly (no will) and wait (up to 2 s) until the DISCONNECT is written,
        stop driving paho, cancel the link's tasks. Safe twice."""
        if self._closing:
            return
        self._closing = True
        with anyio.CancelScope(shield=True):
            try:
                if self._client.is_connected() and self._driver is not None:
                    self._gone = anyio.Event()
                    self._client.disconnect()
                    self._driver.flush(self._client)
                    with anyio.move_on_after(2.0):
                        await self._gone.wait()
            except Exception:  # pragma: no cover - paho raises nothing here in practice
                log.debug("disconnect failed", exc_info=True)
        if self._driver is not None:
            self._driver.close()
        if self._task_group is not None:  # (exited outside the shield: LIFO)
            self._task_group.cancel_scope.cancel()
            await self._task_group.__aexit__(None, None, None)
            self._task_group = None
