"""MCP-over-MQTT client transport for the official ``mcp`` SDK's ``ClientSession``.

Spec: mqtt-ai/mcp-over-mqtt ``specification/2025-03-26/basic/mqtt_transport.md`` (digest in
``spec/mcp-over-mqtt.md``): "Service Discovery", "Initialization", "Capability List Changed",
"Resource Update", "Shutdown". Usage::

    async with mqtt_client("mqtt://broker:1883", "devices/greenhouse/pi-01") as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            await session.list_tools()

Wire behaviour, in order:

1. CONNECT as a new random mcp-client-id (clean start, Session Expiry Interval 0), user
   properties ``MCP-COMPONENT-TYPE=mcp-client`` and ``MCP-META``; will
   ``notifications/disconnected`` on ``$mcp-client/presence/{mcp-client-id}`` (not retained).
2. Discover the server on ``$mcp-server/presence/+/{server-name}`` (or the broker's
   ``MCP-SERVER-NAME-FILTERS``): a given server-id, else a random one of the replicas online
   that announce the newest catalog digest (a rolling upgrade: ``discovery.newest_digest``).
3. Subscribe to ``$mcp-rpc/{mcp-client-id}/{server-id}/{server-name}`` with No Local and to
   ``$mcp-server/capability/{server-id}/{server-name}``, and wait for the SUBACK.
4. Bridge: ``initialize`` goes to ``$mcp-server/{server-id}/{server-name}``, everything else to
   the RPC topic; every PUBLISH carries ``MCP-COMPONENT-TYPE`` and ``MCP-MQTT-CLIENT-ID``.
   From the capability topic, ``notifications/resources/updated`` is passed on only for the
   URIs this client subscribed to; other notifications (``*/list_changed``) always.
5. If the server goes away (empty payload on its presence topic, ``notifications/disconnected``
   on the RPC topic) or the broker connection drops: every pending request is answered with a
   JSON-RPC error ``server devices/x (id) went offline`` (the SDK raises it as ``MCPError``),
   a :class:`~edge_agent.errors.TransportError` with the same text is put on the read stream
   (a ``ClientSession`` hands it to its ``message_handler``), and every later request is
   answered with the same error at once. Nothing hangs.
6. On exit: ``notifications/disconnected`` on the client presence topic, then a clean DISCONNECT.
"""

from __future__ import annotations

import collections
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import mcp_types as types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.shared.message import SessionMessage
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS

from edge_agent.client.discovery import (
    PresenceTable,
    ServerPresence,
    catalog_digest,
    new_client_id,
    newest_digest,
    presence_subscriptions,
)
from edge_agent.client.link import Incoming, MqttLink, Will, suggested_filters
from edge_agent.core import topics
from edge_agent.errors import ServerNotFound, TransportError
from edge_agent.mqtt import codec

TOKEN_META = "dev.edge-agent/token"  # the key edge_agent.server.tokens verifies (docs/security.md)

log = logging.getLogger(__name__)

DISCONNECTED = b'{"jsonrpc":"2.0","method":"notifications/disconnected"}'
"""The client's will and goodbye on its presence topic (spec "Client Disconnect")."""

REPLICA_SETTLE = 0.05
"""Seconds to keep listening after the first matching presence, so every retained replica is seen."""

DEADLINE_META = "dev.edge-agent/deadline"
"""``params._meta`` key of a request's absolute deadline (Unix s), stamped on every request."""

GOODBYE_TIMEOUT = 2.0
"""Seconds to wait for the PUBACK of the goodbye before disconnecting anyway."""

PROTOCOL_VERSIONS = "protocolVersions"
"""Presence meta key of our session-less extension (docs/architecture.md, "Session-less MCP over
MQTT"): the MCP versions a server serves. Without a 2026-07-28 entry there, ``server/discover``
is answered here at once with -32601, so the SDK's ``mode="auto"`` falls back to ``initialize``
without waiting for its 10 s probe timeout (handshake-only servers: EMQX SDKs, older agents)."""
VERSION_META = "io.modelcontextprotocol/protocolVersion"


def _modern_version(req: types.JSONRPCRequest) -> str | None:
    """The session-less version a request carries in ``params._meta`` (2026-07-28, or one the
    server may refuse with -32022), else None (a handshake-era request)."""
    meta = (req.params or {}).get("_meta")
    version = meta.get(VERSION_META) if isinstance(meta, dict) else None
    return None if version is None or version in HANDSHAKE_PROTOCOL_VERSIONS else str(version)


