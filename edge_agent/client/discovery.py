"""Find MCP servers through the broker by their retained presence messages.

Spec: mqtt-ai/mcp-over-mqtt ``specification/2025-03-26/basic/mqtt_transport.md``,
"Service Discovery". A server publishes, retained, on ``$mcp-server/presence/{server-id}/{server-name}``::

    {"jsonrpc": "2.0", "method": "notifications/server/online",
     "params": {"server_name": "...", "description": "...", "meta": {...}}}

and an empty payload on the same topic when it goes away (its will, or before a clean exit).
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

import anyio
import paho.mqtt.client as mqtt

from edge_agent.client.link import Incoming, MqttLink, suggested_filters
from edge_agent.core import topics
from edge_agent.errors import TransportError

log = logging.getLogger(__name__)

ONLINE = "notifications/server/online"


@dataclass(frozen=True)
class ServerPresence:
    """One online MCP server instance, as its presence message announces it.

    ``server_id`` and ``server_name`` come from the presence topic (authoritative);
    ``description`` and ``meta`` from the online message (``""`` / ``{}`` when absent);
    ``topic`` is the presence topic itself.
    """

    server_id: str
    server_name: str
    description: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    topic: str = ""


CATALOG_DIGEST = "catalogDigest"
"""Presence meta key: the digest of the server's catalog (``edge_agent.server.catalog``)."""


def catalog_digest(presence: ServerPresence) -> str | None:
    """The catalog digest ``presence`` announces (``meta["catalogDigest"]``), or None."""
    value = presence.meta.get(CATALOG_DIGEST)
    return value if isinstance(value, str) and value else None


def _version_key(value: Any) -> tuple[int, ...]:
    """``"1.4.2"`` -> ``(1, 4, 2)``; anything unparsable sorts lowest."""
    parts = []
    for piece in str(value or "").split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def newest_digest(presences: list[ServerPresence], first_seen: dict[str, int] | None = None) -> str | None:
    """The catalog digest of the newest release among replicas of one server-name (a rolling
    upgrade runs two): the highest ``meta["version"]`` of the replicas announcing it, then the
    digest seen last (``first_seen``: digest -> order first seen; unseen ones are recorded now,
    in server-id order). None when no replica announces a digest."""
    best: tuple[tuple[int, ...], int] | None = None
    found = None
    for presence in sorted(presences, key=lambda p: p.server_id):
        digest = catalog_digest(presence)
        if digest is None:
            continue
        order = first_seen.setdefault(digest, len(first_seen)) if first_seen is not None else 0
        key = (_version_key(presence.meta.get("version")), order)
        if best is None or key > best:
            best, found = key, digest
    return found


def new_client_id() -> str:
    """A fresh random mcp-client-id (``mcp-client-`` + 16 hex digits); the spec wants a new one per use."""
    return f"mcp-client-{secrets.token_hex(8)}"


def parse_presence(topic: str, payload: bytes) -> ServerPresence | None:
    """Parse a message received on a server presence topic.

    Returns ``None`` for an empty payload (that server-id went offline).

    Raises:
        ValueError: ``topic`` is not a server presence topic, its server-id or server-name is
            invalid (:func:`edge_agent.core.topics.check_id`, ``check_server_name``), or the
            payload is not a JSON ``notifications/server/online`` message.
    """
    parsed = topics.parse(topic)
    if parsed is None or parsed.kind != "server-presence":
        raise ValueError(f"{topic!r} is not a server presence topic")
    # the ids come from whoever wrote the topic: checked like our own (no wildcard, NUL, or a
    # length that would make $mcp-rpc/{client}/{server-id}/{server-name} too long)
    topics.check_id(parsed.server_id or "", "server-id")
    topics.check_server_name(parsed.server_name or "")
    if not payload:
        return None
    try:
        message = json.loads(payload)
    except ValueError as exc:
        raise ValueError(f"presence on {topic} is not JSON: {exc}") from None
    if not isinstance(message, dict) or message.get("method") != ONLINE:
        raise ValueError(f"presence on {topic} is not a {ONLINE} message")
    params = message.get("params")
    params = params if isinstance(params, dict) else {}
    if params.get("server_name") not in (None, parsed.server_name):
        log.debug("presence on %s names itself %r; the topic wins", topic, params.get("server_name"))
    description = params.get("description")
    meta = params.get("meta")
    return ServerPresence(
        server_id=parsed.server_id or "",
        server_name=parsed.server_name or "",
        description=description if isinstance(description, str) else "",
        meta=meta if isinstance(meta, dict) else {},
        topic=topic,
    )


