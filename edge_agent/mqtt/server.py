"""The server side of MCP over MQTT, on paho-mqtt 2.x (MQTT 5).

Owns the MQTT connection of one MCP server instance: CONNECT with the MCP user properties and
the retained empty will, the retained online presence, the control topic, per-client
subscriptions (RPC with No Local), the server capability topic, reconnection and
store-and-forward. It moves bytes; it does not know what a tool is.

Threads: none of its own. The MQTT adapter (:mod:`edge_agent.mqtt.loop`) drives paho from the
asyncio event loop, so every paho callback below runs on the loop thread and all state lives
there; only paho's blocking DNS/TCP/TLS connect runs in the default thread pool. The adapter's
:class:`~edge_agent.mqtt.loop.Connection` makes the attempts (broker URLs tried in turn, CONNACK
timeout, tenacity's full-jitter backoff) and a connection that dies soon after it was made counts
as a loss in the same backoff (``reconnect.ReconnectPolicy``), so a flapping link or a second
agent with the same server-id (the broker takes the session over, reason 0x8E) cannot make it
reconnect in a tight loop; the duplicate is logged once.

Source: mqtt-ai/mcp-over-mqtt ``specification/2025-03-26/basic/mqtt_transport.md``
(topics, user properties, service registration/unregistration, initialization, shutdown).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_agent.core import binding, topics
from edge_agent.errors import TransportError
from edge_agent.mqtt import codec
from edge_agent.mqtt.acks import OrderedAcks
from edge_agent.mqtt.broker_url import BrokerURL
from edge_agent.mqtt.lanes import BusyLane, LaneTable, Overlap, keep_sorting
from edge_agent.mqtt.loop import Connection, LoopDriver, PackedProperties, Refusals
from edge_agent.mqtt.outbox import MemoryStore, Outbox, OutboxStore, StoredRow, WaitingRows
from edge_agent.mqtt.profiles import LinkSettings
from edge_agent.mqtt.reconnect import Loss, ReconnectPolicy

log = logging.getLogger(__name__)

DISCONNECTED = binding.DISCONNECTED
SEQ_PROPERTY = "EDGE-AGENT-SEQ"
REFUSAL_RETRY_S = 30.0  # a refused control subscription or presence is tried again this often
LANE_MID = 1 << 20  # added to the busy lane's paho mids (<= 65535) in the PUBACK bookkeeping
LATE_MAX = 1024  # such messages held at once; more are handled at once
LATE_BATCH = 8  # messages of a client on the busy lane that came on the main connection, per loop step
RETRY_LANE_S = 300.0  # a busy lane the broker refused is tried again after this long

__all__ = ["DISCONNECTED", "Incoming", "LinkSettings", "MqttServerTransport", "user_properties"]


def user_properties(props: Any) -> dict[str, str]:
    """The MQTT 5 user properties of a packet as a dict (last value wins)."""
    return dict(getattr(props, "UserProperty", None) or [])


class Sent(NamedTuple):
    """A PUBLISH handed to paho: its rc, and its key in the PUBACK bookkeeping (paho's mid, or
    ``LANE_MID`` + mid on the busy lane)."""

    rc: MQTTErrorCode
    mid: int


@dataclass(frozen=True)
class Incoming:
    """What the transport knows about an incoming message beyond its payload.

    ``content_type``: MQTT 5 Content Type (``application/cbor`` or None/JSON).
    ``deadline``: Unix time (s) after which the sender's Message Expiry Interval ran out, or None.
    ``received``: Unix time (s) it reached this process.
    ``ack``: with ``ack_when_handled``, call it once the message is handled to send its PUBACK
    (a no-op if the connection it came on is gone: the broker sends it again); None: acknowledged
    on receipt.
    ``redelivered``: the MQTT DUP flag (the broker sent it before, on this or an earlier connection).
    """

    content_type: str | None = None
    deadline: float | None = None
    received: float = 0.0
    ack: Callable[[], None] | None = None
    redelivered: bool = False


@dataclass(frozen=True)
class TlsSettings:
    """TLS for ``mqtts://`` brokers: ``ca_file`` (PEM; None = the system CA store),
    ``cert_file``/``key_file`` (client certificate for mTLS), ``insecure`` (no certificate or
    host name verification: only for a bench, logged loudly at every connection)."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False


@dataclass
class LinkStats:
    """Link health counters (``device://link``)."""

    connects: int = 0
    disconnects: int = 0
    failed_attempts: int = 0
    published: int = 0
    received: int = 0
    malformed: int = 0
    retained_dropped: int = 0  # retained messages on the control or an RPC topic (see _route)
    redelivered: int = 0  # messages that came with the MQTT DUP flag (sent again by the broker)
    presence_cleared: int = 0  # stale presences cleared on brokers this server failed over from
    last_error: str | None = None
    outage_started: float | None = None  # monotonic
    last_outage_s: float | None = None
    rtt_ms: float | None = None
    qos0_dropped: int = 0
    qos0_unconfirmed: int = 0  # QoS 0 messages sent into a connection that then died
    early_losses: int = 0  # connections that ended before they were stable
    takeovers: int = 0  # losses judged a session takeover (reported 0x8E or suspected)
    server_id_conflict: str | None = None  # None, "reported" (0x8E) or "suspected"
    broker: str = ""
    since: float = field(default_factory=time.time)


