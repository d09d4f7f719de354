"""Link profiles: QoS per message kind, keepalive, session and message expiry, backoff, bounds.

Two named profiles; every field can be overridden in the config's ``[link]`` table:

- ``lan`` — the MCP-over-MQTT spec's defaults: clean start, Session Expiry Interval 0, no
  message expiry, sessions not kept across agent restarts. QoS 1 for RPC and notifications,
  QoS 0 for telemetry (``resources/updated``).
- ``unreliable`` — for Wi-Fi dead spots, cellular modems and flaky power: a persistent MQTT
  session (clean start off, session expiry 1 day) so the broker queues requests while the
  device is away, QoS 1 everywhere, message expiry on requests and responses (a late answer
  is dropped, not delivered an hour later), shorter keepalive to notice half-open links, a
  small in-flight window, MCP sessions persisted in the SQLite store. This deliberately
  deviates from the spec's "Session Expiry Interval MUST be 0": see
  ``docs/unreliable-links.md`` for why and what a client must do to match.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

KINDS = ("response", "notification", "telemetry")


@dataclass
class LinkSettings:
    """Every knob of the MQTT link. Times in seconds, sizes in bytes.

    ``keepalive``: MQTT keepalive (5..65535); paho sends PINGREQ after this much silence and
    drops the link if no PINGRESP follows within another keepalive, so a half-open link is
    noticed after 1–2× keepalive. ``clean_start`` / ``session_expiry``: MQTT 5 session.
    ``qos_rpc``: responses and requests on RPC topics; ``qos_notifications``: progress, log,
    list_changed, disconnected; ``qos_telemetry``: ``notifications/resources/updated``.
    ``message_expiry``: MQTT Message Expiry Interval on responses (0 = none); also how long a
    response waits in the outbox before it is dropped as expired. ``max_inflight``: QoS 1
    messages awaiting PUBACK at once. ``reconnect_min``/``reconnect_max``: exponential backoff
    with full jitter between connection attempts (tenacity ``wait_random_exponential``).
    ``connack_timeout``: give up on a connection attempt without CONNACK after this long.
    ``outbox_max_messages`` / ``outbox_max_bytes``: bounds of the on-disk outbox; when full,
    the oldest telemetry is dropped first, then the oldest notification; responses never.
    ``qos0_queue``: QoS 0 messages held in memory while offline (oldest dropped).
    ``persist_sessions``: keep MCP sessions in the store across agent restarts;
    ``session_max_age``: forget stored sessions idle longer than this.
    ``reply_cache``: responses kept per session to answer a duplicated request again.
    ``durable_outbox``: write every QoS 1 message to SQLite before sending it (survives an agent
    crash; costs an INSERT and a DELETE per message). When false, messages go straight to
    paho while the link is up (paho re-sends its in-flight ones after a blip) and only what
    is published while the link is down waits in the outbox.
    ``ack_when_handled``: acknowledge a QoS 1 request to the broker (PUBACK) only once it is
    handled (answered, and what its handling wrote to the state store committed), so an agent
    crash loses no request: the broker sends the unacknowledged ones again after the restart
    (needs a persistent MQTT session: ``clean_start`` off). Off: PUBACK on receipt.
    ``reply_store_max`` / ``reply_ttl``: bounds (entries, seconds) of the durable reply cache of
    non-read-only tool calls, kept with ``ack_when_handled`` (:mod:`edge_agent.device.journal`);
    the TTL must exceed any client's retry window.
    ``deadline_skew``: seconds added to a client's ``_meta["dev.edge-agent/deadline"]`` before a
    late tool call that is not read-only is refused (the client's and the device's clocks differ).
    ``max_inflight_per_client``: requests one client may have being handled at once; more are
    answered at once with JSON-RPC error -32004 "Too many requests in flight" (not queued).
    ``max_sessions``: MCP sessions kept at once (1..100000); one more evicts the least recently
    used (unauthenticated first). ``session_probe_idle``: seconds of silence from a client
    before the session janitor pings it; ``session_probe_timeout``: seconds it then has to send
    anything before its session is closed; ``session_init_grace``: seconds a session may stay
    without ``notifications/initialized`` (:mod:`edge_agent.device.janitor`).
    ``max_packet_size``: the MQTT 5 Maximum Packet Size announced in CONNECT (bytes, default
    256 KiB; 0: none): the broker sends no bigger packet, so one huge message costs no memory.
    ``busy_lane_after``: requests in flight at once (answers queued for the broker included) that
    move a client to the busy lane, a second MQTT session of this server, so its flood queues at
    the broker apart from the other clients' requests (0: never; :mod:`edge_agent.mqtt.lanes`);
    ``busy_lane_calm``: seconds below that before it moves back. ``busy_lane_standby``: connect
    the lane with the main connection (default) instead of at the first move: one more broker
    connection per device, and the other clients do not wait for the lane's connect at a first
    flood (measured in ``bench/durability.py --scenarios fairness``; a large fleet may prefer
    ``false``).
    ``receive_maximum``: the MQTT 5 Receive Maximum in CONNECT (1..65535; 0: not sent, the
    broker's own limit applies: Mosquitto's ``max_inflight_messages``, 20): how many QoS 1
    requests the broker hands this device before it acknowledged them. Under
    ``ack_when_handled`` a request is acknowledged only once handled, so 20 slow calls would
    hold every slot and stall the link for all clients; ``unreliable`` sets 1024.
    """

    profile: str = "lan"
    keepalive: int = 30
    clean_start: bool = True
    session_expiry: int = 0
    qos_rpc: int = 1
    qos_notifications: int = 1
    qos_telemetry: int = 0
    message_expiry: int = 0
    max_inflight: int = 20
    reconnect_min: float = 0.5
    reconnect_max: float = 30.0
    connack_timeout: float = 10.0
    outbox_max_messages: int = 10000
    outbox_max_bytes: int = 8_000_000
    qos0_queue: int = 1000
    persist_sessions: bool = False
    session_max_age: int = 86400
    reply_cache: int = 64
    durable_outbox: bool = False
    ack_when_handled: bool = False
    deadline_skew: float = 2.0
    max_inflight_per_client: int = 64
    reply_store_max: int = 10000
    reply_ttl: float = 86400.0
    max_sessions: int = 1000
    session_probe_idle: float = 300.0
    session_probe_timeout: float = 30.0
    session_init_grace: float = 60.0
    max_packet_size: int = 262144
    busy_lane_after: int = 16
    busy_lane_calm: float = 30.0
    busy_lane_standby: bool = True
    receive_maximum: int = 0

    def qos(self, kind: str) -> int:
        """QoS for a message kind: ``response``, ``notification`` or ``telemetry``."""
        return {"response": self.qos_rpc, "notification": self.qos_notifications,
                "telemetry": self.qos_telemetry}.get(kind, self.qos_rpc)


PROFILES: dict[str, dict[str, Any]] = {
    "lan": {},
    "unreliable": {
        "keepalive": 15,
        "clean_start": False,
        "session_expiry": 86400,
        "qos_rpc": 1,
        "qos_notifications": 1,
        "qos_telemetry": 1,
        "message_expiry": 300,
        "max_inflight": 10,
        "reconnect_min": 0.5,
        "reconnect_max": 60.0,
        "persist_sessions": True,
        "durable_outbox": True,
        "ack_when_handled": True,
        "receive_maximum": 1024,
        "session_probe_timeout": 3600.0,  # a client with a persistent MQTT session may be away a while
    },
}

FIELDS = {f.name: f.type for f in dataclasses.fields(LinkSettings)}


def link_settings(profile: str = "lan", **overrides: Any) -> LinkSettings:
    """The settings of ``profile`` with ``overrides`` applied.

    Raises:
        ValueError: unknown profile or field.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown link profile {profile!r}; known: {', '.join(PROFILES)}")
    unknown = set(overrides) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown link setting(s): {', '.join(sorted(unknown))}")
    return LinkSettings(**{"profile": profile, **PROFILES[profile], **overrides})
