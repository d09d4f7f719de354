# The MCP-over-MQTT binding's session rules and message shapes, the same for the Pi agent, the
# board, the simulated fleet and the cloud client. Source: mqtt-ai/mcp-over-mqtt,
# specification/2025-03-26/basic/mqtt_transport.md ("Initialization", "Server Presence",
# "Disconnection", "User Properties"). Runs on CPython and MicroPython.
#
# - A session opens with an ``initialize`` request on the server's control topic; its user
#   property MCP-MQTT-CLIENT-ID names the client (it must be a valid client id: never a
#   wildcard, never a "/").
# - It closes on ``notifications/disconnected`` on the RPC topic or the client's presence
#   topic, or an empty payload on the client's presence topic (the client's will).
# - The server's presence is a retained ``notifications/server/online``; its will and its
#   clean shutdown clear it with an empty retained payload.
from . import jsonrpc, topics

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
    None: never a wildcard, a "/", NUL, empty or over 256 bytes (``topics.MAX_ID``: every topic
    built from it stays within MQTT's 65535 bytes)."""
    try:
        return topics.check_id(cid, "mcp-client-id")
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
