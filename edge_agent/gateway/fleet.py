"""The gateway's view of the fleet: presence, replicas, and one MCP session per server instance.

A :class:`Fleet` owns one MQTT connection (:class:`~edge_agent.client.link.MqttLink`, a fresh
mcp-client-id per connection, will ``notifications/disconnected`` on its client presence
topic), subscribes to ``$mcp-server/presence/+/{filter}``, and keeps a :class:`Replica` per
online server instance. A replica's MCP session (the official ``mcp.ClientSession`` over a
:class:`~edge_agent.gateway.channel.DeviceChannel`) is opened on first use, or at once
with ``eager=True``, and shared by every gateway client that the balancer put on that
replica. Everything runs on one event loop, paho included (see :mod:`.link`).

Events go to a :class:`FleetListener` (the gateway server): a server-name appeared or
vanished, a device's list changed, a subscribed resource was updated, a replica's session was
lost. If the broker connection drops, every replica is lost and the fleet reconnects under a
new mcp-client-id with the backoff every link of ours uses
(:class:`~edge_agent.mqtt.reconnect.ReconnectPolicy`: tenacity's full jitter, 1 s growing to a
30 s cap, across failed attempts and short-lived connections).

Timeouts (spec "Timeouts": initialize 30 s, ping 10 s, tools/call 60 s, others 30 s) are
:class:`Timeouts`; an expired one is an ``MCPError`` (``REQUEST_TIMEOUT``) naming the device.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, cast

import anyio
import anyio.abc
import mcp_types as types
import paho.mqtt.client as mqtt
from mcp import ClientSession, MCPError
from pydantic import TypeAdapter, ValidationError

from edge_agent import __version__
from edge_agent.client.discovery import (
    MARKER_QUIET,
    PRESENCE_QOS,
    RetainedReport,
    ServerPresence,
    gap_message,
    marker_topic,
    new_client_id,
    parse_presence,
    presence_subscriptions,
)
from edge_agent.client.link import Incoming, MqttLink, Will, suggested_filters
from edge_agent.core import topics
from edge_agent.errors import TransportError
from edge_agent.gateway.balance import INITIALIZE_FAILOVER, Balancer
from edge_agent.gateway.catalog import KINDS, CatalogStore, announced_digest
from edge_agent.gateway.channel import DeviceChannel
from edge_agent.mqtt.reconnect import ReconnectPolicy

log = logging.getLogger(__name__)

CLIENT_INFO = types.Implementation(name="edge-agent-gateway", version=__version__)
GOODBYE = b'{"jsonrpc":"2.0","method":"notifications/disconnected"}'
SETTLE_QUIET = 0.25
"""Seconds without a new presence message after which the retained burst counts as read."""
SETTLE_MAX = 5.0
"""At most this many seconds are spent waiting for the retained presence burst (no marker)."""
MARKER_MAX = 120.0
"""At most this many seconds are spent waiting for the end-of-retained marker while presences
keep arriving."""

RECONNECT_MIN, RECONNECT_MAX = 1.0, 30.0
"""Seconds: the bounds of the reconnect backoff (full jitter)."""
FAILED_BACKOFF = 30.0
"""Seconds a replica whose initialize failed, or that dropped its session, is passed over while
other replicas are available."""

_RAW: TypeAdapter[dict[str, Any]] = TypeAdapter(dict[str, Any])

LIST_METHODS = {
    "tools": ("tools/list", "tools"),
    "resources": ("resources/list", "resources"),
    "templates": ("resources/templates/list", "resourceTemplates"),
    "prompts": ("prompts/list", "prompts"),
}
"""kind -> (method, result key). ``templates`` belong to the ``resources`` capability."""


@dataclass
class Timeouts:
    """Seconds a request to a device may take (spec "Timeouts" recommendations)."""

    initialize: float = 30.0
    ping: float = 10.0
    call: float = 60.0
    request: float = 30.0
    # an initialize waits only this long while another online replica of the same server-name
    # could serve instead (a stale retained presence: the broker crashed, so no will came)
    initialize_failover: float = INITIALIZE_FAILOVER

    def for_method(self, method: str) -> float:
        if method == "tools/call":
            return self.call
        if method == "ping":
            return self.ping
        if method == "initialize":
            return self.initialize
        return self.request


class DeviceGone(MCPError):
    """The replica a request went to went offline (or dropped the gateway) before answering."""


class DeviceUnavailable(DeviceGone):
    """No session could be opened with the replica (offline, or initialize failed or timed
    out): the request was never sent, so trying another replica is safe."""


class FleetListener(Protocol):
    def names_changed(self, appeared: set[str], vanished: set[str]) -> None: ...
    def list_changed(self, server_name: str, kind: str) -> None: ...
    def resource_updated(self, replica: "Replica", uri: str) -> None: ...
    def replica_lost(self, replica: "Replica") -> None: ...


class Replica:
    """One online server instance and (once opened) the gateway's MCP session with it."""

    def __init__(self, presence: ServerPresence):
        self.presence = presence
        self.server_name = presence.server_name
        self.server_id = presence.server_id
        self.label = f"{self.server_name} ({self.server_id})"
        self.online = True
        self.outstanding = 0
        self.calls = 0
        self.session: ClientSession | None = None
        self.channel: DeviceChannel | None = None
        self.capabilities: types.ServerCapabilities | None = None
        self.error: str | None = None
        self.failed_at: float | None = None  # anyio time of the last failed initialize
        self.subscribers: dict[str, set[Any]] = {}  # device URI -> gateway clients subscribed through us
        self._opening: anyio.Event | None = None
        self._stop: anyio.Event | None = None
        self._lost: ClientSession | None = None  # the last session reported lost

    @property
    def key(self) -> tuple[str, str]:
        return self.server_name, self.server_id

    @property
    def usable(self) -> bool:
        return self.online

    def __repr__(self) -> str:
        return f"<Replica {self.label} {'open' if self.session else 'idle'}>"


