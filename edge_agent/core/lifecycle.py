# MCP lifecycle: protocol versions, the session states, the initialize result.
# Source: MCP 2025-11-25 basic/lifecycle (version negotiation: answer the requested version if
# supported, else the newest we support). Runs on CPython and MicroPython.
import sys

from .jsonrpc import INVALID_PARAMS, RpcError

if sys.implementation.name != "micropython":  # the Pi's callers name them here (core/loglevel.py)
    from .loglevel import LOG_LEVELS, log_allowed, set_level  # noqa: F401

VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")  # newest first

NEW = "new"  # no initialize yet
INITIALIZING = "initializing"  # initialize answered, notifications/initialized not yet seen
READY = "ready"

class Session:
    """One MCP client's session, keyed by its mcp-client-id.

    ``state``: NEW -> INITIALIZING (initialize answered) -> READY (notifications/initialized).
    ``inflight``: request id -> (task, Request) of its running requests. ``subscriptions``:
    resource URIs it subscribed to. ``log_level``: minimum level of notifications/message."""

    def __init__(self, sid):
        self.id = sid
        self.state = NEW
        self.protocol_version = None
        self.client_info = {}
        self.client_capabilities = {}
        self.log_level = "warning"
        self.subscriptions = set()
        self.inflight = {}

    @property
    def initialized(self):
        return self.state != NEW


def negotiate(params):
    """The protocol version to answer an initialize with ``params``.

    Raises RpcError(-32602) when ``params.protocolVersion`` is not a string."""
    requested = params.get("protocolVersion")
    if not isinstance(requested, str):
        raise RpcError(INVALID_PARAMS, "initialize: params.protocolVersion (a string) is required",
                       {"supported": list(VERSIONS)})
    return requested if requested in VERSIONS else VERSIONS[0]


def initialize(session, params, server_info, capabilities, instructions=None):
    """Apply an initialize request to ``session`` and return its result (a re-initialize
    starts the session over: its subscriptions are dropped)."""
    version = negotiate(params)
    session.protocol_version = version
    info = params.get("clientInfo")
    caps = params.get("capabilities")
    session.client_info = info if isinstance(info, dict) else {}
    session.client_capabilities = caps if isinstance(caps, dict) else {}
    session.subscriptions = set()
    session.state = INITIALIZING
    out = {"protocolVersion": version, "capabilities": capabilities, "serverInfo": server_info}
    if instructions:
        out["instructions"] = instructions
    return out