def _key(request_id: Any) -> str:
    return str(request_id)


class _Bridge:
    """State of one MCP session over MQTT. Touched on the event loop only (see :mod:`.link`)."""

    def __init__(self, link: MqttLink, server_name: str, *, encoding: str = codec.JSON,
                 tolerate_offline: float = 0.0, call_deadline: float | None = None,
                 token: str | Callable[[], str] | None = None, request_timeout: float | None = None,
                 initialize_timeout: float | None = None):
        self.request_timeout = request_timeout
        self.initialize_timeout = initialize_timeout
        self._tried: set[str] = set()  # server-ids that did not answer an initialize in time
        self.link = link
        self.server_name = server_name
        self.encoding = encoding
        self.tolerate_offline = tolerate_offline
        self.call_deadline = call_deadline
        self.token = token  # a signed client credential (JWT), or a callable giving a fresh one
        self.offline_since: float | None = None
        self.duplicates = 0
        self._seen: collections.OrderedDict[tuple[str, str], None] = collections.OrderedDict()
        self.presences = PresenceTable(server_name)
        self.server: ServerPresence | None = None
        self.rpc_topic = self.control_topic = self.capability_topic = ""
        self.pending: dict[str, tuple[Any, str, str | None]] = {}  # key -> (id, method, uri)
        self.subscribed_uris: set[str] = set()
        self.dead: str | None = None
        # 2026-07-28 (session-less): requests carry their version; until the server has answered
        # on our RPC topic (so it serves our topics), they go to its control topic
        self.modern = False
        self.opened = False
        self.read_send: MemoryObjectSendStream[SessionMessage | Exception]
        self.read_recv: MemoryObjectReceiveStream[SessionMessage | Exception]
        self.write_send: MemoryObjectSendStream[SessionMessage]
        self.write_recv: MemoryObjectReceiveStream[SessionMessage]
        # Unbounded: the event loop must never block on delivery (paho buffers anyway).
        self.read_send, self.read_recv = anyio.create_memory_object_stream[SessionMessage | Exception](math.inf)
        self.write_send, self.write_recv = anyio.create_memory_object_stream[SessionMessage](0)
        link.on_message = self.on_message
        link.on_lost = self.fail

    # -- discovery -----------------------------------------------------------------------------

    async def find_server(self, server_id: str | None, timeout: float) -> ServerPresence:
        """Wait up to ``timeout`` seconds for the server's presence; pick one instance.

        Raises:
            ServerNotFound: none online (or not the requested server-id).
        """
        broker_filters = suggested_filters(self.link.connack_properties)
        if broker_filters:
            log.info("broker suggests server-name filters %s (MCP-SERVER-NAME-FILTERS); using them", broker_filters)
        await self.link.subscribe((f, False) for f in presence_subscriptions(broker_filters, self.server_name))
        with anyio.move_on_after(timeout):
            while self.link.lost is None:
                ids = self._online_ids()
                if server_id is not None and server_id in ids:
                    break
                if server_id is None and ids:
                    await anyio.sleep(REPLICA_SETTLE)  # the rest of the retained burst
                    break
                await self.presences.changed.wait()
        if self.link.lost is not None:
            raise TransportError(self.link.lost)
        ids = self._online_ids()
        where = f"at broker {self.link.url}"
        if server_id is not None and server_id not in ids:
            others = f" (online server-ids: {', '.join(ids)})" if ids else ""
            raise _not_found(f"MCP server {self.server_name!r} with server-id {server_id!r} is not online "
                             f"{where}{others}", self.server_name, str(self.link.url))
        if not ids:
            raise _not_found(f"no MCP server named {self.server_name!r} is online {where} "
                             f"(waited {timeout:g} s for its presence)", self.server_name, str(self.link.url))
        if server_id is not None:
            chosen = server_id
        else:  # during a rolling upgrade: a replica of the newest release (catalog digest)
            online = [self.presences.servers[(self.server_name, sid)] for sid in ids]
            newest = newest_digest(online)
            chosen = random.choice([p.server_id for p in online if newest is None or catalog_digest(p) == newest])
        if len(ids) > 1:
            log.info("%d replicas of %s online; using server-id %s", len(ids), self.server_name, chosen)
        return self.presences.servers[(self.server_name, chosen)]

    def _online_ids(self) -> list[str]:
        return sorted(sid for name, sid in self.presences.servers if name == self.server_name)

    async def open(self, server: ServerPresence) -> None:
        """Subscribe to the RPC topic (No Local) and the capability topic; wait for the SUBACK."""
        self.server = server
        cid = self.link.client_id
        self.rpc_topic = topics.rpc(cid, server.server_id, server.server_name)
        self.control_topic = topics.server_control(server.server_id, server.server_name)
        self.capability_topic = topics.server_capability(server.server_id, server.server_name)
        await self.link.subscribe([(self.rpc_topic, True), (self.capability_topic, False)])

    # -- server -> client ----------------------------------------------------------------------

    def on_message(self, message: Incoming) -> None:
        parsed = topics.parse(message.topic)
        if parsed is None:
            log.debug("ignoring message on non-MCP topic %s", message.topic)
            return
        if parsed.kind == "server-presence":
            self.presences.feed(message)
            if self.server is not None and (parsed.server_id, parsed.server_name) == (
                    self.server.server_id, self.server.server_name):
                if message.payload:
                    if self.offline_since is not None:
                        log.info("server %s (%s) is back after %.1f s", self.server.server_name,
                                 self.server.server_id, time.monotonic() - self.offline_since)
                    self.offline_since = None
                elif self.tolerate_offline > 0:
                    # A persistent-session server (link profile "unreliable") keeps our session
                    # while it restarts: wait for it instead of failing at once.
                    if self.offline_since is None:
                        self.offline_since = time.monotonic()
                        self.link.start_soon(self._offline_timer, self.offline_since)
                else:
                    self.fail(f"server {self.server.server_name} ({self.server.server_id}) went offline")
            return
        if self.server is None or parsed.server_id != self.server.server_id \
                or parsed.server_name != self.server.server_name:
            log.debug("ignoring message for another server on %s", message.topic)
            return
        if parsed.kind == "rpc" and parsed.client_id == self.link.client_id:
            self._from_server(message, capability=False)
        elif parsed.kind == "server-capability":
            self._from_server(message, capability=True)
        else:
            log.debug("ignoring message on %s", message.topic)

    async def _offline_timer(self, since: float) -> None:
        await anyio.sleep(self.tolerate_offline)
        if self.offline_since == since and self.server is not None:
            self.fail(f"server {self.server.server_name} ({self.server.server_id}) went offline and did not come "
                      f"back within {self.tolerate_offline:g} s")

    def _duplicate(self, message: Incoming) -> bool:
        """At-least-once delivery can repeat a QoS 1 message; an edge-agent server numbers them
        (user property ``EDGE-AGENT-SEQ``, strictly increasing per server-id), so drop repeats."""
        seq = message.user_properties.get("EDGE-AGENT-SEQ")
        if seq is None:
            return False
        key = (message.user_properties.get("MCP-MQTT-CLIENT-ID", ""), seq)
        if key in self._seen:
            self.duplicates += 1
            log.debug("dropped duplicate message %s from %s", seq, key[0])
            return True
        self._seen[key] = None
        if len(self._seen) > 8192:
            self._seen.popitem(last=False)
        return False

    def _from_server(self, message: Incoming, *, capability: bool) -> None:
        if self.dead is not None:
            return
        if not message.payload:
            log.debug("ignoring empty payload on %s", message.topic)
            return
        if self._duplicate(message):
            return
        try:
            if message.content_type == codec.CBOR:
                msg = types.jsonrpc_message_adapter.validate_python(codec.decode(message.payload, codec.CBOR), by_name=False)
            else:
                msg = types.jsonrpc_message_adapter.validate_json(message.payload, by_name=False)
        except ValueError as exc:
            first = str(exc).splitlines()[0]
            error = ValueError(f"malformed JSON-RPC message on {message.topic}: {first}")
            error.__cause__ = exc
            log.warning("%s", error)
            self._deliver(error)
            return
        if capability:
            if not isinstance(msg, types.JSONRPCNotification):
                log.debug("ignoring a non-notification on %s", message.topic)
                return
            if self.modern:  # 2026-07-28: changes come tagged, on subscriptions/listen streams
                return
            if msg.method == "notifications/resources/updated":
                uri = (msg.params or {}).get("uri")
                if uri not in self.subscribed_uris:
                    log.debug("resource %s updated; not subscribed here", uri)
                    return
            self._deliver(SessionMessage(msg))
            return
        self.opened = True
        if isinstance(msg, (types.JSONRPCResponse, types.JSONRPCError)):
            entry = self.pending.pop(_key(msg.id), None)
            if entry is not None and entry[1] == "resources/subscribe" and isinstance(msg, types.JSONRPCError):
                self.subscribed_uris.discard(entry[2] or "")
        elif isinstance(msg, types.JSONRPCNotification) and msg.method == "notifications/disconnected":
            assert self.server is not None  # checked in on_message
            label = f"server {self.server.server_name} ({self.server.server_id})"
            if self.modern:
                # session-less: the server forgot us (idle, or its session bound); what was in
                # flight is lost, the next request opens again on the control topic
                self.opened = False
                for request_id, _, _ in self.pending.values():
                    self._answer_with_error(request_id, f"{label} dropped this client's requests")
                self.pending.clear()
                log.info("%s forgot this session-less client; the next request goes to its control topic", label)
                return
            self.fail(f"{label} disconnected this client")
            return
        self._deliver(SessionMessage(msg))

    def _deliver(self, item: SessionMessage | Exception) -> None:
        try:
            self.read_send.send_nowait(item)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            log.debug("dropped %r: the session is gone", item)

    def _answer_with_error(self, request_id: Any, reason: str) -> None:
        error = types.ErrorData(code=types.CONNECTION_CLOSED, message=reason)
        self._deliver(SessionMessage(types.JSONRPCError(jsonrpc="2.0", id=request_id, error=error)))

    def fail(self, reason: str) -> None:
        """The server (or the broker link) is gone: fail pending requests, tell the session."""
        if self.dead is not None:
            return
        self.dead = reason
        log.warning("%s", reason)
        self.presences.changed.set()  # wake a discovery in progress
        for request_id, _, _ in self.pending.values():
            self._answer_with_error(request_id, reason)
        self.pending.clear()
        self._deliver(TransportError(reason))
        if self.server is not None:  # spec "Server Disconnect": forget its topics
            self.link.unsubscribe([self.rpc_topic, self.capability_topic])

    # -- client -> server ----------------------------------------------------------------------

    async def run_writer(self) -> None:
        """Publish what the session writes, until the write stream closes."""
        try:
            async with self.write_recv:
                async for session_message in self.write_recv:
                    self._publish(session_message.message)
        except anyio.ClosedResourceError:  # close() closed the stream under us
            pass

    def _publish(self, msg: types.JSONRPCMessage) -> None:
        req = msg if isinstance(msg, types.JSONRPCRequest) else None
        if self.dead is not None:
            if req is not None:
                self._answer_with_error(req.id, self.dead)
            else:
                log.debug("dropped %s: %s", type(msg).__name__, self.dead)
            return
        topic = self.rpc_topic
        if req is not None and req.method == "server/discover" and not self._serves_modern():
            assert self.server is not None
            self._deliver(SessionMessage(types.JSONRPCError(jsonrpc="2.0", id=req.id, error=types.ErrorData(
                code=types.METHOD_NOT_FOUND, message=f"server {self.server.server_name} does not announce MCP "
                f"2026-07-28 over MQTT (presence meta {PROTOCOL_VERSIONS}): use initialize"))))
            return
        if req is not None:
            params = req.params or {}
            uri = params.get("uri") if req.method in ("resources/subscribe", "resources/unsubscribe") else None
            if req.method == "resources/subscribe" and uri:
                self.subscribed_uris.add(uri)
            elif req.method == "resources/unsubscribe" and uri:
                self.subscribed_uris.discard(uri)
            self.pending[_key(req.id)] = (req.id, req.method, uri)
            if req.method == "initialize":
                topic = self.control_topic
                self.modern = False
            elif _modern_version(req) is not None:
                self.modern = True
                if not self.opened:
                    topic = self.control_topic
        elif isinstance(msg, types.JSONRPCNotification) and msg.method == "notifications/cancelled":
            self.pending.pop(_key((msg.params or {}).get("requestId")), None)
        # every request carries its absolute deadline (Unix s): now + call_deadline for tools/call,
        # else now + the request timeout; the device refuses a late non-read-only tools/call
        deadline = None
        if req is not None:
            deadline = self.call_deadline if req.method == "tools/call" and self.call_deadline is not None \
                else self.request_timeout
        token = self.token if req is not None and (req.method == "initialize" or self.modern) else None
        if self.encoding == codec.CBOR or deadline is not None or token:
            data = msg.model_dump(by_alias=True, exclude_unset=True, mode="json")
            if deadline is not None:
                meta = data.setdefault("params", {}).setdefault("_meta", {})
                meta.setdefault(DEADLINE_META, round(time.time() + deadline, 3))
            if token:  # docs/security.md "Signed client tokens"
                meta = data.setdefault("params", {}).setdefault("_meta", {})
                meta.setdefault(TOKEN_META, token() if callable(token) else token)
            payload = codec.encode(data, self.encoding)
        else:
            payload = msg.model_dump_json(by_alias=True, exclude_unset=True).encode()
        content_type = self.encoding if self.encoding == codec.CBOR else None
        try:
            self.link.publish(topic, payload, content_type=content_type)
        except TransportError as exc:
            self.fail(str(exc))
            return
        if req is not None and req.method == "initialize" and self.initialize_timeout:
            self.link.start_soon(self._initialize_watch, _key(req.id), payload, content_type)

    async def _initialize_watch(self, key: str, payload: bytes, content_type: str | None) -> None:
        """A stale retained presence (the server died with its broker, so no will cleared it; or
        it failed over to another broker) must not cost a full request timeout: when the
        ``initialize`` is not answered within ``initialize_timeout`` s, send it to another
        replica of the server-name that is online, or, if there is none, send it again (a
        server that comes back re-publishes its presence and answers it), every
        ``initialize_timeout`` s, until it is answered or the request times out."""
        assert self.initialize_timeout
        while True:
            await anyio.sleep(self.initialize_timeout)
            if key not in self.pending or self.dead is not None or self.server is None:
                return
            current = self.server.server_id
            self._tried.add(current)
            others = [sid for sid in self._online_ids() if sid not in self._tried]
            if others:
                chosen = random.choice(others)
                log.warning("server %s (%s) did not answer initialize within %g s (a stale presence?); "
                            "trying replica %s", self.server_name, current, self.initialize_timeout, chosen)
                self.link.unsubscribe([self.rpc_topic, self.capability_topic])
                await self.open(self.presences.servers[(self.server_name, chosen)])
            else:
                log.info("server %s (%s) did not answer initialize within %g s; sending it again",
                         self.server_name, current, self.initialize_timeout)
                self._tried.discard(current)
            try:
                self.link.publish(self.control_topic, payload, content_type=content_type)
            except TransportError as exc:
                self.fail(str(exc))
                return

    def _serves_modern(self) -> bool:
        """True if the server's presence announces a 2026-07-28 version (:data:`PROTOCOL_VERSIONS`)."""
        versions = self.server.meta.get(PROTOCOL_VERSIONS) if self.server is not None else None
        return isinstance(versions, list) and any(v in MODERN_PROTOCOL_VERSIONS for v in versions)

    async def close(self) -> None:
        """Close the streams; say goodbye on the client presence topic if the link is up."""
        for stream in (self.write_send, self.write_recv, self.read_send, self.read_recv):
            stream.close()
        if self.link.lost is None:
            acked = await self.link.publish_and_wait(topics.client_presence(self.link.client_id), DISCONNECTED,
                                                     timeout=GOODBYE_TIMEOUT)
            if not acked:
                log.debug("goodbye on %s not acknowledged", topics.client_presence(self.link.client_id))


