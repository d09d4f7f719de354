"""The busy lane: a second MQTT session of one server for the clients that pipeline (issue 12 item 7).

Why it exists: a broker keeps **one queue per session**, in arrival order (Mosquitto:
``max_inflight_messages`` in flight, ``max_queued_messages`` more queued, the rest dropped). All
of a server's clients reach it through that one queue, so a client that floods the server with
requests puts its flood ahead of every other client's request, and no scheduling inside the
server can help: the server cannot reorder what the broker has not handed it, and a request that
arrives when the queue is full is dropped by the broker without a word (its sender's PUBLISH was
acknowledged). Per-client in-flight bounds in the server cap its memory, not that queue.

What the lane does: when a client has ``busy_lane_after`` requests in flight at once (its
answers still queued for the broker included), :class:`~edge_agent.mqtt.server.MqttServerTransport`
moves that client's three subscriptions (presence, capability, RPC) from its main connection to
this lane, a second connection of the same server with MQTT client id ``<server-id>-busy``. From
then on the broker queues that client's traffic in a session of its own, and the other clients'
requests never wait behind it (a fair share per session at the broker; the one event loop reads
both sockets in turn, a bounded batch of packets each). Its answers go out on the lane too, so
they neither wait behind the others' answers in the main connection's in-flight window (the
broker's Receive Maximum) nor fill it; only the durable outbox's stored rows keep the main
connection (they are resent there after a reconnect). On the lane the client's in-flight bound
is ``busy_lane_after``. A client whose in-flight count stayed below ``busy_lane_after`` for
``busy_lane_calm`` seconds moves back the same way; when the lane's connection dies, its clients
move back at once. The lane connects with the main connection (``busy_lane_standby``, the
default) or at the first move, and then stays up.

The flood a client had already queued on the main connection when it moved is taken off that
socket at once and handled a few messages per loop step after the other clients' (the
transport's ``late``), so the requests queued behind it are not held up by its handling.

A move subscribes on the new connection first and unsubscribes on the old one when the SUBACK
came, so nothing published meanwhile is lost; a message published in between reaches both
sessions, byte for byte. :class:`Overlap` drops the second copy: while a client moves (and as
long as its messages keep coming on both connections), a payload already seen on the other
connection is acknowledged and dropped, so every request is handled, and answered, once.

The lane's session follows the main connection's: with a persistent session (``unreliable``:
``clean_start = false``, a session expiry) what the broker queued on the lane while the agent was
down (a crash while a client was on the lane) is delivered at the next start and answered like
any request (the sessions are restored by then); the filters that session still holds are then
unsubscribed for every client the main connection serves (a message in between reaches both: see
above). Filters of clients that left meanwhile stay in that session until it expires; what comes
on them gets the core's -32600 "no session" answer. With a clean start (``lan``) the lane's
first connection in a process starts clean too; later ones do not, so an outage of the lane
alone loses nothing. A broker that refuses the lane (an ACL bound to one client id per user, e.g.
Mosquitto's dynamic security ``clientid``) turns it off: the clients go back to the main
connection, a warning names the cause, and the lane is tried again after five minutes.

No protocol logic lives here: messages go to the transport's ``on_message`` as the main
connection's do.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_agent.core import topics
from edge_agent.mqtt.acks import OrderedAcks
from edge_agent.mqtt.broker_url import BrokerURL
from edge_agent.mqtt.loop import Connection, LoopDriver
from edge_agent.mqtt.reconnect import ReconnectPolicy

log = logging.getLogger(__name__)

SUFFIX = "-busy"
READ_BATCH = 8  # packets per loop step from the lane's socket (the main connection: LoopDriver.READ_BATCH)

Filters = list[tuple[str, SubscribeOptions]]


def lane_client_id(server_id: str) -> str:
    """The busy lane's MQTT client id for ``server_id`` (``<server-id>-busy``)."""
    return server_id + SUFFIX


