# Topic names of the MCP-over-MQTT transport: building and parsing (the id check is in
# binding.py, the server-name check in names.py). No I/O.
# Source: mqtt-ai/mcp-over-mqtt, specification/2025-03-26/basic/mqtt_transport.md, "Message
# Topics". server-id and mcp-client-id are MQTT client ids: any string without "/", "+", "#";
# a server-name is "/"-separated with at least one "/", no wildcards, no leading "/".
# Runs on CPython and MicroPython.
import sys

COMPONENT_SERVER = "mcp-server"
COMPONENT_CLIENT = "mcp-client"

if sys.implementation.name != "micropython":  # the Pi's callers name them here (core/binding.py, core/names.py)
    from .binding import MAX_ID, check_id  # noqa: F401
    from .names import MAX_NAME, check_server_name  # noqa: F401


def server_control(server_id, server_name):
    return "$mcp-server/" + server_id + "/" + server_name


def server_capability(server_id, server_name):
    return "$mcp-server/capability/" + server_id + "/" + server_name


def server_presence(server_id, server_name):
    return "$mcp-server/presence/" + server_id + "/" + server_name


def presence_filter(server_name_filter="#"):
    """The discovery filter ``$mcp-server/presence/+/{server-name-filter}``."""
    return "$mcp-server/presence/+/" + server_name_filter


def client_presence(client_id):
    return "$mcp-client/presence/" + client_id


def client_capability(client_id):
    return "$mcp-client/capability/" + client_id


def rpc(client_id, server_id, server_name):
    return "$mcp-rpc/" + client_id + "/" + server_id + "/" + server_name


def client_topics(client_id, server_id, server_name):
    """What a server subscribes for one client: ``[(topic, no_local)]``: its presence, its
    capability topic, and the RPC topic (No Local: our own answers must not come back)."""
    return [(client_presence(client_id), False), (client_capability(client_id), False),
            (rpc(client_id, server_id, server_name), True)]


class Topic:
    """A parsed MCP-over-MQTT topic. ``kind``: ``control``, ``server-capability``,
    ``server-presence``, ``client-presence``, ``client-capability`` or ``rpc``; fields not in
    the topic are None."""

    __slots__ = ("kind", "server_id", "server_name", "client_id")

    def __init__(self, kind, server_id=None, server_name=None, client_id=None):
        self.kind = kind
        self.server_id = server_id
        self.server_name = server_name
        self.client_id = client_id

    def __eq__(self, other):
        return isinstance(other, Topic) and (self.kind, self.server_id, self.server_name, self.client_id) == \
            (other.kind, other.server_id, other.server_name, other.client_id)

    def __hash__(self):
        return hash((self.kind, self.server_id, self.server_name, self.client_id))

    def __repr__(self):
        return "Topic(kind=%r, server_id=%r, server_name=%r, client_id=%r)" % (
            self.kind, self.server_id, self.server_name, self.client_id)


def parse(topic):
    """Parse an MCP-over-MQTT topic by its prefix; None when it is not one. Routing by prefix
    (not by our subscription table) follows the interop checklist: a broker-side bridge may
    inject messages on RPC topics the server never subscribed to."""
    parts = topic.split("/")
    head = parts[0]
    n = len(parts)
    if head == "$mcp-rpc" and n >= 5:
        return Topic("rpc", server_id=parts[2], server_name="/".join(parts[3:]), client_id=parts[1])
    if head == "$mcp-client" and n == 3 and parts[2]:
        if parts[1] == "presence":
            return Topic("client-presence", client_id=parts[2])
        if parts[1] == "capability":
            return Topic("client-capability", client_id=parts[2])
        return None
    if head == "$mcp-server" and n >= 3:
        if parts[1] in ("presence", "capability"):
            if n >= 5:
                kind = "server-presence" if parts[1] == "presence" else "server-capability"
                return Topic(kind, server_id=parts[2], server_name="/".join(parts[3:]))
            return None
        return Topic("control", server_id=parts[1], server_name="/".join(parts[2:]))
    return None
