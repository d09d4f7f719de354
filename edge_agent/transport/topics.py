"""Topic names of the MCP-over-MQTT transport: building and parsing, no I/O.

Source: mqtt-ai/mcp-over-mqtt, ``specification/2025-03-26/basic/mqtt_transport.md``,
"Message Topics". Identifiers:

- server-id / mcp-client-id: MQTT client ids, any string without ``/``, ``+`` or ``#``.
- server-name: ``/``-separated, at least one ``/``, no wildcards, no leading ``/``.
"""

from __future__ import annotations

from dataclasses import dataclass

SERVER_CONTROL = "$mcp-server/{server_id}/{server_name}"
SERVER_CAPABILITY = "$mcp-server/capability/{server_id}/{server_name}"
SERVER_PRESENCE = "$mcp-server/presence/{server_id}/{server_name}"
CLIENT_PRESENCE = "$mcp-client/presence/{client_id}"
CLIENT_CAPABILITY = "$mcp-client/capability/{client_id}"
RPC = "$mcp-rpc/{client_id}/{server_id}/{server_name}"

COMPONENT_SERVER = "mcp-server"
COMPONENT_CLIENT = "mcp-client"


def check_id(value: str, what: str = "client id") -> str:
    """Return ``value`` if it is a valid server-id / mcp-client-id.

    Raises:
        ValueError: empty, contains ``/``, ``+``, ``#`` or U+0000, is not valid UTF-8 (a lone
            surrogate), is longer than 65535 bytes (MQTT's string limit), or is a server-id
            that would make ``$mcp-server/{id}/...`` read as a presence or capability topic.
    """
    if not value or any(c in value for c in "/+#\x00"):
        raise ValueError(f"{what} {value!r} must be non-empty and contain no '/', '+', '#' or NUL")
    _check_utf8(value, what)
    if what == "server-id" and value in ("presence", "capability"):
        raise ValueError(f"server-id {value!r} is reserved: $mcp-server/{value}/... is another topic")
    return value


def _check_utf8(value: str, what: str) -> None:
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"{what} {value!r} is not valid UTF-8") from None
    if size > 65535:
        raise ValueError(f"{what} is {size} bytes; MQTT strings hold at most 65535")


def check_server_name(name: str) -> str:
    """Return ``name`` if it is a valid server-name (e.g. ``devices/greenhouse/pi-01``).

    Raises:
        ValueError: with the rule it breaks.
    """
    if not name or name.startswith("/") or name.endswith("/"):
        raise ValueError(f"server-name {name!r} must not be empty nor start or end with '/'")
    if "/" not in name:
        raise ValueError(f"server-name {name!r} must be hierarchical: at least one '/' (e.g. 'devices/{name}')")
    if "+" in name or "#" in name:
        raise ValueError(f"server-name {name!r} must not contain the wildcards '+' or '#'")
    if "\x00" in name:
        raise ValueError(f"server-name {name!r} must not contain NUL")
    _check_utf8(name, "server-name")
    if "//" in name:
        raise ValueError(f"server-name {name!r} must not contain an empty level ('//')")
    return name


def server_control(server_id: str, server_name: str) -> str:
    return SERVER_CONTROL.format(server_id=server_id, server_name=server_name)


def server_capability(server_id: str, server_name: str) -> str:
    return SERVER_CAPABILITY.format(server_id=server_id, server_name=server_name)


def server_presence(server_id: str, server_name: str) -> str:
    return SERVER_PRESENCE.format(server_id=server_id, server_name=server_name)


def presence_filter(server_name_filter: str = "#") -> str:
    """The discovery filter ``$mcp-server/presence/+/{server-name-filter}``."""
    return f"$mcp-server/presence/+/{server_name_filter}"


def client_presence(client_id: str) -> str:
    return CLIENT_PRESENCE.format(client_id=client_id)


def client_capability(client_id: str) -> str:
    return CLIENT_CAPABILITY.format(client_id=client_id)


def rpc(client_id: str, server_id: str, server_name: str) -> str:
    return RPC.format(client_id=client_id, server_id=server_id, server_name=server_name)


@dataclass(frozen=True)
class Topic:
    """A parsed MCP-over-MQTT topic.

    ``kind`` is one of ``control``, ``server-capability``, ``server-presence``,
    ``client-presence``, ``client-capability``, ``rpc``. Fields not in the topic are ``None``.
    """

    kind: str
    server_id: str | None = None
    server_name: str | None = None
    client_id: str | None = None


def parse(topic: str) -> Topic | None:
    """Parse an MCP-over-MQTT topic by its prefix; ``None`` when it is not one.

    Routing by prefix (not by our own subscription table) follows the interop checklist: a
    broker-side bridge may inject messages on RPC topics the server never subscribed to.
    """
    parts = topic.split("/")
    head = parts[0]
    try:
        if head == "$mcp-rpc" and len(parts) >= 5:
            return Topic("rpc", client_id=parts[1], server_id=parts[2], server_name="/".join(parts[3:]))
        if head == "$mcp-client" and len(parts) == 3 and parts[2]:
            if parts[1] == "presence":
                return Topic("client-presence", client_id=parts[2])
            if parts[1] == "capability":
                return Topic("client-capability", client_id=parts[2])
            return None
        if head == "$mcp-server" and len(parts) >= 3:
            if parts[1] in ("presence", "capability") and len(parts) >= 5:
                kind = "server-presence" if parts[1] == "presence" else "server-capability"
                return Topic(kind, server_id=parts[2], server_name="/".join(parts[3:]))
            if parts[1] not in ("presence", "capability"):
                return Topic("control", server_id=parts[1], server_name="/".join(parts[2:]))
    except IndexError:  # pragma: no cover - guarded by the length checks
        return None
    return None
