"""Least-privilege broker ACLs generated from a fleet description (``edge-agent acl``).

The fleet file (TOML)::

    [[devices]]
    username = "gh3-pi"                       # the device's broker user
    server_id = "gh3-pi"                      # its MQTT client id (= server-id)
    server_name = "devices/greenhouse/gh3-pi"

    [[clients]]
    username = "ops"                          # a cloud user (an assistant, a script, the gateway)
    server_name_filters = ["devices/greenhouse/#"]   # default: exactly the fleet's device names
    client_ids = ["ops-gw", "ops-cli"]        # its fixed mcp-client-ids (optional, recommended)

What each principal gets (the publish/subscribe table of mqtt-ai/mcp-over-mqtt
``mqtt_transport.md``, "Authorization", narrowed):

- a **device** writes only its own presence and capability topics and the RPC topics of its own
  server-id and server-name, and reads only its own control topic, the clients' presence and
  capability topics and its RPC topics. Where the file has ``%c`` patterns (some client lists no
  ``client_ids``), the device's user gets ``deny`` lines for the client topics of its own id.
- a **client** reads the presence and capability of servers matching its filters, writes the
  control topic (``initialize``) of exactly the fleet's devices matching them (never
  ``$mcp-server/+/...``, which also matched every presence and capability topic), and uses the
  RPC, presence and capability topics of its own client ids only: literal per-user lines for the
  ``client_ids`` it lists (no other user can use them: the client id is bound to the user for
  everything but taking over the MQTT connection), else Mosquitto's ``%c`` pattern (any id).

Filters whose first level is a wildcard (``#``, ``+/x``) are refused; names and filters are
checked so that no value can add a line (no whitespace, control characters, quotes or ``%``).
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

from edge_agent.core import topics
from edge_agent.errors import ConfigError
from edge_agent.mqtt.lanes import lane_client_id

# user names and client ids: what every broker takes and no config syntax can trip over
_PLAIN = re.compile(r"^[A-Za-z0-9_.@:-]{1,128}$")
# characters that no name or filter written into an ACL may hold (line, field or quote breaks)
_UNSAFE = re.compile(r"[\x00-\x20\x7f\"'`%\\,{}\[\]]")


@dataclass(frozen=True)
class Device:
    username: str
    server_id: str
    server_name: str


@dataclass(frozen=True)
class Client:
    username: str
    server_name_filters: tuple[str, ...]
    client_ids: tuple[str, ...] = ()  # empty: any client id (``%c`` patterns)


@dataclass
class Fleet:
    devices: list[Device] = field(default_factory=list)
    clients: list[Client] = field(default_factory=list)

    @property
    def needs_patterns(self) -> bool:
        """True when some client lists no ``client_ids`` (its own-id topics are ``%c`` patterns,
        which Mosquitto applies to every user)."""
        return any(not c.client_ids for c in self.clients)


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
    """Validate a parsed fleet description.

    Raises:
        ConfigError: every problem as (file, key, message): unknown keys, bad or duplicate user
            names, server-ids, server-names, client ids, filters (first level a wildcard,
            wildcards inside a level, unsafe characters).
    """
    problems: list[tuple[str, str, str]] = []
    fleet = Fleet()
    users: set[str] = set()
    ids: dict[str, str] = {}
    for key in set(data) - {"devices", "clients"}:
        problems.append((path, key, "unknown key; expected [[devices]] and [[clients]]"))
    for i, d in enumerate(_tables(data.get("devices", []), "devices", path, problems)):
        where = f"devices[{i}]"
        extra = set(d) - {"username", "server_id", "server_name"}
        if extra:
            problems.append((path, f"{where}.{sorted(extra)[0]}", "unknown key; expected username, server_id, server_name"))
            continue
        try:
            user = _user(d.get("username"), f"{where}.username")
            sid = _client_id(d.get("server_id"), f"{where}.server_id", "server-id")
            name = _server_name(d.get("server_name"), f"{where}.server_name")
        except ValueError as exc:
            problems.append((path, where, str(exc)))
            continue
        if user in users:
            problems.append((path, f"{where}.username", f"user {user!r} appears twice"))
        if sid in ids:
            problems.append((path, f"{where}.server_id", f"id {sid!r} is also {ids[sid]}'s"))
        users.add(user)
        ids[sid] = where
        fleet.devices.append(Device(user, sid, name))
    for i, c in enumerate(_tables(data.get("clients", []), "clients", path, problems)):
        where = f"clients[{i}]"
        extra = set(c) - {"username", "server_name_filters", "client_ids"}
        if extra:
            problems.append((path, f"{where}.{sorted(extra)[0]}",
                             "unknown key; expected username, server_name_filters, client_ids"))
            continue
        try:
            user = _user(c.get("username"), f"{where}.username")
        except ValueError as exc:
            problems.append((path, f"{where}.username", str(exc)))
            continue
        if "server_name_filters" in c:
            raw = c["server_name_filters"]
            if not isinstance(raw, list) or not raw:
                problems.append((path, f"{where}.server_name_filters", "a non-empty list of topic filters like 'devices/#'"))
                continue
            try:
                filters = tuple(_filter(f, f"{where}.server_name_filters[{j}]") for j, f in enumerate(raw))
            except ValueError as exc:
                problems.append((path, f"{where}.server_name_filters", str(exc)))
                continue
        else:  # narrowed: exactly the devices of this fleet
            filters = tuple(dict.fromkeys(d.server_name for d in fleet.devices))
            if not filters:
                problems.append((path, f"{where}.server_name_filters",
                                 "required when the fleet lists no device (e.g. ['devices/greenhouse/#'])"))
                continue
        raw_ids = c.get("client_ids", [])
        if not isinstance(raw_ids, list):
            problems.append((path, f"{where}.client_ids", "a list of mcp-client-ids"))
            continue
        try:
            cids = tuple(_client_id(x, f"{where}.client_ids[{j}]") for j, x in enumerate(raw_ids))
        except ValueError as exc:
            problems.append((path, f"{where}.client_ids", str(exc)))
            continue
        for cid in cids:
            if cid in ids:
                problems.append((path, f"{where}.client_ids", f"id {cid!r} is also {ids[cid]}'s"))
            ids[cid] = where
        if user in users:
            problems.append((path, f"{where}.username", f"user {user!r} appears twice"))
        users.add(user)
        fleet.clients.append(Client(user, filters, cids))
    if problems:
        raise ConfigError(problems)
    return fleet


def _tables(value: Any, key: str, path: str, problems: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        problems.append((path, key, f"must be [[{key}]] tables"))
        return []
    return value


def _user(value: Any, key: str) -> str:
    if not isinstance(value, str) or not _PLAIN.match(value):
        raise ValueError(f"{key}: a user name of letters, digits and _ . @ : - (at most 128), got {value!r}")
    return value


def _client_id(value: Any, key: str, what: str = "client id") -> str:
    if not isinstance(value, str) or not _PLAIN.match(value):
        raise ValueError(f"{key}: a {what} of letters, digits and _ . @ : - (at most 128), got {value!r}")
    topics.check_id(value, what)
    return value


def _server_name(value: Any, key: str) -> str:
    try:
        topics.check_server_name(value if isinstance(value, str) else "")
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}") from None
    if _UNSAFE.search(value):
        raise ValueError(f"{key}: {value!r} holds a space, control character, quote, '%', ',' or bracket")
    return value


def _filter(value: Any, key: str) -> str:
    """A server-name filter: levels separated by '/', '+' and '#' only as whole levels, '#'
    last, and a first level that is not a wildcard (``#`` alone would reach every server and,
    on the control topics, every presence and capability topic)."""
    if not isinstance(value, str) or not value or value.startswith("/"):
        raise ValueError(f"{key}: a topic filter like 'devices/greenhouse/#', got {value!r}")
    if _UNSAFE.search(value):
        raise ValueError(f"{key}: {value!r} holds a space, control character, quote, '%', ',' or bracket")
    levels = value.split("/")
    if levels[0] in ("+", "#"):
        raise ValueError(f"{key}: {value!r} starts with a wildcard; name the first level (e.g. 'devices/#')")
    for i, level in enumerate(levels):
        if ("+" in level or "#" in level) and level not in ("+", "#"):
            raise ValueError(f"{key}: {value!r}: a wildcard must be a whole level")
        if level == "#" and i != len(levels) - 1:
            raise ValueError(f"{key}: {value!r}: '#' must be the last level")
        if not level:
            raise ValueError(f"{key}: {value!r} has an empty level")
    return value


def matches(filter_: str, name: str) -> bool:
    """True if the MQTT topic filter ``filter_`` matches the topic ``name`` (MQTT 5 §4.7)."""
    f, t = filter_.split("/"), name.split("/")
    for i, level in enumerate(f):
        if level == "#":
            return True
        if i >= len(t) or (level != "+" and level != t[i]):
            return False
    return len(f) == len(t)


def device_rules(d: Device, fleet: Fleet | None = None) -> list[tuple[str, str]]:
    """``(access, topic)`` pairs for one device (access: read, write, readwrite or deny)."""
    sid, name = d.server_id, d.server_name
    rules = [
        ("write", topics.server_presence(sid, name)),
        ("write", topics.server_capability(sid, name)),
        ("readwrite", topics.rpc("+", sid, name)),
        ("read", topics.server_control(sid, name)),
        ("read", topics.client_presence("+")),
        ("read", topics.client_capability("+")),
    ]
    if fleet is None or fleet.needs_patterns:  # the %c patterns would give it the client topics of its ids
        for own in (sid, lane_client_id(sid)):  # (its busy lane connects as <server-id>-busy)
            rules += [("deny", f"$mcp-rpc/{own}/#"), ("deny", topics.client_presence(own)),
                      ("deny", topics.client_capability(own))]
    if fleet is not None and fleet.needs_patterns:
        # a device under a client's fixed id would get that id's RPC topics to OTHER devices
        # from the %c pattern (and act as that client there); its own RPC topics stay its own
        rules += [("deny", f"$mcp-rpc/{cid}/{e.server_id}/#") for c in fleet.clients for cid in c.client_ids
                  for e in fleet.devices if e.server_id != sid]
    return rules


def _others_ids(user: str, fleet: Fleet) -> list[tuple[str, str]]:
    """``deny`` lines for the fixed client ids of every other client user: Mosquitto applies the
    ``%c`` patterns to every user, so without them a user connecting under another's fixed id
    would get that id's topics. Only when the file has patterns."""
    if not fleet.needs_patterns:
        return []
    return [("deny", t) for c in fleet.clients if c.username != user for cid in c.client_ids
            for t in (f"$mcp-rpc/{cid}/#", topics.client_presence(cid), topics.client_capability(cid))]


