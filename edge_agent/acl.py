"""Broker ACLs generated from a fleet description (``edge-agent acl``).

The fleet file (TOML)::

    [[devices]]
    username = "gh3-pi"                       # the device's broker user
    server_id = "gh3-pi"                      # its MQTT client id (= server-id)
    server_name = "devices/greenhouse/gh3-pi"

    [[clients]]
    username = "ops"                          # a cloud user (an assistant, a script, the gateway)
    server_name_filters = ["devices/greenhouse/#"]

Each device may publish only its own presence (retained) and capability topics and the RPC
topics of its own server-id and server-name, and subscribe only to its own control topic, the
clients' presence/capability topics and its RPC topics. Each client may discover, initialize
and talk only to servers matching its filters, and publish RPC messages, presence and
capability changes only under **its own** client id (Mosquitto's ``%c`` pattern), so it cannot
post on another client's RPC topic. Source: the publish/subscribe table of
mqtt-ai/mcp-over-mqtt ``mqtt_transport.md`` (digest: ``spec/mcp-over-mqtt.md``,
"Authorization").
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from typing import Any

from edge_agent.core import topics
from edge_agent.errors import ConfigError


@dataclass(frozen=True)
class Device:
    username: str
    server_id: str
    server_name: str


@dataclass(frozen=True)
class Client:
    username: str
    server_name_filters: tuple[str, ...] = ("#",)


@dataclass
class Fleet:
    devices: list[Device] = field(default_factory=list)
    clients: list[Client] = field(default_factory=list)


def load_fleet(path: str) -> Fleet:
    """Read a fleet TOML file. Raises :class:`ConfigError` naming every bad key."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError([(path, "-", f"cannot read: {exc.strerror}")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([(path, "-", f"not valid TOML: {exc}")]) from None
    return fleet_from_dict(data, path)


def fleet_from_dict(data: dict[str, Any], path: str = "<fleet>") -> Fleet:
    problems: list[tuple[str, str, str]] = []
    fleet = Fleet()
    users: set[str] = set()
    for key in set(data) - {"devices", "clients"}:
        problems.append((path, key, "unknown key; expected [[devices]] and [[clients]]"))
    for i, d in enumerate(data.get("devices", [])):
        where = f"devices[{i}]"
        try:
            user = _user(d.get("username"), f"{where}.username")
            topics.check_id(d.get("server_id") or "", "server-id")
            topics.check_server_name(d.get("server_name") or "")
        except ValueError as exc:
            problems.append((path, where, str(exc)))
            continue
        if user in users:
            problems.append((path, f"{where}.username", f"user {user!r} appears twice"))
        users.add(user)
        fleet.devices.append(Device(user, d["server_id"], d["server_name"]))
    for i, c in enumerate(data.get("clients", [])):
        where = f"clients[{i}]"
        try:
            user = _user(c.get("username"), f"{where}.username")
        except ValueError as exc:
            problems.append((path, f"{where}.username", str(exc)))
            continue
        filters = c.get("server_name_filters", ["#"])
        if not isinstance(filters, list) or not filters or not all(isinstance(f, str) and f and not f.startswith("/")
                                                                    for f in filters):
            problems.append((path, f"{where}.server_name_filters", "a non-empty list of topic filters like 'devices/#'"))
            continue
        if user in users:
            problems.append((path, f"{where}.username", f"user {user!r} appears twice"))
        users.add(user)
        fleet.clients.append(Client(user, tuple(filters)))
    if problems:
        raise ConfigError(problems)
    return fleet


def _user(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value or any(c in value for c in " \t\n#+/"):
        raise ValueError(f"{key}: a user name without spaces, '#', '+' or '/'")
    return value


def device_rules(d: Device) -> list[tuple[str, str]]:
    """``(access, topic)`` pairs for one device (access: read, write or readwrite)."""
    sid, name = d.server_id, d.server_name
    return [
        ("write", topics.server_presence(sid, name)),
        ("write", topics.server_capability(sid, name)),
        ("readwrite", topics.rpc("+", sid, name)),
        ("read", topics.server_control(sid, name)),
        ("read", topics.client_presence("+")),
        ("read", topics.client_capability("+")),
    ]


def client_rules(c: Client) -> list[tuple[str, str]]:
    """``(access, topic)`` pairs for one client user (its own-id topics are patterns, below)."""
    rules: list[tuple[str, str]] = []
    for f in c.server_name_filters:
        rules += [
            ("read", f"$mcp-server/presence/+/{f}"),
            ("read", f"$mcp-server/capability/+/{f}"),
            ("write", f"$mcp-server/+/{f}"),  # control topics: initialize
        ]
    return rules


# Every client may use its own client id (%c) only: RPC, presence, capability.
CLIENT_PATTERNS = [
    ("readwrite", "$mcp-rpc/%c/#"),
    ("write", "$mcp-client/presence/%c"),
    ("write", "$mcp-client/capability/%c"),
]


def mosquitto_acl(fleet: Fleet) -> str:
    """The Mosquitto ``acl_file`` text."""
    out = ["# Generated by `edge-agent acl` from the fleet description. Do not edit by hand.",
           "# Mosquitto: acl_file <this file>; allow_anonymous false; password_file <passwords>.", ""]
    for d in fleet.devices:
        out.append(f"# device {d.server_name} (server-id {d.server_id})")
        out.append(f"user {d.username}")
        out += [f"topic {a} {t}" for a, t in device_rules(d)]
        out.append("")
    for c in fleet.clients:
        out.append(f"# MCP client user {c.username}: servers {', '.join(c.server_name_filters)}")
        out.append(f"user {c.username}")
        out += [f"topic {a} {t}" for a, t in client_rules(c)]
        out.append("")
    out.append("# Every user: only topics of its own client id (%c). Devices' RPC topics are above.")
    out += [f"pattern {a} {t}" for a, t in CLIENT_PATTERNS]
    return "\n".join(out) + "\n"


def dynsec(fleet: Fleet) -> dict[str, Any]:
    """The same rules as Mosquitto dynamic-security JSON (roles and clients, no passwords:
    set them with ``mosquitto_ctrl dynsec setClientPassword``)."""
    roles, clients = [], []

    def acls(rules: list[tuple[str, str]]) -> list[dict[str, Any]]:
        out = []
        for access, topic in rules:
            if access in ("write", "readwrite"):
                out.append({"acltype": "publishClientSend", "topic": topic, "priority": 0, "allow": True})
            if access in ("read", "readwrite"):
                out.append({"acltype": "subscribePattern", "topic": topic, "priority": 0, "allow": True})
                out.append({"acltype": "publishClientReceive", "topic": topic, "priority": 0, "allow": True})
        return out

    for d in fleet.devices:
        roles.append({"rolename": f"mcp-device-{d.username}", "acls": acls(device_rules(d))})
        clients.append({"username": d.username, "clientid": d.server_id,
                        "roles": [{"rolename": f"mcp-device-{d.username}"}]})
    for c in fleet.clients:
        rules = client_rules(c) + CLIENT_PATTERNS
        roles.append({"rolename": f"mcp-client-{c.username}", "acls": acls(rules)})
        clients.append({"username": c.username, "roles": [{"rolename": f"mcp-client-{c.username}"}]})
    return {"defaultACLAccess": {"publishClientSend": False, "publishClientReceive": False,
                                 "subscribe": False, "unsubscribe": True},
            "clients": clients, "roles": roles, "groups": []}


def dynsec_json(fleet: Fleet) -> str:
    return json.dumps(dynsec(fleet), indent=2) + "\n"
