# Topic names of the MCP-over-MQTT transport: building, checking and parsing. No I/O.
# Source: mqtt-ai/mcp-over-mqtt, specification/2025-03-26/basic/mqtt_transport.md, "Message
# Topics". server-id and mcp-client-id are MQTT client ids: any string without "/", "+", "#";
# a server-name is "/"-separated with at least one "/", no wildcards, no leading "/".
# Runs on CPython and MicroPython.

COMPONENT_SERVER = "mcp-server"
COMPONENT_CLIENT = "mcp-client"
# Byte limits, so that the longest topic, $mcp-rpc/{mcp-client-id}/{server-id}/{server-name},
# stays within an MQTT string's 65535 bytes (MQTT 5 §1.5.4): 256 bytes per id is far beyond
# any real client id (MQTT 5 §3.1.3.1 only promises 23; ours are names or UUIDs) and leaves
# 65535 - 11 - 2 * 256 = 65012 bytes for the server-name. Checked before any state is kept.
MAX_ID = 256
MAX_NAME = 65012


def _utf8_size(value, what):
    try:
        return len(value.encode("utf-8"))
    except ValueError:  # UnicodeEncodeError: a lone surrogate (CPython only)
        raise ValueError("%s %r is not valid UTF-8" % (what, value))


def check_id(value, what="client id"):
    """``value`` if it is a valid server-id / mcp-client-id.

    Raises ValueError: empty, contains ``/``, ``+``, ``#`` or NUL, not valid UTF-8, longer than
    ``MAX_ID`` (256) bytes, or a server-id that would make ``$mcp-server/{id}/...`` another topic."""
    if not isinstance(value, str) or not value or any(c in value for c in "/+#\x00"):
        raise ValueError("%s %r must be non-empty and contain no '/', '+', '#' or NUL" % (what, value))
    size = _utf8_size(value, what)
    if size > MAX_ID:
        raise ValueError("%s is %d bytes; at most %d" % (what, size, MAX_ID))
    if what == "server-id" and value in ("presence", "capability"):
        raise ValueError("server-id %r is reserved: $mcp-server/%s/... is another topic" % (value, value))
    return value


def check_server_name(name):
    """``name`` if it is a valid server-name (e.g. ``devices/greenhouse/pi-01``).

    Raises ValueError with the rule it breaks."""
    if not isinstance(name, str) or not name or name.startswith("/") or name.endswith("/"):
        raise ValueError("server-name %r must not be empty nor start or end with '/'" % (name,))
    if "/" not in name:
        raise ValueError("server-name %r must be hierarchical: at least one '/' (e.g. 'devices/%s')" % (name, name))
    if "+" in name or "#" in name:
        raise ValueError("server-name %r must not contain the wildcards '+' or '#'" % (name,))
    if "\x00" in name:
        raise ValueError("server-name %r must not contain NUL" % (name,))
    size = _utf8_size(name, "server-name")
    if size > MAX_NAME:
        raise ValueError("server-name is %d bytes; at most %d" % (size, MAX_NAME))
    if "//" in name:
        raise ValueError("server-name %r must not contain an empty level ('//')" % (name,))
    return name


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