class Fleet:
    """See the module docstring. Use as ``async with Fleet(url, listener=...) as fleet:``."""

    def __init__(self, broker_url: str, *, server_name_filter: str = "#", eager: bool = False,
                 strategy: str = "least-outstanding", timeouts: Timeouts | None = None,
                 listener: FleetListener | None = None, ping_interval: float = 30.0,
                 init_concurrency: int = 64, qos: int = 1, connect_timeout: float = 10.0,
                 username: str | None = None, password: str | None = None,
                 catalogs: CatalogStore | None = None, tls: Any = None):
        self.broker_url = broker_url
        self.tls = tls  # TlsSettings for an mqtts:// broker (CA, client certificate and key)
        self.server_name_filter = server_name_filter
        self.eager = eager
        self.balancer = Balancer(strategy)
        self.timeouts = timeouts or Timeouts()
        self.listener = listener
        self.ping_interval = ping_interval
        self.qos = qos
        self.connect_timeout = connect_timeout
        self._username, self._password = username, password
        self.replicas: dict[tuple[str, str], Replica] = {}
        self._by_name: dict[str, dict[str, Replica]] = {}  # server-name -> server-id -> replica
        self.link: MqttLink | None = None
        self.ready = anyio.Event()
        self._init_limit = anyio.Semaphore(init_concurrency)
        self._lists: dict[str, dict[str, list[dict[str, Any]]]] = {}
        # catalogs by the digest devices announce (gateway/catalog.py); the per-server-name
        # _lists serve devices that announce none
        self.catalogs = catalogs if catalogs is not None else CatalogStore(None)
        self.generation = 0  # bumped whenever an aggregated list may have changed
        # server-name -> the digest it announced when it said list_changed: until it announces
        # another, its lists are fetched from it (the presence with the new digest may lag)
        self._stale_digest: dict[str, str] = {}
        # server-name -> digest_of() (a listing asks once per name and page): dropped whenever
        # its replicas, their presence or _stale_digest change
        self._digest_memo: dict[str, str | None] = {}
        self._list_locks: dict[tuple[str, str], anyio.Lock] = {}
        self._last_presence = 0.0
        self.retained = RetainedReport()  # the last connection's retained presence burst
        self._marker: tuple[str, bytes] | None = None
        self._marker_back = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None
        self._closing = False

    # -- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> "Fleet":
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        try:
            await self._tg.start(self._connection_loop)
        except BaseException:
            self._tg.cancel_scope.cancel()
            await self._tg.__aexit__(None, None, None)
            raise
        if self.ping_interval > 0:
            self._tg.start_soon(self._ping_loop)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self._tg is not None
        self._closing = True
        link = self.link
        if link is not None and link.lost is None:  # spec "Client Disconnect": leave every server at once
            with anyio.CancelScope(shield=True):
                try:
                    await link.publish_and_wait(topics.client_presence(link.client_id), GOODBYE, timeout=2.0)
                except TransportError:
                    pass
        for replica in list(self.replicas.values()):
            replica.online = False  # no per-server goodbye: the one above covered them all
            self._stop_session(replica)
        self._tg.cancel_scope.cancel()
        await self._tg.__aexit__(None, None, None)

    async def _connection_loop(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Hold the MQTT connection; reconnect with backoff when it drops."""
        policy = ReconnectPolicy(RECONNECT_MIN, RECONNECT_MAX)
        first = True
        while True:
            cid = new_client_id()
            lost = anyio.Event()
            try:
                async with MqttLink(self.broker_url, client_id=cid, will=Will(topics.client_presence(cid), GOODBYE),
                                    qos=self.qos, username=self._username, password=self._password,
                                    connect_timeout=self.connect_timeout, tls=self.tls) as link:
                    link.on_message = self._on_message
                    link.on_lost = lambda reason: lost.set()
                    self.link = link
                    broker_filters = suggested_filters(link.connack_properties)
                    self.retained = RetainedReport()
                    self._marker, self._marker_back = None, anyio.Event()
                    try:  # the end-of-retained marker (client.discovery.discover): no ACL may allow it
                        await link.subscribe([(marker_topic(cid), False)], qos=PRESENCE_QOS)
                        self._marker = (marker_topic(cid), new_client_id().encode())
                    except TransportError as exc:
                        if link.lost is not None:
                            raise
                        log.info("no end-of-retained marker (%s): waiting for quiet", exc)
                    # QoS 0: a broker's queue limits (Mosquitto's max_queued_messages) cannot drop it
                    sent = await link.subscribe(((f, False) for f in presence_subscriptions(
                        broker_filters, self.server_name_filter)), qos=PRESENCE_QOS, marker=self._marker)
                    log.info("gateway connected to %s as %s; watching $mcp-server/presence/+/%s",
                             link.url, cid, self.server_name_filter)
                    policy.connected(anyio.current_time())
                    if first:
                        task_status.started()
                        first = False
                    await self._settle(link, sent.mid if sent is not None else -1)
                    self.ready.set()
                    await lost.wait()  # the broker sends our will: every device drops our sessions
                    delay = policy.lost(anyio.current_time(), reason_code=None, from_broker=False).delay
                    log.warning("%s; reconnecting%s", link.lost, f" in {delay:.1f} s" if delay else "")
            except TransportError as exc:
                if first:
                    raise
                policy.attempt_failed()
                delay = policy.delay()
                log.warning("%s; retrying in %.1f s", exc, delay)
            finally:
                self._link_gone("the gateway lost its broker connection")
            await anyio.sleep(delay)

    async def _settle(self, link: MqttLink, mid: int) -> None:
        """Wait for the retained presence burst: until the end-of-retained marker comes back
        (:func:`edge_agent.client.discovery.discover`), or, with no marker, until SETTLE_QUIET s
        pass without a new presence. A marker that does not come back once presences stopped
        for MARKER_QUIET s means the broker dropped some: logged as a warning naming the broker
        setting to raise, and kept in ``self.retained.gap``."""
        start = anyio.current_time()
        self._last_presence = start
        if self._marker is not None:
            while not self._marker_back.is_set():
                now = anyio.current_time()
                quiet = now - self._last_presence
                if mid in link.refused_publishes and quiet >= SETTLE_QUIET:
                    log.info("the broker refused the end-of-retained marker (%s): no gap check",
                             link.refused_publishes.pop(mid))
                    return
                if quiet >= MARKER_QUIET or now - start >= MARKER_MAX:
                    self.retained.gap = gap_message(self.retained.presences, streaming=quiet < MARKER_QUIET,
                                                    waited=round(now - start, 1))
                    log.warning("gateway: %s", self.retained.gap)
                    return
                with anyio.move_on_after(min(MARKER_QUIET - quiet, MARKER_MAX - (now - start), SETTLE_QUIET) + 0.01):
                    await self._marker_back.wait()
            self.retained.complete = True
            log.info("retained presences in: %d in %.2f s", self.retained.presences, anyio.current_time() - start)
            return
        while True:
            now = anyio.current_time()
            quiet_until = self._last_presence + SETTLE_QUIET
            if now >= quiet_until or now - start >= SETTLE_MAX:
                return
            await anyio.sleep(quiet_until - now)

    def _link_gone(self, reason: str) -> None:
        self.link = None
        if self._closing:
            return
        vanished = {r.server_name for r in self.replicas.values()}
        for replica in list(self.replicas.values()):
            self._remove(replica, reason, announce=False)
        if vanished and self.listener:
            self.listener.names_changed(set(), vanished)

    # -- presence and routing -------------------------------------------------------------------

    def _on_message(self, message: Incoming) -> None:
        marker = self._marker
        if marker is not None and message.topic == marker[0]:
            if message.payload == marker[1]:
                self._marker_back.set()
            return
        parsed = topics.parse(message.topic)
        if parsed is None:
            return
        if parsed.kind == "server-presence":
            self.retained.presences += 1
            self._presence(message)
            return
        key = (parsed.server_name or "", parsed.server_id or "")
        replica = self.replicas.get(key)
        channel = replica.channel if replica is not None else None
        if channel is None:
            return
        if parsed.kind == "rpc" and self.link is not None and parsed.client_id == self.link.client_id:
            channel.feed("rpc", message)
        elif parsed.kind == "server-capability":
            channel.feed("capability", message)

    def _presence(self, message: Incoming) -> None:
        self._last_presence = anyio.current_time()
        parsed = topics.parse(message.topic)
        assert parsed is not None
        key = (parsed.server_name or "", parsed.server_id or "")
        if not mqtt.topic_matches_sub(self.server_name_filter, key[0]):
            return  # the broker's suggested filters may be wider than ours
        try:
            presence = parse_presence(message.topic, message.payload)
        except ValueError as exc:
            log.warning("skipping malformed presence: %s", exc)
            return
        if presence is None:
            if key in self.replicas:
                self._remove(self.replicas[key], f"server {key[0]} ({key[1]}) went offline")
            return
        existing = self.replicas.get(key)
        if existing is not None:
            old = announced_digest(existing.presence.meta)
            existing.presence = presence  # re-announced (a reconnect); the session, if any, stays
            self._digest_memo.pop(key[0], None)
            new = announced_digest(presence.meta)
            if new != old:  # its catalog changed: list_changed for the kinds that differ
                self._stale_digest.pop(key[0], None)
                self._digest_memo.pop(key[0], None)
                self._lists.pop(key[0], None)
                self.generation += 1
                before = self.catalogs.get(old) if old else None
                after = self.catalogs.get(new) if new else None
                for kind in CatalogStore.changed_kinds(before, after):
                    if self.listener:
                        self.listener.list_changed(key[0], kind)
            return
        is_new_name = key[0] not in self._by_name
        newest = None if is_new_name else self.digest_of(key[0])
        if is_new_name:
            self.generation += 1
        replica = Replica(presence)
        self.replicas[key] = replica
        self._by_name.setdefault(key[0], {})[key[1]] = replica
        self._digest_memo.pop(key[0], None)
        if not is_new_name and self.digest_of(key[0]) != newest:  # a newer release: listed from now on
            self.generation += 1
            self._lists.pop(key[0], None)
        log.info("online: %s", replica.label)
        if is_new_name and self.listener:
            self.listener.names_changed({key[0]}, set())
        if self.eager and self._tg is not None:
            self._tg.start_soon(self._open_quietly, replica)

    def _remove(self, replica: Replica, reason: str, *, announce: bool = True) -> None:
        """The instance went offline: fail its session, forget it, tell the listener."""
        if self.replicas.get(replica.key) is not replica:
            return
        newest = self.digest_of(replica.server_name)
        del self.replicas[replica.key]
        same_name = self._by_name.get(replica.server_name, {})
        same_name.pop(replica.server_id, None)
        self._digest_memo.pop(replica.server_name, None)
        if not same_name:
            self._by_name.pop(replica.server_name, None)
        replica.online = False
        log.info("offline: %s (%s)", replica.label, reason)
        if replica.channel is not None:
            replica.channel.fail(reason if replica.server_name in reason else f"{replica.label}: {reason}")
        self._stop_session(replica)
        if self.listener:
            self.listener.replica_lost(replica)
        if replica.server_name in self._by_name and self.digest_of(replica.server_name) != newest:
            self.generation += 1  # the last replica of the newest release left: the older one is listed
            self._lists.pop(replica.server_name, None)
        if replica.server_name not in self._by_name:
            self.generation += 1
            self._lists.pop(replica.server_name, None)
            self._stale_digest.pop(replica.server_name, None)
            if announce and self.listener:
                self.listener.names_changed(set(), {replica.server_name})

    # -- queries --------------------------------------------------------------------------------

    def server_names(self) -> list[str]:
        """The server-names with at least one instance online, sorted."""
        return sorted(self._by_name)

    def _initialize_timeout(self, replica: Replica) -> float:
        """``timeouts.initialize``, or the shorter ``timeouts.initialize_failover`` while another
        usable replica of the same server-name is there to take the request (it was never sent
        to this one: docs/gateway.md, "A replica that cannot be initialized")."""
        others = any(r is not replica and r.usable for r in self.replicas_of(replica.server_name))
        return min(self.timeouts.initialize, self.timeouts.initialize_failover) if others else self.timeouts.initialize

    def replicas_of(self, server_name: str) -> list[Replica]:
        same_name = self._by_name.get(server_name)
        return [same_name[sid] for sid in sorted(same_name)] if same_name else []

    def replica(self, server_name: str, server_id: str) -> Replica | None:
        return self.replicas.get((server_name, server_id))

    def choose(self, server_name: str, exclude: set[str] | frozenset[str] = frozenset()) -> Replica:
        """A replica of ``server_name`` (not one of the server-ids in ``exclude``) by the balancing
        strategy, passing over replicas whose initialize failed in the last ``FAILED_BACKOFF`` s
        while others are available.

        Raises:
            MCPError: ``INVALID_PARAMS``, no (other) instance of ``server_name`` is online.
        """
        candidates = [r for r in self.replicas_of(server_name) if r.server_id not in exclude]
        if not candidates:
            raise MCPError(code=types.INVALID_PARAMS, message=f"no MCP server named {server_name!r} is online")
        now = anyio.current_time()
        healthy = [r for r in candidates if r.failed_at is None or now - r.failed_at > FAILED_BACKOFF]
        return self.balancer.choose(server_name, healthy or candidates)

    # -- sessions -------------------------------------------------------------------------------

    async def open(self, replica: Replica) -> ClientSession:
        """The replica's MCP session, initializing it first if needed (shared by concurrent callers).

        Raises:
            DeviceUnavailable: the replica is offline, or initialize failed or timed out (the
                message names the device).
        """
        while True:
            if replica.session is not None:
                return replica.session
            if not replica.online:
                raise DeviceUnavailable(code=types.CONNECTION_CLOSED, message=f"server {replica.label} went offline")
            if self._tg is None:
                raise DeviceUnavailable(code=types.CONNECTION_CLOSED, message="the gateway is shutting down")
            if replica._opening is None:
                replica._opening = anyio.Event()
                replica.error = None
                self._tg.start_soon(self._run_session, replica, replica._opening)
            opening = replica._opening
            await opening.wait()
            if replica.session is None:
                raise DeviceUnavailable(code=types.CONNECTION_CLOSED,
                                        message=replica.error or f"cannot initialize a session with {replica.label}")

    async def _open_quietly(self, replica: Replica) -> None:
        try:
            await self.open(replica)
        except MCPError as exc:
            log.warning("%s", exc)

    async def _run_session(self, replica: Replica, opening: anyio.Event) -> None:
        """Own one replica session: open the channel, initialize, hold it until stopped or lost.

        Only the fields still holding *this* run's objects are cleared at the end: after a
        :meth:`reset` a newer run may already own the replica.
        """
        link = self.link
        stop = replica._stop = anyio.Event()
        channel: DeviceChannel | None = None
        session: ClientSession | None = None
        error: str | None = None
        try:
            if link is None:
                raise TransportError("the gateway is not connected to the broker")
            channel = replica.channel = DeviceChannel(link, replica.presence)
            async with ClientSession(channel.read_stream, channel.write_stream,
                                     read_timeout_seconds=self.timeouts.request,
                                     message_handler=partial(self._from_device, replica),
                                     client_info=CLIENT_INFO) as client_session:
                async with self._init_limit:  # bounds concurrent initializations (a fleet's first list)
                    await channel.open()
                    limit = self._initialize_timeout(replica)
                    try:
                        with anyio.fail_after(limit):
                            result = await client_session.initialize()
                    except TimeoutError:
                        raise TransportError(f"{replica.label}: initialize timed out after {limit:g} s") from None
                replica.capabilities = result.capabilities
                replica.failed_at = None
                session = replica.session = client_session
                log.debug("session open: %s (%s %s)", replica.label, result.server_info.name,
                          result.server_info.version)
                opening.set()
                await stop.wait()
        except MCPError as exc:
            error = exc.error.message if replica.label in exc.error.message else \
                f"{replica.label}: initialize failed: {exc.error.message}"
        except (TransportError, OSError) as exc:
            error = str(exc) if replica.label in str(exc) else f"{replica.label}: {exc}"
        except Exception as exc:  # a bug or a malformed answer: the session is unusable
            log.exception("session with %s failed", replica.label)
            error = f"{replica.label}: {type(exc).__name__}: {exc}"
        finally:
            if replica._opening is opening:
                replica.error = error
                replica._opening = None
            if session is None and error is not None:
                replica.failed_at = anyio.current_time()
            if replica.session is session:
                replica.session = None
            if replica.channel is channel:
                replica.channel = None
            opening.set()
            if channel is not None:  # a newer run re-subscribed the same topics: leave them
                channel.close(goodbye=replica.online, unsubscribe=replica.channel is None)
            if error:
                log.warning("%s", error)
            if session is not None and replica.online and not self._closing and replica._lost is not session:
                self._session_lost(replica, session)

    def _stop_session(self, replica: Replica) -> None:
        if replica._stop is not None:
            replica._stop.set()

    def reset(self, replica: Replica) -> None:
        """Drop the replica's session (the device forgot it, or a ping failed); the next use re-opens."""
        session = replica.session
        if session is None:
            return
        if replica.channel is not None:
            replica.channel.fail(f"server {replica.label} lost the session")
        self._stop_session(replica)
        replica.session = replica.channel = None
        replica._opening = None
        self._session_lost(replica, session)

    def _session_lost(self, replica: Replica, session: ClientSession) -> None:
        """An established session ended while the replica stays online (it dropped the gateway,
        forgot the session, or stopped answering pings): prefer other replicas for a while,
        forget its lists, and let the listener move clients and subscriptions. Once per session."""
        replica._lost = session
        replica.failed_at = anyio.current_time()
        self._lists.pop(replica.server_name, None)
        self.generation += 1
        if self.listener:
            self.listener.replica_lost(replica)

    async def _from_device(self, replica: Replica, message: Any) -> None:
        """Notifications from a device session (run by the session's dispatcher)."""
        if isinstance(message, Exception):
            if isinstance(message, TransportError):
                self._stop_session(replica)
            else:
                log.warning("from %s: %s", replica.label, message)
            return
        if isinstance(message, types.ToolListChangedNotification):
            self._changed(replica.server_name, "tools")
        elif isinstance(message, types.ResourceListChangedNotification):
            self._changed(replica.server_name, "resources")
        elif isinstance(message, types.PromptListChangedNotification):
            self._changed(replica.server_name, "prompts")
        elif isinstance(message, types.ResourceUpdatedNotification):
            if self.listener:
                self.listener.resource_updated(replica, str(message.params.uri))

    def _changed(self, server_name: str, kind: str) -> None:
        self.generation += 1
        digest = self.digest_of(server_name)
        if digest is not None:
            self._stale_digest[server_name] = digest
            self._digest_memo.pop(server_name, None)
        cache = self._lists.get(server_name, {})
        cache.pop(kind, None)
        if kind == "resources":
            cache.pop("templates", None)
        if self.listener:
            self.listener.list_changed(server_name, kind)

    # -- requests -------------------------------------------------------------------------------

    async def request(self, replica: Replica, method: str, params: dict[str, Any] | None, *,
                      progress: Callable[..., Any] | None = None) -> dict[str, Any]:
        """Send ``method`` to the replica (opening its session if needed); the raw result dict.

        Raises:
            DeviceGone: the replica went offline before answering (``CONNECTION_CLOSED``).
            MCPError: the device answered with an error (message prefixed with the device), or
                the request timed out (``REQUEST_TIMEOUT``, naming device, method and seconds).
        """
        session = await self.open(replica)
        timeout = self.timeouts.for_method(method)
        request = types.Request[dict[str, Any] | None, str](method=method, params=params)
        replica.outstanding += 1
        replica.calls += 1
        try:
            # a TypeAdapter of a plain dict: fine at run time, outside the SDK's BaseModel bound
            result: dict[str, Any] = await session.send_request(request, cast(Any, _RAW),
                                                                request_read_timeout_seconds=timeout,
                                                                progress_callback=progress)
            return result
        except MCPError as exc:
            raise self._name_error(replica, method, exc, timeout) from None
        except ValidationError as exc:
            raise MCPError(code=types.INTERNAL_ERROR,
                           message=f"{replica.label}: malformed {method} result: {str(exc).splitlines()[0]}") from None
        finally:
            replica.outstanding -= 1

    @staticmethod
    def _name_error(replica: Replica, method: str, exc: MCPError, timeout: float) -> MCPError:
        code, message, data = exc.error.code, exc.error.message, exc.error.data
        if code == types.REQUEST_TIMEOUT:
            return MCPError(code=code, message=f"{replica.label}: {method} timed out after {timeout:g} s", data=data)
        if code == types.CONNECTION_CLOSED:
            return DeviceGone(code=code, message=message if replica.server_name in message
                              else f"{replica.label}: {message}", data=data)
        return MCPError(code=code, message=f"{replica.label}: {message}", data=data)

    def digest_of(self, server_name: str) -> str | None:
        """The catalog digest the first replica (by server-id) of ``server_name`` announces
        (None: none, or the device said list_changed since it announced it)."""
        try:
            return self._digest_memo[server_name]
        except KeyError:
            pass
        same_name = self._by_name.get(server_name)
        if not same_name:
            return None
        digest = self.balancer.newest_digest(list(same_name.values()))  # rolling upgrade: the newest
        digest = None if digest is not None and self._stale_digest.get(server_name) == digest else digest
        self._digest_memo[server_name] = digest
        return digest

    def cached_items(self, server_name: str, kind: str) -> list[dict[str, Any]] | None:
        """The items of ``kind`` of ``server_name`` if known without a request: from the catalog
        of its announced digest, else from the per-server-name cache; else None."""
        digest = self.digest_of(server_name)
        if digest is not None:
            catalog = self.catalogs.get(digest)
            if catalog is not None:
                return catalog[KINDS[kind]]
        return self._lists.get(server_name, {}).get(kind)

    def catalog_of(self, server_name: str) -> dict[str, list[dict[str, Any]]] | None:
        """The known catalog of ``server_name``'s announced digest (no request), or None."""
        digest = self.digest_of(server_name)
        return self.catalogs.get(digest) if digest is not None else None

    async def catalog(self, replica: Replica) -> dict[str, list[dict[str, Any]]]:
        """The replica's whole catalog (``tools``, ``resources``, ``resourceTemplates``,
        ``prompts``): from the store by its announced digest, else fetched (one ``initialize``
        and the four lists) and, with a digest, stored for every device that announces it.

        Raises:
            DeviceUnavailable, DeviceGone, MCPError: as :meth:`request`.
        """
        digest = self._digest(replica)
        if digest is not None:
            found = self.catalogs.get(digest)
            if found is not None:
                return found
            lock = self._list_locks.setdefault(("digest", digest), anyio.Lock())
            async with lock:
                found = self.catalogs.get(digest)
                if found is not None:
                    return found
                catalog = {key: await self._fetch_kind(replica, kind) for kind, key in KINDS.items()}
                self.catalogs.put(digest, catalog)
                log.info("catalog %s fetched from %s", digest, replica.label)
                return catalog
        return {key: await self.list_items(replica, kind) for kind, key in KINDS.items()}

    def _digest(self, replica: Replica) -> str | None:
        digest = announced_digest(replica.presence.meta)
        return None if digest is not None and self._stale_digest.get(replica.server_name) == digest else digest

    async def _fetch_kind(self, replica: Replica, kind: str) -> list[dict[str, Any]]:
        await self.open(replica)
        capability = "resources" if kind == "templates" else kind
        if getattr(replica.capabilities, capability, None) is None:
            return []
        return await self._fetch(replica, kind)

    async def list_items(self, replica: Replica, kind: str) -> list[dict[str, Any]]:
        """All items of ``kind`` (``tools``, ``resources``, ``templates``, ``prompts``) of the
        replica's server-name, following cursors: from the catalog of the digest it announces
        (:meth:`catalog`), else cached per server-name until its list changes.
        """
        if self._digest(replica) is not None:
            return (await self.catalog(replica))[KINDS[kind]]
        cached = self._lists.get(replica.server_name, {}).get(kind)
        if cached is not None:
            return cached
        lock = self._list_locks.setdefault((replica.server_name, kind), anyio.Lock())
        async with lock:
            cached = self._lists.get(replica.server_name, {}).get(kind)
            if cached is not None:
                return cached
            items = await self._fetch_kind(replica, kind)
            if replica.online and replica.server_name in self._by_name:
                self._lists.setdefault(replica.server_name, {})[kind] = items
            return items

    async def _fetch(self, replica: Replica, kind: str) -> list[dict[str, Any]]:
        method, key = LIST_METHODS[kind]
        items: list[dict[str, Any]] = []
        cursor = None
        for _ in range(10_000):
            try:
                page = await self.request(replica, method, {"cursor": cursor} if cursor else None)
            except MCPError as exc:
                if exc.error.code == types.METHOD_NOT_FOUND:
                    return items
                raise
            items.extend(x for x in page.get(key) or [] if isinstance(x, dict))
            cursor = page.get("nextCursor")
            if not cursor:
                break
        return items

    # -- health ---------------------------------------------------------------------------------

    async def _ping_loop(self) -> None:
        """Ping every open session each ``ping_interval`` s; one that fails is dropped."""
        while True:
            await anyio.sleep(self.ping_interval)
            async with anyio.create_task_group() as tg:
                for replica in list(self.replicas.values()):
                    if replica.session is not None and replica.outstanding == 0:
                        tg.start_soon(self._ping, replica)

    async def _ping(self, replica: Replica) -> None:
        try:
            await self.request(replica, "ping", None)
        except MCPError as exc:
            log.warning("ping failed, dropping the session: %s", exc)
            self.reset(replica)