def client_rules(c: Client, fleet: Fleet) -> list[tuple[str, str]]:
    """``(access, topic)`` pairs for one client user: discovery under its filters, the control
    topics of the fleet's devices matching them, and the topics of its own ``client_ids``
    (without ``client_ids`` those are the ``%c`` patterns of :data:`CLIENT_PATTERNS`)."""
    rules: list[tuple[str, str]] = []
    for f in c.server_name_filters:
        rules += [("read", f"$mcp-server/presence/+/{f}"), ("read", f"$mcp-server/capability/+/{f}")]
    for d in fleet.devices:
        if any(matches(f, d.server_name) for f in c.server_name_filters):
            rules.append(("write", topics.server_control(d.server_id, d.server_name)))  # initialize
    for cid in c.client_ids:
        rules += [("readwrite", f"$mcp-rpc/{cid}/#"), ("write", topics.client_presence(cid)),
                  ("write", topics.client_capability(cid))]
    return rules + _others_ids(c.username, fleet)


# A client without fixed client ids may use its own client id (%c) only: RPC, presence, capability.
CLIENT_PATTERNS = [
    ("readwrite", "$mcp-rpc/%c/#"),
    ("write", "$mcp-client/presence/%c"),
    ("write", "$mcp-client/capability/%c"),
]