def presence_subscriptions(broker_filters: list[str] | None, wanted: str) -> list[str]:
    """The presence topic filters to subscribe to for the server-name filter ``wanted``.

    If the broker suggested server-name filters in CONNACK (``MCP-SERVER-NAME-FILTERS``), the
    spec says the client MUST use them, so those are returned (the caller narrows to
    ``wanted`` locally); otherwise ``$mcp-server/presence/+/{wanted}``.
    """
    if broker_filters:
        if not any(_filters_overlap(f, wanted) for f in broker_filters):
            log.warning("server-name filter %r lies outside the broker's suggested filters %s: "
                        "no server will be found", wanted, broker_filters)
        return [topics.presence_filter(f) for f in broker_filters]
    return [topics.presence_filter(wanted)]


def _filters_overlap(broker_filter: str, wanted: str) -> bool:
    """Whether some server-name could match both filters (exact for a plain name)."""
    if "+" not in wanted and "#" not in wanted:
        return mqtt.topic_matches_sub(broker_filter, wanted)
    a, b = broker_filter.split("/"), wanted.split("/")
    for x, y in zip(a, b):
        if "#" in (x, y):
            return True
        if x != y and "+" not in (x, y):
            return False
    return len(a) == len(b)


class PresenceTable:
    """Online server instances seen on presence topics, narrowed to one server-name filter.

    Feed it every :class:`Incoming` message; it ignores anything that is not a presence
    message for a matching server-name, drops a server-id on an empty payload, and logs and
    skips malformed online messages (counted in ``skipped``). Event-loop only (see :mod:`.link`).
    """

    def __init__(self, server_name_filter: str = "#"):
        self.server_name_filter = server_name_filter
        self.servers: dict[tuple[str, str], ServerPresence] = {}
        self.skipped = 0
        self.changed = anyio.Event()

    def feed(self, message: Incoming) -> ServerPresence | None:
        """Record ``message``; return the presence it announced online, else ``None``."""
        parsed = topics.parse(message.topic)
        if parsed is None or parsed.kind != "server-presence":
            return None
        if not mqtt.topic_matches_sub(self.server_name_filter, parsed.server_name or ""):
            return None
        key = (parsed.server_name or "", parsed.server_id or "")
        try:
            presence = parse_presence(message.topic, message.payload)
        except ValueError as exc:
            self.skipped += 1
            log.warning("skipping malformed presence: %s", str(exc)[:300])
            return None
        if presence is None:
            self.servers.pop(key, None)
        else:
            self.servers[key] = presence
        self.changed.set()
        self.changed = anyio.Event()
        return presence

    def sorted(self) -> list[ServerPresence]:
        """The online instances, by server-name then server-id."""
        return [self.servers[k] for k in sorted(self.servers)]


PRESENCE_QOS = 0
"""QoS of the presence subscriptions. At QoS 0 a broker's per-client queue limit only bites
once the client's socket buffers are full: Mosquitto 2.0 (default ``max_queued_messages 1000``,
``max_inflight_messages 20``) delivers 10,000 retained presences whole at QoS 0, and only the
first 1,020 at QoS 1 (tests/test_fleet_presence.py); at 40,000 and more it drops QoS 0 too
(about 17,000 arrive) unless ``max_queued_messages`` is raised: the end-of-retained marker
detects that (docs/fleet.md). Nothing is lost by QoS 0: presence is retained, so after a
reconnect the broker sends every one again."""