class BusyLane:
    """The second connection. Built by the transport; all callbacks run on the event loop.

    ``on_message(client, userdata, message, lane)``: the transport's handler for a PUBLISH that
    came on this lane; ``on_publish(mid, reason_code)``: a PUBLISH sent on the lane was
    acknowledged (QoS 1) or written (QoS 0). ``on_up()``: after each (re)connect, once subscribed. ``on_refused(text)``:
    the broker refused the lane at its first connection (it is stopped by then).
    """

    def __init__(self, *, server_id: str, brokers: list[BrokerURL], driver: LoopDriver, keepalive: int,
                 connack_timeout: float, session_expiry: int, reconnect_min: float, reconnect_max: float,
                 max_packet_size: int | None, username: str | None, password: str | None,
                 tls: Any, manual_ack: bool, max_inflight: int, on_message: Callable[..., None],
                 on_publish: Callable[[int, Any], None], clean_start: bool, receive_maximum: int,
                 stale: Callable[[], list[Filters]], on_refused: Callable[[str], None],
                 on_down: Callable[[], None]):
        self.client_id = lane_client_id(server_id)
        self.driver = driver
        self.session_expiry, self.receive_maximum = session_expiry, receive_maximum
        self.on_refused, self.on_down = on_refused, on_down
        self.stale = stale  # filters of the clients the main connection serves (session present)
        self.connects = 0
        self.up = False
        self.clients: dict[str, Filters] = {}  # client id -> its filters, subscribed on this lane
        self.waiting: dict[str, Callable[[bool], None]] = {}  # moves asked for before the lane was up
        self.leftover: list[Filters] = []  # filters of clients sent back while the lane was down
        self._subacks: dict[int, Callable[[list[Any]], None]] = {}
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5,
                        manual_ack=manual_ack)
        c.on_message = self._received
        self._handler = on_message
        self.received = 0  # PUBLISH packets that came on the lane
        c.on_subscribe = self._on_subscribe
        c.max_inflight_messages_set(max_inflight)
        c.on_publish = lambda client, userdata, mid, reason_code, properties: on_publish(mid, reason_code)
        if brokers[0].tls:
            import ssl

            c.tls_set(ca_certs=tls.ca_file, certfile=tls.cert_file, keyfile=tls.key_file,
                      cert_reqs=ssl.CERT_NONE if tls.insecure else ssl.CERT_REQUIRED)
            if tls.insecure:
                c.tls_insecure_set(True)
        self.client = c
        self.acks = OrderedAcks(lambda mid, qos: c.ack(mid, qos), lambda: driver.write_soon(c))  # (ack_when_handled)
        self.connection = Connection(
            c, brokers, driver=driver, keepalive=keepalive, connack_timeout=connack_timeout,
            policy=ReconnectPolicy(reconnect_min, reconnect_max), clean_start=clean_start,
            connect_properties=self._connect_properties, username=username, password=password,
            tls_insecure=bool(getattr(tls, "insecure", False)), logger=log, on_connected=self._connected,
            on_disconnected=self._disconnected, on_attempt_failed=self._attempt_failed,
            max_packet_size=max_packet_size, read_batch=READ_BATCH)

    def _received(self, client: Any, userdata: Any, message: Any) -> None:
        self.received += 1
        self._handler(client, userdata, message, self)

    def _connect_properties(self) -> Properties:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.session_expiry
        if self.receive_maximum:
            props.ReceiveMaximum = self.receive_maximum
        props.UserProperty = [("MCP-COMPONENT-TYPE", topics.COMPONENT_SERVER)]
        return props

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.connection.start()

    async def stop(self, timeout: float = 2.0) -> None:
        await self.connection.stop(timeout)
        self.up = False

    def _connected(self, flags: Any, properties: Any) -> None:
        self.connects += 1
        self.up = True
        self.connection.clean_start = False  # from now on an outage of the lane loses nothing
        if getattr(flags, "session_present", False):  # its session kept filters of clients served elsewhere
            self.leftover += self.stale()
        if self.leftover:
            self.client.unsubscribe(sorted({t for filters in self.leftover for t, _ in filters}))
            self.leftover.clear()
        waiting, self.waiting = self.waiting, {}
        for cid, then in waiting.items():
            self.subscribe(cid, self.clients.pop(cid), then)
        log.info("busy lane %s connected", self.client_id)

    def _disconnected(self, reason_code: Any) -> None:
        """The lane went down: its clients go back to the main connection at once (``on_down``),
        so none waits for the lane's reconnect; its session may keep their subscriptions, which
        the next connect removes."""
        self.up = False
        self.acks.reset(-1)
        self.leftover += list(self.clients.values())
        self.clients.clear()
        self._subacks.clear()
        self.on_down()

    def _attempt_failed(self, text: str) -> None:
        if self.connects == 0 and "refused" in text:
            self.on_refused(text)

    # ------------------------------------------------------------------ subscriptions
    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        done = self._subacks.pop(mid, None)
        if done is not None:
            done(list(reason_codes or []))

    def subscribe(self, client_id: str, filters: Filters, then: Callable[[bool], None]) -> None:
        """Serve ``client_id`` on this lane; ``then(True)`` once the broker granted every filter
        (``then(False)``: refused, or the lane is down: the caller keeps it where it was)."""
        self.clients[client_id] = filters
        if not self.up:
            self.waiting[client_id] = then  # subscribed when the lane is up
            return
        rc, mid = self.client.subscribe(filters)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            self.clients.pop(client_id, None)
            then(False)
            return

        def granted(codes: list[Any]) -> None:
            ok = bool(codes) and not any(getattr(c, "is_failure", False) for c in codes)
            if not ok:
                self.clients.pop(client_id, None)
                self.unsubscribe_filters(filters)
            then(ok)
        self._subacks[mid] = granted
        self.driver.flush(self.client)

    def unsubscribe(self, client_id: str) -> None:
        self.waiting.pop(client_id, None)
        filters = self.clients.pop(client_id, None)
        if filters:
            self.unsubscribe_filters(filters)

    def unsubscribe_filters(self, filters: Filters) -> None:
        if self.up:
            self.client.unsubscribe([t for t, _ in filters])
            self.driver.flush(self.client)


