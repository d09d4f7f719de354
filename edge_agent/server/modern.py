"""The session-less revision of MCP (2026-07-28) on the Pi: the rules :class:`~edge_agent.server.mcp.McpServer`
applies to a request that carries its protocol version in ``params._meta``. No I/O.

Sources: MCP 2026-07-28 ``basic/versioning`` (per-request ``_meta``: protocol version, client
capabilities and info, -32022 ``UnsupportedProtocolVersionError``), ``server/discover``,
``basic/patterns/subscriptions`` (``subscriptions/listen``, its acknowledgment and the
``subscriptionId`` tag), ``basic/patterns/mrtr`` (``InputRequiredResult``, ``requestState``
integrity), ``server/utilities/caching`` (``ttlMs``, ``cacheScope``), ``server/utilities/logging``
(``logLevel`` per request), ``changelog`` item 6 (resource not found is -32602).

(These rules live here, not in ``edge_agent/core``: the board's ``.mpy`` budget has no room for
them; the board answers ``server/discover`` with its own, smaller code.)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from typing import Any

from edge_agent.core.jsonrpc import INVALID_PARAMS, RpcError
from edge_agent.core.lifecycle import LOG_LEVELS, VERSIONS

MODERN_VERSIONS = ("2026-07-28",)
"""Session-less revisions we serve (newest first)."""
UNSUPPORTED_VERSION = -32022
"""MCP 2026-07-28 ``UnsupportedProtocolVersionError``."""

VERSION_META = "io.modelcontextprotocol/protocolVersion"
CLIENT_INFO_META = "io.modelcontextprotocol/clientInfo"
CLIENT_CAPABILITIES_META = "io.modelcontextprotocol/clientCapabilities"
LOG_LEVEL_META = "io.modelcontextprotocol/logLevel"
SERVER_INFO_META = "io.modelcontextprotocol/serverInfo"
SUBSCRIPTION_ID_META = "io.modelcontextprotocol/subscriptionId"

CONFIRM_META = "dev.edge-agent/confirm"
"""A tool's ``_meta`` flag: a call needs the user's confirmation (an ``InputRequiredResult``
with an ``elicitation/create`` form) when the client can be asked (2026-07-28 with the
``elicitation`` capability)."""

CACHEABLE = ("tools/list", "prompts/list", "resources/list", "resources/templates/list", "resources/read")
"""Methods whose 2026-07-28 results carry ``ttlMs`` and ``cacheScope`` (``CacheableResult``)."""

LIST_FLAGS = {"tools": "toolsListChanged", "prompts": "promptsListChanged", "resources": "resourcesListChanged"}
"""``notifications/{kind}/list_changed`` kind -> the ``subscriptions/listen`` filter field."""

CONFIRM_TTL = 300.0
"""Seconds a confirmation request's ``requestState`` stays valid."""


def all_versions() -> list[str]:
    """Every version we serve, session-less first: ``server/discover``'s ``supportedVersions``."""
    return list(MODERN_VERSIONS + VERSIONS)


def modern_version(params: Any) -> str | None:
    """The session-less version a request declares in ``params._meta`` (key
    ``io.modelcontextprotocol/protocolVersion``), or None for a handshake-era request (no such
    key, or a handshake version: served as before).

    Raises:
        RpcError: -32022 with ``data = {"supported": [...], "requested": v}`` for a version we
            do not serve (basic/versioning "Protocol Version Negotiation").
    """
    meta = params.get("_meta") if isinstance(params, dict) else None
    version = meta.get(VERSION_META) if isinstance(meta, dict) else None
    if version is None or version in VERSIONS:
        return None
    if version not in MODERN_VERSIONS:
        raise RpcError(UNSUPPORTED_VERSION, "Unsupported protocol version",
                       {"supported": all_versions(), "requested": version})
    return str(version)


def is_modern_request(msg: Any) -> bool:
    """True if ``msg`` (decoded) is a request whose ``params._meta`` names a protocol version
    that is not a handshake version: the first message of a session-less client (our MQTT
    extension accepts it on the server control topic, like ``initialize``)."""
    if not isinstance(msg, dict) or "method" not in msg or "id" not in msg:
        return False
    params = msg.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    return isinstance(meta, dict) and meta.get(VERSION_META) is not None and meta.get(VERSION_META) not in VERSIONS


def discover_result(server_info: dict[str, Any], capabilities: dict[str, Any],
                    instructions: str | None = None) -> dict[str, Any]:
    """The ``server/discover`` result: ``supportedVersions`` (session-less and handshake
    versions), ``capabilities``, ``_meta.serverInfo``, ``instructions``; not to be cached
    (``ttlMs`` 0: a driver that starts late changes the capabilities)."""
    out: dict[str, Any] = {"resultType": "complete", "supportedVersions": all_versions(),
                           "capabilities": capabilities, "_meta": {SERVER_INFO_META: server_info},
                           "ttlMs": 0, "cacheScope": "public"}
    if instructions:
        out["instructions"] = instructions
    return out


def finish_result(method: str, result: dict[str, Any]) -> None:
    """Give a 2026-07-28 result its required fields: ``resultType`` ("complete" unless set),
    and for :data:`CACHEABLE` methods ``ttlMs`` 0 (readings and driver health change at any
    time; clients re-list on ``list_changed``) and ``cacheScope`` "private" (a role filters
    what a client is shown)."""
    result.setdefault("resultType", "complete")
    if method in CACHEABLE:
        result.setdefault("ttlMs", 0)
        result.setdefault("cacheScope", "private")