GAP_ADVICE = (
    "the broker dropped presence messages (the end-of-retained marker, sent after them, never came back): "
    "raise the broker's per-client queue limit above the number of devices (Mosquitto: max_queued_messages, "
    "default 1000, 0 = no limit; it bounds QoS 0 too once the client's socket buffers are full, about "
    "15,000 presences here; EMQX: mqtt.max_mqueue_len; HiveMQ: max-queue-size) (docs/fleet.md)")
"""What to do when the marker is lost: which broker setting to raise."""

MARKER_QUIET = 2.0
"""Seconds without a presence after which an end-of-retained marker still missing counts as
dropped by the broker."""


@dataclass
class RetainedReport:
    """How the retained presence burst went (filled by :func:`discover` with ``until_retained``).

    ``presences``: presence messages received; ``complete``: the end-of-retained marker came back
    (every retained presence the broker holds was delivered before it); ``gap``: why the list may
    be incomplete, with the broker setting to raise (``None`` when complete or no marker was
    used).
    """

    presences: int = 0
    complete: bool = False
    gap: str | None = None


def gap_message(presences: int, *, streaming: bool, waited: float) -> str:
    """The warning for a marker that did not come back after ``waited`` s: the broker dropped
    messages (presences stopped arriving), or the burst was still arriving (a longer wait)."""
    if streaming:
        return (f"presences were still arriving after {waited:g} s ({presences} so far): the list may be "
                "incomplete; wait longer (--timeout)")
    return f"{presences} presences received, but {GAP_ADVICE}"


RETAINED_GRACE = 0.05
"""Seconds of quiet on the presence topics, after the end-of-retained marker came back, before
:func:`discover` (``until_retained=True``) returns: insurance for brokers that deliver retained
messages from another thread than the live ones (Mosquitto does not; the marker alone suffices)."""


def marker_topic(client_id: str) -> str:
    """The end-of-retained marker topic of ``client_id``: under its own RPC topics
    (``$mcp-rpc/{client_id}/#``), which the ACLs of ``edge-agent acl`` let it read and write."""
    return f"$mcp-rpc/{client_id}/discovery/end-of-retained"