class LaneTable:
    """Which clients are on the busy lane, and since when they are calm (pure bookkeeping).

    ``after``: requests in flight at once that move a client (0: never). ``calm``: seconds below
    that before it moves back.
    """

    def __init__(self, after: int, calm: float):
        self.after, self.calm = after, calm
        self.moving: set[str] = set()  # subscribe on the lane sent, SUBACK not yet in
        self.on_lane: dict[str, float] = {}  # client id -> monotonic time it last had `after` in flight
        self.moves = 0
        self.returns = 0
        self.late = 0  # messages of a client on the lane that still came on the main connection
        self.refused_until = 0.0  # monotonic: the broker refused the lane; no move before then
        self.refusals_logged = 0

    def crowded(self, client_id: str, in_flight: int) -> bool:
        """Record ``in_flight`` for ``client_id``; True if it should move to the lane now."""
        if not self.after or in_flight < self.after:
            return False
        now = time.monotonic()
        if client_id in self.on_lane:
            self.on_lane[client_id] = now
            return False
        return client_id not in self.moving and now >= self.refused_until

    def busy(self, client_id: str) -> bool:
        """On the lane or moving there."""
        return client_id in self.on_lane or client_id in self.moving

    def calm_ones(self) -> list[str]:
        """Clients on the lane whose last crowded moment is ``calm`` seconds old."""
        limit = time.monotonic() - self.calm
        return [cid for cid, t in self.on_lane.items() if t <= limit]


class Overlap:
    """Messages of a moving client that reach both sessions, handled once (see the module).

    Per client: the hashes of the payloads seen lately (Python's per-process salted ``hash``, 8
    bytes, not the payloads: a client's messages may be 256 KiB each) and on which connection
    (0: main, 1: the lane), at most ``KEEP`` of them, and ``MAX_TOTAL`` over all clients (past
    it a move is not watched: a repeat may then be handled twice, as before this existed); a
    client's record ends ``QUIET_S`` seconds after its last message on the connection it left
    (its copies there have all come by then).
    """

    KEEP = 2048
    MAX_TOTAL = 32768
    QUIET_S = 5.0

    def __init__(self) -> None:
        self.clients: dict[str, tuple[dict[int, int], list[float]]] = {}  # id -> (payload hash -> conn, [until])
        self.dropped = 0

    def start(self, client_id: str) -> None:
        if client_id not in self.clients and sum(len(seen) for seen, _ in self.clients.values()) >= self.MAX_TOTAL:
            return
        seen, until = self.clients.setdefault(client_id, ({}, [0.0]))
        until[0] = time.monotonic() + self.QUIET_S

    def duplicate(self, client_id: str, conn: int, payload: bytes, left: int) -> bool:
        """True if ``payload`` of ``client_id`` already came on the other connection (drop it).
        ``conn``: where it came (0: main, 1: the lane); ``left``: the connection the client left."""
        record = self.clients.get(client_id)
        if record is None:
            return False
        seen, until = record
        now = time.monotonic()
        if now > until[0]:
            del self.clients[client_id]
            return False
        key = hash(payload)
        other = seen.get(key)
        if other is not None and other != conn:
            del seen[key]
            self.dropped += 1
            return True
        seen[key] = conn
        if len(seen) > self.KEEP:
            del seen[next(iter(seen))]  # the oldest (dicts keep insertion order)
        if conn == left:
            until[0] = now + self.QUIET_S  # still coming on the connection it left
        return False


async def keep_sorting(table: LaneTable, move_back: Callable[[str], None], period: float) -> None:
    """Every ``period`` s, move the calm clients back to the main connection."""
    while True:
        await asyncio.sleep(period)
        for cid in table.calm_ones():
            move_back(cid)