def level_allows(request_level: Any, level: str) -> bool:
    """True if a request that opted in with ``_meta["io.modelcontextprotocol/logLevel"]`` =
    ``request_level`` gets a ``notifications/message`` at ``level`` (no opt-in: never)."""
    return request_level in LOG_LEVELS and level in LOG_LEVELS and \
        LOG_LEVELS.index(level) >= LOG_LEVELS.index(request_level)


class Listen:
    """One open ``subscriptions/listen`` stream of a session: its id (the request's JSON-RPC
    id), the honored list flags and resource URIs, and ``done`` (set to end it gracefully)."""

    __slots__ = ("id", "flags", "uris", "done")

    def __init__(self, listen_id: Any, flags: set[str], uris: set[str], done: Any):
        self.id = listen_id
        self.flags = flags
        self.uris = uris
        self.done = done

    def tag(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """A notification on this stream, tagged with ``_meta.subscriptionId``."""
        p = dict(params or {})
        p["_meta"] = {SUBSCRIPTION_ID_META: self.id}
        return {"jsonrpc": "2.0", "method": method, "params": p}


def listen_filter(params: dict[str, Any]) -> tuple[set[str], list[str]]:
    """The honored ``notifications`` filter of a ``subscriptions/listen`` request: the list
    flags set to true, and the resource URIs (deduplicated, in order).

    Raises:
        RpcError: -32602 when ``notifications`` is not an object or ``resourceSubscriptions``
            is not a list of strings.
    """
    wanted = params.get("notifications")
    if not isinstance(wanted, dict):
        raise RpcError(INVALID_PARAMS, "subscriptions/listen: params.notifications (an object) is required")
    flags = {flag for flag in LIST_FLAGS.values() if wanted.get(flag) is True}
    uris = wanted.get("resourceSubscriptions") or []
    if not isinstance(uris, list) or not all(isinstance(u, str) and u for u in uris):
        raise RpcError(INVALID_PARAMS, "subscriptions/listen: resourceSubscriptions must be a list of URIs")
    return flags, list(dict.fromkeys(uris))


def acknowledged(listen: Listen) -> dict[str, Any]:
    """``notifications/subscriptions/acknowledged`` for ``listen``: the filter we honor."""
    honored: dict[str, Any] = {flag: True for flag in sorted(listen.flags)}
    if listen.uris:
        honored["resourceSubscriptions"] = sorted(listen.uris)
    return listen.tag("notifications/subscriptions/acknowledged", {"notifications": honored})


# ---------------------------------------------------------------------------- confirmation

class Confirmations:
    """Signed ``requestState`` for tool confirmations (MCP 2026-07-28 basic/patterns/mrtr):
    the state names the tool, a digest of its arguments, the client (mcp-client-id) and an
    expiry, and carries an HMAC-SHA256 under a key that lives as long as this server process
    (a restart only means the user is asked again)."""

    def __init__(self, ttl: float = CONFIRM_TTL):
        self.ttl = ttl
        self._key = secrets.token_bytes(32)

    @staticmethod
    def _digest(tool: str, arguments: Any, client: str) -> str:
        text = json.dumps([tool, arguments, client], sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def _sign(self, body: bytes) -> str:
        return base64.urlsafe_b64encode(hmac.new(self._key, body, hashlib.sha256).digest()).decode().rstrip("=")

    def state(self, tool: str, arguments: Any, client: str) -> str:
        """A new ``requestState`` for this call."""
        body = json.dumps({"d": self._digest(tool, arguments, client), "x": round(time.time() + self.ttl, 1)},
                          separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(body).decode().rstrip("=") + "." + self._sign(body)

    def check(self, state: Any, tool: str, arguments: Any, client: str) -> bool:
        """True if ``state`` is ours, unexpired, and for exactly this tool, these arguments and
        this client; False if it expired (ask again).

        Raises:
            RpcError: -32602 for a state that fails verification (tampered, another call's or
                another client's): the spec says such state MUST be rejected.
        """
        try:
            text, sig = str(state).split(".", 1)
            body = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            ok = hmac.compare_digest(sig, self._sign(body))
            data = json.loads(body) if ok else None
        except (ValueError, TypeError):
            ok, data = False, None
        if not ok or not isinstance(data, dict) or data.get("d") != self._digest(tool, arguments, client):
            raise RpcError(INVALID_PARAMS, "tools/call: requestState fails verification (not this call's)")
        return float(data.get("x", 0)) >= time.time()


def confirm_request(tool: str, arguments: Any, state: str) -> dict[str, Any]:
    """The ``InputRequiredResult`` asking the user to confirm ``tool`` with ``arguments``."""
    shown = json.dumps(arguments, sort_keys=True, ensure_ascii=False)
    return {"resultType": "input_required", "requestState": state, "inputRequests": {"confirm": {
        "method": "elicitation/create",
        "params": {"mode": "form", "message": f"Run {tool} with {shown}? It acts on hardware.",
                   "requestedSchema": {"type": "object", "required": ["confirm"], "properties": {
                       "confirm": {"type": "boolean", "title": "Confirm",
                                   "description": f"Yes: run {tool} now"}}}}}}}


def confirmed(responses: Any) -> bool:
    """True if ``inputResponses`` holds an accepted confirmation (``confirm.action`` "accept"
    and ``content.confirm`` true)."""
    answer = responses.get("confirm") if isinstance(responses, dict) else None
    if not isinstance(answer, dict) or answer.get("action") != "accept":
        return False
    content = answer.get("content")
    return isinstance(content, dict) and content.get("confirm") is True