def mosquitto_acl(fleet: Fleet) -> str:
    """The Mosquitto ``acl_file`` text (Mosquitto 1.6 and 2.x)."""
    out = ["# Generated by `edge-agent acl` from the fleet description. Do not edit by hand.",
           "# Mosquitto: acl_file <this file>; allow_anonymous false; password_file <passwords>.", ""]
    for d in fleet.devices:
        out.append(f"# device {d.server_name} (server-id {d.server_id})")
        out.append(f"user {d.username}")
        out += [f"topic {a} {t}" for a, t in device_rules(d, fleet)]
        out.append("")
    for c in fleet.clients:
        ids = f"client ids {', '.join(c.client_ids)}" if c.client_ids else "any client id (%c)"
        out.append(f"# MCP client user {c.username}: servers {', '.join(c.server_name_filters)}; {ids}")
        out.append(f"user {c.username}")
        out += [f"topic {a} {t}" for a, t in client_rules(c, fleet)]
        out.append("")
    if fleet.needs_patterns:
        out.append("# Users without fixed client_ids: only topics of their own client id (%c).")
        out += [f"pattern {a} {t}" for a, t in CLIENT_PATTERNS]
    return "\n".join(out) + "\n"


def dynsec(fleet: Fleet) -> dict[str, Any]:
    """The same rules as Mosquitto dynamic-security JSON (roles and clients, no passwords:
    set them with ``mosquitto_ctrl dynsec setClientPassword``). A device is bound to its
    server-id and a client with exactly one ``client_ids`` entry to that id (dynsec's
    ``clientid``: the broker refuses that user under any other id, Mosquitto 2.0 and later);
    a client without ``client_ids`` gets ``%c`` ACLs, which dynsec substitutes from
    Mosquitto 2.1 on only."""
    roles, clients = [], []

    def acls(rules: list[tuple[str, str]]) -> list[dict[str, Any]]:
        out = []
        for access, topic in rules:
            if access == "deny":
                continue  # dynsec applies no pattern to other users: nothing to take back
            if access in ("write", "readwrite"):
                out.append({"acltype": "publishClientSend", "topic": topic, "priority": 0, "allow": True})
            if access in ("read", "readwrite"):
                out.append({"acltype": "subscribePattern", "topic": topic, "priority": 0, "allow": True})
                out.append({"acltype": "publishClientReceive", "topic": topic, "priority": 0, "allow": True})
        return out

    for d in fleet.devices:
        roles.append({"rolename": f"mcp-device-{d.username}", "acls": acls(device_rules(d, fleet))})
        clients.append({"username": d.username, "clientid": d.server_id,
                        "roles": [{"rolename": f"mcp-device-{d.username}"}]})
    for c in fleet.clients:
        rules = client_rules(c, fleet) + ([] if c.client_ids else CLIENT_PATTERNS)
        roles.append({"rolename": f"mcp-client-{c.username}", "acls": acls(rules)})
        entry: dict[str, Any] = {"username": c.username, "roles": [{"rolename": f"mcp-client-{c.username}"}]}
        if len(c.client_ids) == 1:
            entry["clientid"] = c.client_ids[0]
        clients.append(entry)
    return {"defaultACLAccess": {"publishClientSend": False, "publishClientReceive": False,
                                 "subscribe": False, "unsubscribe": True},
            "clients": clients, "roles": roles, "groups": []}