class MqttServerTransport:
    """One MCP server instance's MQTT link.

    Callbacks (run on the asyncio loop): ``on_control(client_id, payload, incoming)`` for a
    message on the control topic (``initialize``), ``on_rpc(client_id, payload, incoming)`` for
    a message on an RPC topic of this server, ``on_client_gone(client_id)`` when a client's
    presence says ``notifications/disconnected`` (or is empty), ``on_connected()`` after every
    (re)connect once presence is online and the outbox is being drained.

    ``brokers``: tried in turn (failover); all must share one TLS mode. ``store``: the state
    store for the outbox (the device's SQLite ``Store``; a :class:`~edge_agent.mqtt.outbox.MemoryStore`
    when None: nothing survives a restart). ``collision_hint(server_id)``: the "Fix: ..." sentence
    of the duplicate server-id warning. ``driver``: the loop driver to share (one of its own
    when None).
    """

    def __init__(self, *, server_id: str, server_name: str, description: str, meta: dict[str, Any],
                 loop: asyncio.AbstractEventLoop,
                 on_control: Callable[[str, bytes, Incoming], Any], on_rpc: Callable[[str, bytes, Incoming], Any],
                 on_client_gone: Callable[[str], Any], on_connected: Callable[[], Any] | None = None,
                 broker: BrokerURL | None = None, brokers: list[BrokerURL] | None = None,
                 settings: LinkSettings | None = None, username: str | None = None,
                 password: str | None = None, store: OutboxStore | None = None, tls: TlsSettings | None = None,
                 collision_hint: Callable[[str], str] | None = None, driver: LoopDriver | None = None):
        self.server_id = topics.check_id(server_id, "server-id")
        self.server_name = topics.check_server_name(server_name)
        self.description = description
        self.meta = meta
        self.brokers = list(brokers or ([broker] if broker else []))
        if not self.brokers:
            raise ValueError("at least one broker URL is needed")
        if len({b.tls for b in self.brokers}) > 1:
            raise ValueError("all broker URLs must be mqtt:// or all mqtts://, not a mix")
        self.broker = self.brokers[0]
        self.loop = loop
        self.settings = settings or LinkSettings()
        self.on_control, self.on_rpc, self.on_client_gone = on_control, on_rpc, on_client_gone
        self.on_connected = on_connected
        self.username, self.password = username, password
        self.clients: set[str] = set()
        self.encodings: dict[str, str] = {}  # mcp-client-id -> content type of its session
        self.stats = LinkStats(broker=str(self.broker))
        self.connected = asyncio.Event()
        self.store: OutboxStore = store if store is not None else MemoryStore()
        self.collision_hint = collision_hint or (lambda sid: "give each agent its own server-id")
        self.outbox = Outbox(self.store, max_messages=self.settings.outbox_max_messages,
                             max_bytes=self.settings.outbox_max_bytes)
        self._inflight: dict[int, tuple[int, int, float]] = {}  # mid -> (row id, size, sent monotonic)
        # stored rows waiting for a free slot in paho's in-flight window (max_inflight), oldest first
        self._waiting = WaitingRows()  # round-robin by topic: one client's answers do not hold up another's
        self._qos0_sent: collections.deque[float] = collections.deque(maxlen=65536)  # monotonic
        self._last_heard = 0.0  # monotonic time of the last packet from the broker we saw
        self._answer_waiters: dict[int, asyncio.Future[Any]] = {}  # mid -> waiter for an answer's PUBACK
        # QoS 1 messages to a client's RPC topic handed to paho and not yet acknowledged (backlog())
        self._rpc_mids: dict[int, str] = {}  # mid -> mcp-client-id
        self._backlog: dict[str, int] = {}  # mcp-client-id -> how many
        self._qos0: collections.deque[tuple[str, bytes, str | None]] = collections.deque()
        self._pending_sub: dict[int, asyncio.Future] = {}
        self._published: dict[int, asyncio.Future] = {}  # mid -> waiter for its PUBACK (stop())
        self.refusals = Refusals(log)  # what the broker refused (SUBACK/PUBACK >= 0x80), device://link
        self._watched: dict[int, tuple[str, list[str]]] = {}  # mid -> (subscribe|publish, topics): judged on ack
        self.settled = asyncio.Event()  # this connection's control SUBACK and presence PUBACK came
        self._stopping = False
        self._presence_on: set[BrokerURL] = set()  # brokers our online presence was published on
        self._clearing: dict[BrokerURL, asyncio.Task[None]] = {}  # presence cleanups under way
        # device://link "sessions" (live, bound, evicted, reaped): set by the endpoint
        self.session_counters: Callable[[], dict[str, Any]] | None = None
        self.policy = ReconnectPolicy(self.settings.reconnect_min, self.settings.reconnect_max)
        # the busy lane (edge_agent.mqtt.lanes): clients that pipeline get a broker queue of their own
        self.lanes = LaneTable(self.settings.busy_lane_after, self.settings.busy_lane_calm)
        self.lane: BusyLane | None = None
        self._sorter: asyncio.Task[None] | None = None
        self._late: collections.deque[tuple[Any, ...]] = collections.deque()  # see _on_message
        self.overlap = Overlap()  # a moving client's messages that reach both sessions
        self._acks = OrderedAcks(lambda mid, qos: self.client.ack(mid, qos), lambda: self.driver.write_soon(self.client))

        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.server_id, protocol=mqtt.MQTTv5,
                        manual_ack=self.settings.ack_when_handled)
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        c.on_unsubscribe = self._on_subscribe
        c.on_publish = self._on_publish
        c.max_inflight_messages_set(self.settings.max_inflight)
        self.tls = tls or TlsSettings()
        if self.brokers[0].tls:
            import ssl

            c.tls_set(ca_certs=self.tls.ca_file, certfile=self.tls.cert_file, keyfile=self.tls.key_file,
                      cert_reqs=ssl.CERT_NONE if self.tls.insecure else ssl.CERT_REQUIRED)
            if self.tls.insecure:
                c.tls_insecure_set(True)
        self.client = c
        # keepalive sweep: fine enough for the half-open check at 1.5x keepalive
        self._own_driver = driver is None
        self.driver = driver or LoopDriver(loop, misc_interval=min(1.0, self.settings.keepalive / 10))
        self.connection = Connection(
            c, self.brokers, driver=self.driver, keepalive=self.settings.keepalive,
            connack_timeout=self.settings.connack_timeout, policy=self.policy, clean_start=self.settings.clean_start,
            connect_properties=self._connect_properties, username=self.username, password=self.password,
            tls_insecure=self.tls.insecure, logger=log, on_connected=self._connected,
            on_disconnected=self._disconnected, on_attempt=self._attempting, on_attempt_failed=self._attempt_failed,
            on_loss=self._count_loss, takeover_message=self._takeover_message,
            max_packet_size=self.settings.max_packet_size or None)
        self._base_props = [("MCP-COMPONENT-TYPE", topics.COMPONENT_SERVER), ("MCP-MQTT-CLIENT-ID", self.server_id)]
        self._pub_props: Properties = PackedProperties(PacketTypes.PUBLISH)  # packed once
        self._pub_props.UserProperty = list(self._base_props)
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
        if self.settings.receive_maximum:
            props.ReceiveMaximum = self.settings.receive_maximum
        props.UserProperty = [("MCP-COMPONENT-TYPE", topics.COMPONENT_SERVER),
                              ("MCP-META", codec.encode({"implementation": "edge-agent", **self.meta}).decode())]
        return props

    # ----------------------------------------------------------------- lifecycle
    async def start(self, timeout: float | None = 30.0) -> None:
        """Start connecting (it keeps trying, with backoff, until a broker answers) and wait
        until the presence is online. ``timeout=None`` waits forever.

        Raises:
            TransportError: not connected within ``timeout`` seconds (the message gives the
                last error: refused, unreachable, no CONNACK). The attempts go on until
                :meth:`stop`.
        """
        self.connection.start()
        try:
            await asyncio.wait_for(self.connected.wait(), timeout)
        except asyncio.TimeoutError:
            raise TransportError(f"broker {', '.join(map(str, self.brokers))} did not accept a connection within "
                                 f"{timeout:g} s (last error: {self.stats.last_error or 'none'})") from None

    async def stop(self, *, notify_clients: bool = True, timeout: float = 5.0) -> None:
        """Clean shutdown: optionally tell clients ``notifications/disconnected``, clear the
        retained presence (empty payload), wait up to ``timeout`` s for their PUBACKs, DISCONNECT
        (no will on a clean disconnect), stop reconnecting. Unacknowledged QoS 1 messages stay in
        the outbox for the next start."""
        self._stopping = True
        if self.connection.up:
            infos = []
            if notify_clients:
                for cid in list(self.clients):
                    infos.append(self.client.publish(self.rpc_topic(cid), self._encode(cid, DISCONNECTED),
                                                      qos=self.settings.qos_notifications, properties=self._pub_props))
            infos.append(self.client.publish(self.presence_topic, b"", qos=1, retain=True, properties=self._pub_props))
            self.driver.flush(self.client)
            waiters = []
            for info in infos:
                if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS and not info.is_published():
                    waiters.append(self._published.setdefault(info.mid, self.loop.create_future()))
            if waiters:
                await asyncio.wait(waiters, timeout=timeout)
        for task in list(self._clearing.values()):
            task.cancel()
        self._clearing.clear()
        if self._sorter is not None:
            self._sorter.cancel()
            self._sorter = None
        if self.lane is not None:
            await self.lane.stop(min(timeout, 2.0))
        await self.connection.stop(timeout)
        if self._own_driver:
            self.driver.close()
        self._published.clear()
        self.connected.clear()

    def _takeover_message(self, loss: Loss, broker: BrokerURL) -> str:
        if loss.takeover == "reported":
            how = "the broker took this session over (DISCONNECT reason 0x8E \"Session taken over\")"
        else:
            how = (f"the broker closed this connection right after accepting it, {self.policy.suspect_after} times "
                   f"in a row, without a reason code (what brokers older than Mosquitto 2.0.15 do on a session "
                   f"takeover)")
        return (f"another agent uses the same server-id {self.server_id!r} on {broker}: {how}. The two disconnect each "
                f"other; this agent now waits a random backoff of up to {self.settings.reconnect_max:g} s before "
                f"each reconnect and logs no further takeovers (they are counted in device://link \"takeovers\"). "
                f"Fix: {self.collision_hint(self.server_id)}")

    async def _clear_left(self, url: BrokerURL, retry: float = 5.0, give_up: float = 3600.0) -> None:
        """Clear our presence on ``url``, a broker we left (see :mod:`edge_agent.mqtt.presence`)."""
        from edge_agent.mqtt.presence import clear_presence

        deadline = self.loop.time() + give_up
        try:
            while self.loop.time() < deadline:
                if await clear_presence(self.driver, url, self.presence_topic, f"{self.server_id}-presence",
                                        username=self.username, password=self.password, tls=self.tls):
                    self.stats.presence_cleared += 1
                    log.info("cleared the presence this server left behind on %s", url)
                    return
                await asyncio.sleep(retry)
            log.warning("could not clear the presence this server left behind on %s within %g s", url, give_up)
        finally:
            if self._clearing.get(url) is asyncio.current_task():
                del self._clearing[url]

    def _count_loss(self, loss: Loss) -> None:
        if loss.early:
            self.stats.early_losses += 1
        if loss.takeover:
            self.stats.takeovers += 1
            self.stats.server_id_conflict = loss.takeover

    def _attempting(self, url: BrokerURL) -> None:
        self.stats.broker = str(url)

    def _attempt_failed(self, text: str) -> None:
        self.stats.failed_attempts += 1
        self.stats.last_error = text

    # ----------------------------------------------------------------- sending
    def _encode(self, client_id: str | None, message: dict[str, Any]) -> bytes:
        return codec.encode(message, self.encodings.get(client_id) if client_id else None)

    def backlog(self, client_id: str) -> int:
        """QoS 1 messages to ``client_id``'s RPC topic handed to paho and not yet acknowledged by
        the broker (queued behind paho's in-flight window, which the broker's Receive Maximum
        bounds, or in flight). The endpoint counts them against the client's in-flight bound: a
        client that sends faster than its answers drain is refused, not queued in our heap."""
        return self._backlog.get(client_id, 0) + self._waiting.rpc(client_id)

    def send_rpc(self, client_id: str, message: dict[str, Any], *, seq: int | None = None,
                 acked: asyncio.Future[Any] | None = None, qos: int | None = None) -> int | None:
        """Publish a JSON-RPC message on ``$mcp-rpc/{client_id}/{server-id}/{server-name}``
        (a response, or a notification such as progress), in the session's encoding. Returns
        its ``EDGE-AGENT-SEQ`` (None: sent without one). ``seq``: send an answer again under the
        sequence number it first went out with (receivers that deduplicate by it see it once),
        directly, not through the outbox (offline: not at all), and ``acked`` (a future) is
        resolved by its PUBACK. This is how an answer the durable reply cache keeps goes out:
        its copy on disk is the reply cache's, and the request it answers is acknowledged only
        after this PUBACK, so a crash before it makes the broker send the request again.
        ``qos``: instead of the profile's QoS for the kind (0: a refusal that must not wait
        behind the client's backlog nor add to it)."""
        kind = "response" if "id" in message and "method" not in message else "notification"
        payload, content_type = self._encode(client_id, message), self.encodings.get(client_id)
        if seq is None:
            return self.publish(self.rpc_topic(client_id), payload, kind=kind, content_type=content_type, qos=qos)
        if self.connected.is_set():
            expires = time.time() + self.settings.message_expiry if self.settings.message_expiry else None
            self.store.outbox_sent(seq)
            info = self._send(self.rpc_topic(client_id), payload, self.settings.qos(kind), False, content_type, seq,
                              expires)
            if acked is not None and info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._answer_waiters[info.mid] = acked
        return seq

    def next_seq(self) -> int:
        """A new ``EDGE-AGENT-SEQ`` (an outbox id no row will have) for :meth:`send_rpc` ``seq``."""
        return self.store.outbox_next_id()

    def send_capability(self, message: dict[str, Any]) -> None:
        """Publish a notification on the server capability topic (always JSON):
        ``resources/updated`` as telemetry, ``*/list_changed`` as notifications."""
        kind = "telemetry" if message.get("method") == "notifications/resources/updated" else "notification"
        self.publish(self.capability_topic, codec.encode(message), kind=kind)

    def publish(self, topic: str, payload: bytes, *, kind: str, content_type: str | None = None,
                retain: bool = False, qos: int | None = None) -> int | None:
        """Publish with the QoS of ``kind`` (or ``qos``): QoS 1 through the outbox (stored until
        PUBACK), QoS 0 directly or, while offline, into a bounded in-memory queue (oldest dropped).
        Returns the outbox row id (= ``EDGE-AGENT-SEQ``), or None (not through the outbox, or dropped)."""
        qos = self.settings.qos(kind) if qos is None else qos
        if qos == 0:
            if self.connected.is_set():
                self._send(topic, payload, 0, retain, content_type, None, None)
            else:
                if len(self._qos0) >= self.settings.qos0_queue:
                    self._qos0.popleft()
                    self.stats.qos0_dropped += 1
                self._qos0.append((topic, payload, content_type))
            return None
        expires = time.time() + self.settings.message_expiry if kind == "response" and self.settings.message_expiry else None
        if not self.settings.durable_outbox and self.connected.is_set():
            self._send(topic, payload, qos, retain, content_type, None, expires)
            return None
        row = self.outbox.add(topic, payload, qos=qos, retain=retain, kind=kind, content_type=content_type,
                              expires=expires, in_flight=(r for r, _, _ in self._inflight.values()))
        for gone in self.outbox.last_dropped:
            self._waiting.discard(gone)
        if row is None:
            return None
        if self.connected.is_set():
            self._send_row(row)
        return row.id

    def _send(self, topic: str, payload: bytes, qos: int, retain: bool, content_type: str | None,
              seq: int | None, expires: float | None, lane_ok: bool = True) -> Sent:
        """Hand one PUBLISH to paho. A message to the RPC topic of a client on the busy lane goes
        out on the lane (``lane_ok``; not the durable outbox's rows, which keep the main
        connection's window): its answers then neither wait behind nor hold up the other
        clients' in paho's in-flight window. Returns paho's rc and the message's key for the
        PUBACK bookkeeping (the lane's mids are offset by ``LANE_MID``)."""
        lane = self.lane if lane_ok and self.lanes.on_lane and self.lane is not None and self.lane.up \
            and topic.startswith("$mcp-rpc/") and topic.split("/", 2)[1] in self.lanes.on_lane else None
        if content_type is None and seq is None and expires is None:
            props = self._pub_props
        else:
            props = Properties(PacketTypes.PUBLISH)
            props.UserProperty = self._base_props + ([(SEQ_PROPERTY, str(seq))] if seq is not None else [])
            if content_type:
                props.ContentType = content_type
            if expires is not None:
                props.MessageExpiryInterval = max(1, int(expires - time.time()))
        info = self.driver.publish(lane.client if lane else self.client, topic, payload, qos=qos, retain=retain,
                                   properties=props)
        mid = info.mid + LANE_MID if lane else info.mid
        self.stats.published += 1
        if qos and topic.startswith("$mcp-rpc/"):
            client_id = topic.split("/", 2)[1]
            earlier = self._rpc_mids.get(mid)
            if earlier is not None:  # (paho's mids wrap at 65535)
                self._unqueued(mid)
            self._rpc_mids[mid] = client_id
            self._backlog[client_id] = self._backlog.get(client_id, 0) + 1
        if qos == 0:
            self._qos0_sent.append(time.monotonic())
        return Sent(info.rc, mid)

    def _send_row(self, row: StoredRow) -> None:
        """Hand a stored row to paho, or, while paho's in-flight window is full, queue it here
        (where the outbox policy still reaches it)."""
        if len(self._inflight) >= self.settings.max_inflight:
            self._waiting.add(row)
            return
        if row.expires is not None and row.expires <= time.time():
            self.outbox.ack(row.id, row.size)
            self.outbox.drops["expired"] += 1
            self.store.count("expired")
            return
        info = self._send(row.topic, row.payload, row.qos, row.retain, row.content_type, row.id, row.expires,
                          lane_ok=False)
        if info.rc in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            self._inflight[info.mid] = (row.id, row.size, time.monotonic())
            self.store.outbox_sent(row.id)
        else:
            log.warning("publish to %s failed: %s (kept in the outbox)", row.topic, mqtt.error_string(info.rc))

    def _drain(self) -> None:
        """After a (re)connect: send stored rows not already in paho's hands, oldest first,
        then the QoS 0 messages held while offline."""
        self._waiting.clear()
        for row in self.outbox.pending(exclude=[r for r, _, _ in self._inflight.values()]):
            self._send_row(row)
        while self._qos0:
            topic, payload, ct = self._qos0.popleft()
            self._send(topic, payload, 0, False, ct, None, None)

    def publish_presence(self) -> None:
        info = self.client.publish(self.presence_topic, codec.encode(self.online_message()), qos=1, retain=True,
                                   properties=self._pub_props)
        self._watched[info.mid] = ("publish", [self.presence_topic])

    @property
    def serving(self) -> bool:
        """Connected, and the broker granted the control-topic subscription and accepted the
        retained presence (a SUBACK/PUBACK refusal, 0x87 "Not authorized" from an ACL: clients
        can neither find nor reach this server, so it is not serving)."""
        refused = self.refusals.by_topic
        return (self.connected.is_set() and f"subscribe {self.control_topic}" not in refused
                and f"publish {self.presence_topic}" not in refused)

    def _judged(self, mid: int, codes: list[Any]) -> None:
        """A watched SUBACK/PUBACK: record refusals; try a refused control subscription or
        presence again in 30 s (an ACL may be fixed meanwhile, e.g. live with dynsec)."""
        kind, watched = self._watched.pop(mid)
        if self.refusals.update(kind, watched, codes if kind == "subscribe" else codes * len(watched)):
            self.loop.call_later(REFUSAL_RETRY_S, self._retry_refused)
        if not self._watched:
            self.settled.set()

    def _retry_refused(self) -> None:
        if not self.connected.is_set():
            return  # the next connect subscribes and publishes anyway
        refused = self.refusals.by_topic
        if f"subscribe {self.control_topic}" in refused:
            qos = self.settings.qos_rpc
            _, mid = self.client.subscribe([(self.control_topic, SubscribeOptions(
                qos=qos, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND))])
            if mid is not None:
                self._watched[mid] = ("subscribe", [self.control_topic])
        if f"publish {self.presence_topic}" in refused:
            self.publish_presence()

    def update_meta(self, key: str, value: Any) -> bool:
        """Set ``meta[key]`` (e.g. ``catalogDigest``) and, if it changed while connected,
        re-publish the retained presence with it (offline: the next connect publishes it).
        True if the value changed."""
        if self.meta.get(key) == value:
            return False
        self.meta[key] = value
        if self.connected.is_set():
            self.publish_presence()
        return True

    # ----------------------------------------------------------------- per-client topics
    def _client_filters(self, client_id: str) -> list[tuple[str, SubscribeOptions]]:
        q = self.settings.qos_rpc
        return [
            (topics.client_presence(client_id), SubscribeOptions(qos=q)),
            (topics.client_capability(client_id), SubscribeOptions(qos=q)),
            (self.rpc_topic(client_id), SubscribeOptions(qos=q, noLocal=True,
                                                         retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)),
        ]

    async def serve_client(self, client_id: str, timeout: float = 10.0) -> None:
        """Subscribe to a client's presence, capability and RPC (No Local) topics and wait for
        the SUBACK: the spec requires this before the initialize response. Offline, the
        subscriptions are made on the next connect.

        Raises:
            TransportError: no SUBACK within ``timeout`` s, or the broker refused a filter.
        """
        topics.check_id(client_id, "mcp-client-id")
        self.clients.add(client_id)
        self._off_lane(client_id)  # (initialized again: back on the main connection, subscribed below)
        if not self.connected.is_set():
            return
        fut = self.loop.create_future()
        rc, mid = self.client.subscribe(self._client_filters(client_id))
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
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
            self.refusals.count += 1
            raise TransportError(f"broker refused subscriptions for client {client_id}: {bad}")

    def drop_client(self, client_id: str, *, notify: bool) -> None:
        """Stop serving a client: optionally send it ``notifications/disconnected`` on its RPC
        topic (server-initiated de-initialize), then unsubscribe its three topics."""
        if notify:
            self.send_rpc(client_id, DISCONNECTED)
        self.clients.discard(client_id)
        self.encodings.pop(client_id, None)
        if not self._off_lane(client_id) and self.client.is_connected():
            self.client.unsubscribe([t for t, _ in self._client_filters(client_id)])

    # ----------------------------------------------------------------- the busy lane
    def crowded(self, client_id: str, in_flight: int, bound: int) -> int:
        """The endpoint's count of ``client_id``'s requests in flight (answers queued for the
        broker included): at ``busy_lane_after`` the client moves to the busy lane
        (:mod:`edge_agent.mqtt.lanes`). Returns the client's in-flight bound: ``bound``, or
        ``busy_lane_after`` while it is on the lane (a flood's work, answers written to the
        durable outbox included, stays small beside the other clients')."""
        if self.lanes.crowded(client_id, in_flight) and client_id in self.clients and not self._stopping:
            self._to_lane(client_id)
        return min(bound, self.lanes.after) if client_id in self.lanes.on_lane else bound

    def _lane(self) -> BusyLane:
        if self.lane is None:
            s = self.settings
            here = self.connection.broker
            self.lane = BusyLane(
                server_id=self.server_id, brokers=[here] + [b for b in self.brokers if b != here],
                driver=self.driver, keepalive=s.keepalive, connack_timeout=s.connack_timeout,
                session_expiry=s.session_expiry, reconnect_min=s.reconnect_min, reconnect_max=s.reconnect_max,
                max_packet_size=s.max_packet_size or None, username=self.username, password=self.password,
                tls=self.tls, manual_ack=s.ack_when_handled, max_inflight=s.max_inflight, on_message=self._on_message,
                on_publish=lambda mid, code: self._on_publish(None, None, mid + LANE_MID, code, None),
                clean_start=s.clean_start, receive_maximum=s.receive_maximum,
                stale=lambda: [self._client_filters(c) for c in self.clients if c not in self.lanes.on_lane],
                on_refused=self._lane_refused, on_down=self._lane_down)
            self.lane.start()
            self._sorter = self.loop.create_task(keep_sorting(self.lanes, self._from_lane, self.lanes.calm / 4))
        return self.lane

    def _to_lane(self, client_id: str) -> None:
        self.lanes.moving.add(client_id)
        self.overlap.start(client_id)

        def then(ok: bool) -> None:
            self.lanes.moving.discard(client_id)
            if not ok or client_id not in self.clients:
                if ok and self.lane is not None:
                    self.lane.unsubscribe(client_id)
                return
            self.lanes.on_lane[client_id] = time.monotonic()
            self.lanes.moves += 1
            if self.client.is_connected():
                self.client.unsubscribe([t for t, _ in self._client_filters(client_id)])
            log.info("client %s pipelines %d+ requests: moved to the busy lane (a broker queue of its own)",
                     client_id[:64], self.lanes.after)
        self._lane().subscribe(client_id, self._client_filters(client_id), then)

    def _from_lane(self, client_id: str) -> None:
        """Back to the main connection: subscribe there, then leave the lane on the SUBACK."""
        if client_id not in self.lanes.on_lane or not self.connected.is_set():
            return
        rc, mid = self.client.subscribe(self._client_filters(client_id))
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            return
        self.overlap.start(client_id)
        fut = self._pending_sub[mid] = self.loop.create_future()

        def back(f: asyncio.Future[Any]) -> None:
            self._pending_sub.pop(mid, None)
            if f.cancelled() or any(getattr(c, "is_failure", False) for c in f.result()):
                return
            if self._off_lane(client_id):
                self.lanes.returns += 1
                log.info("client %s calm for %g s: back on the main connection", client_id[:64], self.lanes.calm)
        fut.add_done_callback(back)

    def _off_lane(self, client_id: str) -> bool:
        """Forget ``client_id`` on the lane (unsubscribing there); True if it was on it."""
        self.lanes.moving.discard(client_id)
        was = self.lanes.on_lane.pop(client_id, None) is not None
        if self.lane is not None:
            self.lane.unsubscribe(client_id)
        return was

    def _lane_down(self) -> None:
        """The lane's connection went down: its clients are served on the main one again."""
        for cid in list(self.lanes.on_lane):
            self.lanes.on_lane.pop(cid, None)
            if cid in self.clients and not self._stopping and self.client.is_connected():
                self.client.subscribe(self._client_filters(cid))
        self.lanes.moving.clear()

    def _lane_refused(self, text: str) -> None:
        self.lanes.refused_until = time.monotonic() + RETRY_LANE_S
        self.lanes.moving.clear()
        lane, self.lane = self.lane, None
        if self._sorter is not None:
            self._sorter.cancel()
            self._sorter = None
        if lane is not None:
            self.loop.create_task(lane.stop())
        if self.lanes.refusals_logged:
            log.debug("the broker refused the busy lane again: %s", text)
            return
        self.lanes.refusals_logged += 1
        log.warning("the broker refused this server's busy lane (MQTT client id %s: %s); clients that pipeline "
                    "stay on the main connection, where their flood queues ahead of the others' requests. "
                    "Allow this client id for the device's user, or set [link] busy_lane_after = 0 "
                    "(docs/unreliable-links.md, \"A client that floods\"); trying again every %g s",
                    lane.client_id if lane else "?", text, RETRY_LANE_S)

    def link_health(self) -> dict[str, Any]:
        """``device://link``: connected or not, reconnects, last outage, outbox, drops, RTT;
        ``malformed``: control messages without a valid sender id; ``dropped_malformed``:
        messages dropped unread because paho would have refused them (see
        :meth:`edge_agent.mqtt.loop.LoopDriver.malformed`)."""
        s = self.stats
        outage = round(time.monotonic() - s.outage_started, 1) if s.outage_started is not None else None
        drops = dict(self.outbox.drops)
        if s.qos0_dropped:
            drops["qos0_queue_full"] = s.qos0_dropped
        if s.qos0_unconfirmed:
            drops["qos0_unconfirmed"] = s.qos0_unconfirmed
        return {
            "connected": self.connected.is_set(), "broker": s.broker, "profile": self.settings.profile,
            "connects": s.connects, "reconnects": max(0, s.connects - 1), "failed_attempts": s.failed_attempts,
            "current_outage_s": outage, "last_outage_s": s.last_outage_s, "last_error": s.last_error,
            "outbox": {"messages": self.outbox.depth, "bytes": self.outbox.size, "in_flight": len(self._inflight),
                       "waiting": len(self._waiting),
                       "max_messages": self.outbox.max_messages, "max_bytes": self.outbox.max_bytes},
            "qos0_queued": len(self._qos0), "drops": drops, "rtt_ms": s.rtt_ms,
            "early_losses": s.early_losses, "takeovers": s.takeovers, "server_id_conflict": s.server_id_conflict,
            "published": s.published, "received": s.received, "malformed": s.malformed,
            "redelivered": s.redelivered, "presence_cleared": s.presence_cleared,
            # messages paho would have closed the connection over (U+FEFF, NUL, invalid UTF-8 in
            # a property or the topic), dropped by the adapter (edge_agent.mqtt.loop.malformed_reason)
            "dropped_malformed": self.driver.malformed(self.client), "retained_dropped": s.retained_dropped,
            "serving": self.serving, "refused": dict(self.refusals.by_topic), "refusals": self.refusals.count,
            "keepalive_s": self.settings.keepalive, "session_expiry_s": self.settings.session_expiry,
            "sessions": self.session_counters() if self.session_counters is not None else None,
            "busy_lane": {"up": bool(self.lane and self.lane.up), "clients": len(self.lanes.on_lane),
                          "received": self.lane.received if self.lane else 0,
                          "moves": self.lanes.moves, "returns": self.lanes.returns, "late": self.lanes.late,
                          "duplicates_dropped": self.overlap.dropped},
        }

    # ----------------------------------------------------------------- paho callbacks (event loop)
    def _connected(self, flags, properties) -> None:
        self.stats.connects += 1
        # failover: clear the presence left behind on the broker(s) this server was on before
        here = self.connection.broker
        for url in self._presence_on - {here}:
            if url not in self._clearing:
                self._clearing[url] = self.loop.create_task(self._clear_left(url))
        self._presence_on = {here}
        stale = self._clearing.pop(here, None)
        if stale is not None:
            stale.cancel()  # back on it: the fresh presence replaces the old one
        if self.stats.outage_started is not None:
            self.stats.last_outage_s = round(time.monotonic() - self.stats.outage_started, 3)
            self.stats.outage_started = None
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
        log.info("connected to %s as %s (%s)%s", self.stats.broker, self.server_id, self.server_name,
                 " (session present)" if getattr(flags, "session_present", False) else "")
        # Retain Handling 2: a message retained on the control topic is never sent to us
        subs = [(self.control_topic, SubscribeOptions(qos=self.settings.qos_rpc,
                                                      retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND))]
        for cid in self.clients:
            if cid not in self.lanes.on_lane:
                subs.extend(self._client_filters(cid))
        self.settled.clear()
        self._watched.clear()
        _, mid = self.client.subscribe(subs)
        if mid is not None:
            self._watched[mid] = ("subscribe", [t for t, _ in subs])
        self.publish_presence()
        self._drain()
        if self.settings.busy_lane_standby and self.lanes.after and self.lane is None:
            self._lane()  # connected before any client floods: the first move is one round trip
        self.connected.set()
        if self.on_connected:
            self.on_connected()

    def _disconnected(self, reason_code) -> None:
        was = self.connected.is_set()
        self.connected.clear()
        self._acks.reset(-1)  # what is unacknowledged the broker sends again on the next connection
        # QoS 0 messages written after the broker's last sign of life (a PUBACK, a message; at
        # the latest the PINGRESP 1.5 keepalives ago) went into a connection that died: counted
        # as lost (some may have arrived: nobody can tell)
        since = max(self._last_heard, time.monotonic() - 1.5 * self.settings.keepalive)
        lost = sum(1 for t in self._qos0_sent if t > since)
        self._qos0_sent.clear()
        if lost and not self._stopping:
            self.stats.qos0_unconfirmed += lost
            self.store.count("qos0_unconfirmed", lost)
        if was:
            self.stats.disconnects += 1
            self.stats.outage_started = time.monotonic()
            self.stats.last_error = str(reason_code)
        # logged by the Connection, which knows how the loss is judged

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        if mid in self._watched:
            self._judged(mid, [reason_code])
        self._acked(mid, reason_code)

    def _unqueued(self, mid: int) -> None:
        client_id = self._rpc_mids.pop(mid, None)
        if client_id is not None:
            n = self._backlog.get(client_id, 0) - 1
            if n > 0:
                self._backlog[client_id] = n
            else:
                self._backlog.pop(client_id, None)

    def _acked(self, mid: int, reason_code: Any) -> None:
        self._unqueued(mid)
        waiter = self._published.pop(mid, None) or self._answer_waiters.pop(mid, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(reason_code)
        entry = self._inflight.pop(mid, None)
        if entry is None:
            return  # (paho also reports a QoS 0 message as published once written: no sign of the broker)
        self._last_heard = time.monotonic()
        row_id, size, sent = entry
        self.stats.rtt_ms = round((time.monotonic() - sent) * 1000, 2)
        if getattr(reason_code, "is_failure", False):
            log.warning("broker refused message %d: %s (dropped)", row_id, reason_code)
            self.outbox.drops["refused_by_broker"] += 1
            self.store.count("refused_by_broker")
        self.outbox.ack(row_id, size)
        while self._waiting and len(self._inflight) < self.settings.max_inflight and self.connected.is_set():
            row = self._waiting.pop_next()  # a slot in paho's window is free: the next topic's turn
            self._send_row(row)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        self._subacked(mid, reason_codes)

    def _subacked(self, mid, reason_codes) -> None:
        if mid in self._watched:
            self._judged(mid, list(reason_codes or []))
        fut = self._pending_sub.get(mid)
        if fut is not None and not fut.done():
            fut.set_result(list(reason_codes or []))

    def _on_message(self, client, userdata, message: mqtt.MQTTMessage, lane: BusyLane | None = None) -> None:
        """A PUBLISH on the main connection or (``lane``) on the busy lane: routed alike."""
        ack = self._acker(message.mid, message.qos, lane) if self.settings.ack_when_handled and message.qos else None
        args = (message.topic, bytes(message.payload), message.properties, time.time(), message.retain, ack,
                bool(message.dup))
        if self.overlap.clients and message.topic.startswith("$mcp-rpc/"):
            cid = message.topic.split("/", 2)[1]
            if self.overlap.duplicate(cid, 0 if lane is None else 1, args[1], 1 if cid not in self.lanes.on_lane else 0):
                if ack is not None:
                    ack()  # the copy that came on the other connection is the one handled
                return
        if lane is None:
            self._last_heard = time.monotonic()
            if (self.lanes.on_lane or self.lanes.moving) and len(self._late) < LATE_MAX \
                    and message.topic.startswith("$mcp-rpc/") and self.lanes.busy(message.topic.split("/", 2)[1]):
                # a busy client's message on the main connection (queued at the broker before the
                # client moved, or while it moves), ahead of the other clients' requests: taken
                # off the socket now, handled a few per loop step after them
                self.lanes.late += 1
                self._late.append(args)
                if len(self._late) == 1:
                    self.loop.call_soon(self._late_step)
                return
        self._route(*args)

    def _late_step(self) -> None:
        for _ in range(min(LATE_BATCH, len(self._late))):
            self._route(*self._late.popleft())
        if self._late:
            self.loop.call_soon(self._late_step)

    def _acker(self, mid: int, qos: int, lane: BusyLane | None = None) -> Callable[[], None]:
        """The PUBACK of message ``mid`` of this connection (or of the busy lane's), sent when
        called (once) and every earlier message of the connection is acknowledged
        (:mod:`edge_agent.mqtt.acks`). A connection that is gone sends nothing: the broker sends
        the message again on the next one."""
        acks, epoch = (self._acks, self.stats.connects) if lane is None else (lane.acks, lane.connects)
        if acks.epoch != epoch:
            acks.reset(epoch)
        return acks.add(mid, qos)

    def _route(self, topic: str, payload: bytes, properties: Any, received: float, retain: bool = False,
               ack: Callable[[], None] | None = None, dup: bool = False) -> None:
        if ack is None:
            self._dispatch(topic, payload, properties, received, retain, None, dup)
            return
        if not self._dispatch(topic, payload, properties, received, retain, ack, dup):
            ack()  # not handed on: nothing to wait for

    def _dispatch(self, topic: str, payload: bytes, properties: Any, received: float, retain: bool,
                  ack: Callable[[], None] | None, dup: bool) -> bool:
        """Route by topic prefix (interop checklist), not by our subscription table.

        A retained message on the control topic or an RPC topic is dropped and counted
        (``retained_dropped``): requests are never retained by a client, so one is planted (a
        stale ``initialize`` or a poison that would replay at every reconnect). The control
        topic is also subscribed with Retain Handling 2 (MQTT 5 §3.8.3.1: no retained messages
        at subscribe), so the broker does not even send it; the check covers brokers that do."""
        self.stats.received += 1
        if dup:
            self.stats.redelivered += 1
        parsed = topics.parse(topic)
        if parsed is None:
            return False
        if retain and parsed.kind in ("control", "rpc"):
            self.stats.retained_dropped += 1
            if self.stats.retained_dropped == 1:
                log.warning("retained message on %r dropped: requests must not be retained (further ones are only "
                            "counted in device://link retained_dropped)", topic[:120])
            return False
        expiry = getattr(properties, "MessageExpiryInterval", None)
        incoming = Incoming(content_type=getattr(properties, "ContentType", None),
                            deadline=received + expiry if expiry else None, received=received, ack=ack,
                            redelivered=dup)
        if parsed.kind == "control":
            if parsed.server_id != self.server_id:
                return False
            sender = user_properties(properties).get("MCP-MQTT-CLIENT-ID")
            try:
                topics.check_id(sender or "", "MCP-MQTT-CLIENT-ID")
            except ValueError as exc:
                self.stats.malformed += 1
                log.warning("control message without a valid MCP-MQTT-CLIENT-ID user property dropped: %s", exc)
                return False
            self.on_control(sender or "", payload, incoming)
            return True
        elif parsed.kind == "rpc":
            if parsed.server_id == self.server_id and parsed.client_id:
                self.on_rpc(parsed.client_id, payload, incoming)
                return True
        elif parsed.kind == "client-presence":
            if parsed.client_id in self.clients and _is_disconnected(payload):
                self.on_client_gone(parsed.client_id)
        # client-capability: roots/list_changed; this server does not use roots.
        return False


def _is_disconnected(payload: bytes) -> bool:
    """Empty payload or exactly a ``notifications/disconnected`` notification (the binding's
    rule: :func:`edge_agent.core.binding.client_gone`), in JSON or CBOR."""
    return binding.client_gone(payload, codec.decode)
