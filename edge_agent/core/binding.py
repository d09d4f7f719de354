# The MCP-over-MQTT binding's session rules and message shapes, the same for the Pi agent, the
# board, the simulated fleet and the cloud client. Source: mqtt-ai/mcp-over-mqtt,
# specification/2025-03-26/basic/mqtt_transport.md ("Initialization", "Server Presence",
# "Disconnection", "User Properties"). Runs on CPython and MicroPython.
#
# - A session opens with an ``initialize`` request on the server's control topic; its user
#   property MCP-MQTT-CLIENT-ID names the client (it must be a valid client id: never a
#   wildcard, never a "/": :func:`check_id`, the id rule of "Message Topics": server-id and
#   mcp-client-id are MQTT client ids, any string without "/", "+", "#").
# - It closes on ``notifications/disconnected`` on the RPC topic or the client's presence
#   topic, or an empty payload on the client's presence topic (the client's will).
# - The server's presence is a retained ``notifications/server/online``; its will and its
#   clean shutdown clear it with an empty retained payload.
from . import jsonrpc

# Byte limits of the ids (names.MAX_NAME: the server-name's), so that the longest topic,
# $mcp-rpc/{mcp-client-id}/{server-id}/{server-name}, stays within an MQTT string's 65535 bytes (MQTT 5 §1.5.4): 256 bytes per id is far beyond
# any real client id (MQTT 5 §3.1.3.1 only promises 23; ours are names or UUIDs) and leaves
# 65535 - 11 - 2 * 256 = 65012 bytes for the server-name. Checked before any state is kept.
MAX_ID = 256


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

COMPONENT_TYPE = "MCP-COMPONENT-TYPE"
CLIENT_ID = "MCP-MQTT-CLIENT-ID"
META = "MCP-META"
SERVER_NAME = "MCP-SERVER-NAME"  # in CONNACK: the broker assigns the server-name
DISCONNECTED_METHOD = "notifications/disconnected"
ONLINE_METHOD = "notifications/server/online"
DISCONNECTED = {"jsonrpc": "2.0", "method": DISCONNECTED_METHOD}


def user_property(props, name):
    """The value of user property ``name`` in ``props`` (a list of (name, value)), or None."""
    for key, value in props or ():
        if key == name:
            return value
    return None


def is_disconnected(msg):
    """True if ``msg`` (a decoded value) is exactly the notification
    ``notifications/disconnected``: a JSON-RPC 2.0 object with that method and no id."""
    return isinstance(msg, dict) and msg.get("jsonrpc") == "2.0" and msg.get("method") == DISCONNECTED_METHOD \
        and "id" not in msg


def client_gone(payload, decode=jsonrpc.decode):
    """True if ``payload`` (bytes) on a client's presence or RPC topic ends its session: empty
    (the will), or a ``notifications/disconnected`` notification. ``decode``: bytes -> value
    (JSON by default; the Pi passes its JSON/CBOR codec). Never raises."""
    if not payload:
        return True
    try:
        return is_disconnected(decode(payload))
    except Exception:
        return False


def opens_session(msg):
    """True if ``msg`` (decoded, from the control topic) may open a session: only an
    ``initialize`` request does."""
    return isinstance(msg, dict) and msg.get("method") == "initialize" and "id" in msg


def valid_client_id(cid):
    """``cid`` (the MCP-MQTT-CLIENT-ID user property) if it can name a session's topics, else
    None: never a wildcard, a "/", NUL, empty or over 256 bytes (``MAX_ID``: every topic
    built from it stays within MQTT's 65535 bytes)."""
    try:
        return check_id(cid, "mcp-client-id")
    except ValueError:
        return None


def online(server_name, description="", meta=None):
    """The retained presence message ``notifications/server/online``."""
    return jsonrpc.notification(ONLINE_METHOD, {"server_name": server_name, "description": description,
                                                "meta": meta or {}})


def no_session(msg):
    """The answer to ``msg`` (decoded) on an RPC topic of a client without a session (the server
    restarted, or never saw its initialize): a -32600 error telling it to initialize again, or
    None when ``msg`` is not a request (nothing to answer) or is an initialize (sent here by
    mistake: it belongs on the control topic, and answering it would look like success)."""
    if not isinstance(msg, dict) or "method" not in msg or not jsonrpc.is_id(msg.get("id")) \
            or msg.get("method") == "initialize":
        return None
    return jsonrpc.error(msg["id"], jsonrpc.RpcError(
        jsonrpc.INVALID_REQUEST, "Session not initialized: send initialize on the server control topic"))


def legacy_discover(msg, versions):
    """The answer of a server that speaks only the handshake revisions (``versions``) to an MCP
    2026-07-28 ``server/discover`` request: -32601 at once, naming them (the SDKs fall back to
    ``initialize`` on any error but -32022), or None when ``msg`` is not such a request."""
    if not isinstance(msg, dict) or msg.get("method") != "server/discover" or not jsonrpc.is_id(msg.get("id")):
        return None
    return jsonrpc.error(msg["id"], jsonrpc.RpcError(
        jsonrpc.METHOD_NOT_FOUND, "Method not found: server/discover (initialize: " + ", ".join(versions) + ")"))


def control_refusal(msg):
    """The answer to a request other than initialize on the control topic (-32600), or None."""
    if not isinstance(msg, dict) or "method" not in msg or not jsonrpc.is_id(msg.get("id")):
        return None
    return jsonrpc.error(msg["id"], jsonrpc.RpcError(
        jsonrpc.INVALID_REQUEST, "only initialize is accepted on the control topic, not " + jsonrpc.shown(msg["method"])))