def dynsec_json(fleet: Fleet) -> str:
    return json.dumps(dynsec(fleet), indent=2) + "\n"


def emqx_acl(fleet: Fleet) -> str:
    """The same rules as an EMQX ``acl.conf`` (file authorization source, EMQX 5). A client
    without ``client_ids`` gets ``${clientid}`` topics. Not run against an EMQX here (no EMQX
    on the test machine): the shape follows the EMQX 5 documentation."""
    out = ["%% Generated by `edge-agent acl --emqx` from the fleet description. Do not edit by hand."]

    def line(user: str, action: str, rules: list[str]) -> None:
        if rules:
            out.append("{allow, {username, %s}, %s, [%s]}." % (json.dumps(user), action,
                                                                 ", ".join(json.dumps(t) for t in rules)))

    for d in fleet.devices:
        rules = device_rules(d, fleet)
        line(d.username, "publish", [t for a, t in rules if a in ("write", "readwrite")])
        line(d.username, "subscribe", [t for a, t in rules if a in ("read", "readwrite")])
    for c in fleet.clients:
        rules = client_rules(c, fleet)
        if not c.client_ids:
            rules += [(a, t.replace("%c", "${clientid}")) for a, t in CLIENT_PATTERNS]
        line(c.username, "publish", [t for a, t in rules if a in ("write", "readwrite")])
        line(c.username, "subscribe", [t for a, t in rules if a in ("read", "readwrite")])
    out.append("{deny, all}.")
    return "\n".join(out) + "\n"