def _not_found(message: str, server_name: str, broker: str) -> ServerNotFound:
    exc = ServerNotFound(message)
    exc.server_name = server_name  # type: ignore[attr-defined]
    exc.broker = broker  # type: ignore[attr-defined]
    return exc


@asynccontextmanager
async def mqtt_client(broker_url: str, server_name: str, *, server_id: str | None = None,
                      client_id: str | None = None, qos: int = 1, discovery_timeout: float = 3.0,
                      connect_timeout: float = 10.0, username: str | None = None, password: str | None = None,
                      meta: dict[str, Any] | None = None, encoding: str = codec.JSON,
                      tolerate_offline: float = 0.0, call_deadline: float | None = None,
                      token: str | Callable[[], str] | None = None, request_timeout: float | None = None,
                      tls: Any = None, initialize_timeout: float | None = 5.0,
                      ) -> AsyncIterator[tuple[MemoryObjectReceiveStream[SessionMessage | Exception],
                                               MemoryObjectSendStream[SessionMessage]]]:
    """Connect to the MCP server ``server_name`` through the broker; yield ``(read_stream, write_stream)``.

    The streams carry ``mcp.shared.message.SessionMessage`` items, as ``mcp.ClientSession``
    expects; the read stream may also carry ``Exception`` items (a malformed payload: a
    ``ValueError`` naming the topic; the server gone: a ``TransportError``). See the module
    docstring for the wire behaviour.

    Args:
        broker_url: ``mqtt://[user[:password]@]host[:port]`` or ``mqtts://``.
        server_name: the server-name, e.g. ``devices/greenhouse/pi-01`` (no wildcards).
        server_id: talk to this instance; default: a random one of the online replicas.
        client_id: the mcp-client-id; default: a new random one (the spec wants a new one per
            initialization).
        qos: QoS of every PUBLISH and SUBSCRIBE (0 or 1; default 1).
        discovery_timeout: seconds to wait for the server's presence.
        connect_timeout: seconds to wait for the TCP connect, CONNACK and each SUBACK.
        username, password: broker credentials (override those in the URL).
        meta: extra fields for the ``MCP-META`` CONNECT user property.
        encoding: ``application/json`` (default) or ``application/cbor``: the payload encoding
            of this session (sent as the MQTT 5 Content Type; an edge-agent server answers in kind).
        tolerate_offline: seconds to keep the session while the server's presence is empty
            (a server with the ``unreliable`` link profile keeps sessions across restarts);
            0 (default) fails pending and later requests at once, as the spec says.
        call_deadline: seconds; when set, every ``tools/call`` carries
            ``_meta["dev.edge-agent/deadline"]`` = now + this (Unix s), and an edge-agent server
            refuses a tool call that is not read-only and reaches it later (plus its clock-skew
            allowance: keep clocks NTP-synchronised).
        request_timeout: seconds; every other request (and ``tools/call`` without
            ``call_deadline``) carries the deadline now + this (``connect()`` passes its
            ``read_timeout_seconds``). None: no deadline.
        initialize_timeout: seconds; an ``initialize`` not answered within it goes to another
            online replica, or again to the same server (its presence may be stale: it died
            with its broker, or failed over), every this many seconds, instead of waiting the
            whole request timeout. None: sent once.
        tls: ``edge_agent.mqtt.server.TlsSettings`` for an ``mqtts://`` broker: CA file, and client
            certificate and key for mutual TLS (default: the system CAs, no client certificate).
        token: a signed client credential (JWT, bound to ``client_id``), or a callable that
            gives a fresh one; sent in ``initialize`` (and, under MCP 2026-07-28, every request)
            as ``params._meta["dev.edge-agent/token"]`` (docs/security.md).

    Raises:
        ServerNotFound: no such server online within ``discovery_timeout`` (the message names
            the server-name and the broker).
        TransportError: the broker cannot be reached, refused the connection or a subscription.
        ValueError: a malformed broker URL, server-name, server-id or client id.
    """
    topics.check_server_name(server_name)
    if server_id is not None:
        topics.check_id(server_id, "server-id")
    if qos not in (0, 1, 2):
        raise ValueError(f"qos must be 0, 1 or 2, not {qos!r}")
    cid = client_id or new_client_id()
    will = Will(topics.client_presence(cid), DISCONNECTED)
    async with MqttLink(broker_url, client_id=cid, will=will, qos=qos, username=username, password=password,
                        meta=meta, connect_timeout=connect_timeout, tls=tls) as link:
        if encoding not in codec.ENCODINGS:
            raise ValueError(f"encoding must be one of {codec.ENCODINGS}, not {encoding!r}")
        bridge = _Bridge(link, server_name, encoding=encoding, tolerate_offline=tolerate_offline,
                         call_deadline=call_deadline, token=token, request_timeout=request_timeout,
                         initialize_timeout=initialize_timeout)
        try:
            server = await bridge.find_server(server_id, discovery_timeout)
            await bridge.open(server)
            log.debug("MCP session %s -> %s (%s) via %s", cid, server.server_name, server.server_id, link.url)
            link.start_soon(bridge.run_writer)
            yield bridge.read_recv, bridge.write_send
        finally:
            with anyio.CancelScope(shield=True):
                await bridge.close()