async def discover(broker_url: str, server_name_filter: str = "#", *, timeout: float = 1.0,
                   client_id: str | None = None, username: str | None = None,
                   password: str | None = None, connect_timeout: float = 10.0,
                   until_retained: bool = False, presence_qos: int = PRESENCE_QOS,
                   report: RetainedReport | None = None, tls: Any = None) -> list[ServerPresence]:
    """List the MCP servers online at ``broker_url`` whose server-name matches ``server_name_filter``.

    Subscribes to ``$mcp-server/presence/+/{server_name_filter}`` (or to the broker's suggested
    ``MCP-SERVER-NAME-FILTERS``, narrowed locally) and collects retained and live presence
    messages for ``timeout`` seconds. Empty payloads (a server that went away) are ignored;
    malformed online messages are logged and skipped, and so are (by the MQTT adapter) messages
    paho would refuse, which would otherwise close the connection: a poisoned retained presence
    hides only itself.

    With ``until_retained``, it returns as soon as the broker has delivered the retained
    presences (``timeout`` is then only a cap): right behind the SUBSCRIBE, in the same write,
    it publishes a random marker to :func:`marker_topic`, subscribed on the same connection at
    the presences' QoS. A broker queues a subscription's retained messages before it handles the
    next PUBLISH, and delivers one connection's messages in order, so when the marker comes back
    every retained presence is in, and when the broker's queue overflowed the marker is dropped
    with the rest (published after the SUBACK instead, it found room once the first presences
    were read, and came back over a gap) (plus :data:`RETAINED_GRACE` of quiet). If the broker refuses the marker
    topic, it falls back to waiting until no presence came for :data:`MARKER_QUIET` seconds. A marker that does not come back while
    the presences have stopped arriving means the broker dropped messages (a queue limit):
    ``report.gap`` then says so, naming the broker setting to raise, and it is logged as a
    warning. Presence is subscribed at ``presence_qos`` (:data:`PRESENCE_QOS`, 0).

    Returns:
        One :class:`ServerPresence` per server-id, sorted by server-name then server-id.

    Raises:
        TransportError: the broker cannot be reached or refused the connection/subscription.
        ValueError: a malformed broker URL.
    """
    table = PresenceTable(server_name_filter)
    report = report if report is not None else RetainedReport()
    client_id = client_id or new_client_id()
    marker, token = marker_topic(client_id), secrets.token_hex(8).encode()
    marker_back = anyio.Event()
    last_presence = [0.0]

    def on_message(message: Incoming) -> None:
        if message.topic == marker and message.payload == token:
            marker_back.set()
            return
        last_presence[0] = anyio.current_time()
        report.presences += 1
        table.feed(message)

    async with MqttLink(broker_url, client_id=client_id, username=username,
                        password=password, connect_timeout=connect_timeout, tls=tls) as link:
        link.on_message = on_message
        link.on_lost = lambda reason: marker_back.set()
        use_marker = until_retained
        if use_marker:
            try:
                await link.subscribe([(marker, False)], qos=presence_qos)
            except TransportError as exc:
                if link.lost is not None:
                    raise
                log.info("no end-of-retained marker (%s): listening %g s", exc, timeout)
                use_marker = False
        broker_filters = suggested_filters(link.connack_properties)
        if broker_filters:
            log.info("broker suggests server-name filters %s", broker_filters)
        sent = await link.subscribe(((f, False) for f in presence_subscriptions(broker_filters, server_name_filter)),
                                    qos=presence_qos, marker=(marker, token) if use_marker else None)
        started = anyio.current_time()
        marker_mid = sent.mid if sent is not None else -1
        with anyio.move_on_after(timeout):
            if use_marker:
                while not marker_back.is_set() and link.lost is None:
                    quiet = anyio.current_time() - max(last_presence[0], started)
                    if quiet >= MARKER_QUIET:
                        break  # presences stopped and no marker: the broker dropped it (or refused it)
                    with anyio.move_on_after(min(MARKER_QUIET - quiet, 0.25) + 0.01):
                        await marker_back.wait()
                while (quiet := last_presence[0] + RETAINED_GRACE - anyio.current_time()) > 0 and link.lost is None:
                    await anyio.sleep(quiet)
            elif until_retained:  # no marker (refused): until presences stop for MARKER_QUIET s
                while (quiet := anyio.current_time() - max(last_presence[0], started)) < MARKER_QUIET:
                    await anyio.sleep(MARKER_QUIET - quiet)
            else:
                await anyio.sleep_forever()
        if link.lost is not None:
            raise TransportError(link.lost)
        if use_marker and not marker_back.is_set() and marker_mid in link.refused_publishes:
            log.info("the broker refused the end-of-retained marker (%s): no gap check",
                     link.refused_publishes.pop(marker_mid))
            use_marker = False
        if use_marker:
            report.complete = marker_back.is_set()
            if not report.complete:
                now = anyio.current_time()
                quiet = now - max(last_presence[0], started)
                report.gap = gap_message(report.presences, streaming=quiet < MARKER_QUIET, waited=round(now - started, 1))
                log.warning("%s", report.gap)
        if link.dropped_malformed:
            log.warning("dropped %d presence message(s) paho would have refused (U+FEFF, NUL or invalid UTF-8 "
                        "in a property or the topic); the other servers are listed", link.dropped_malformed)
    return table.sorted()
