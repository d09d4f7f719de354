"""The MCP server core: lifecycle, sessions and every server feature. No network I/O.

A transport feeds :meth:`McpServer.handle` one raw payload at a time with the session it
belongs to, and gives each session a ``send(message_dict)`` callable and the server a
``broadcast(message_dict)`` callable (MCP over MQTT sends ``list_changed`` and
``resources/updated`` to the server capability topic, once for all clients).

Source: MCP specification 2025-11-25 (``basic/lifecycle``, ``server/tools``,
``server/resources``, ``server/prompts``, ``server/utilities/*``, ``basic/utilities/*``), with
the differences of 2024-11-05, 2025-03-26 and 2025-06-18 noted where they matter.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from ..errors import ToolInputError
from . import jsonrpc
from .jsonrpc import INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, RESOURCE_NOT_FOUND, RpcError
from .rbac import FORBIDDEN, Policy, Role
from .registry import Registry, ToolContext

log = logging.getLogger(__name__)

SUPPORTED_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")  # newest first
# Syslog severities, RFC 5424 order (MCP server/utilities/logging).
LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
ALLOWED_BEFORE_INIT = {"initialize", "ping", "logging/setLevel"}
# A client may bound when a command is still worth executing (Unix time in seconds, or an
# RFC 3339 string) in params._meta; destructive tools refuse to run after it.
DEADLINE_META = "io.edge-agent/deadline"

Send = Callable[[dict[str, Any]], None]


@dataclass
class ServerInfo:
    """``serverInfo`` of the initialize result, plus ``instructions`` for the model."""

    name: str
    version: str
    title: str | None = None
    instructions: str | None = None


@dataclass
class Session:
    """One MCP client's session (keyed by its mcp-client-id).

    ``state``: ``new`` → ``initializing`` (initialize answered) → ``ready``
    (``notifications/initialized`` received). ``subscriptions``: resource URIs this client
    subscribed to. ``log_level``: minimum level of ``notifications/message`` it receives.
    """

    id: str
    send: Send
    state: str = "new"
    protocol_version: str | None = None
    client_info: dict[str, Any] = field(default_factory=dict)
    client_capabilities: dict[str, Any] = field(default_factory=dict)
    log_level: str = "warning"
    subscriptions: set[str] = field(default_factory=set)
    inflight: dict[Any, tuple[asyncio.Task, threading.Event]] = field(default_factory=dict)
    replies: "OrderedDict[Any, tuple[str, dict[str, Any]]]" = field(default_factory=OrderedDict)
    role: Role | None = None  # set by the server from its RBAC policy

    @property
    def initialized(self) -> bool:
        return self.state in ("initializing", "ready")

    def snapshot(self) -> dict[str, Any]:
        """What survives an agent restart (JSON-serialisable)."""
        return {"state": self.state, "protocol_version": self.protocol_version, "client_info": self.client_info,
                "client_capabilities": self.client_capabilities, "log_level": self.log_level,
                "subscriptions": sorted(self.subscriptions)}


class McpServer:
    """Dispatches MCP requests to a :class:`Registry`.

    ``page_size``: items per ``*/list`` page (cursor pagination). ``broadcast``: sends a
    notification to every client (set by the transport; a no-op until then).
    ``on_tool_error(tool_name, exc)``: called when a tool handler raises something other than
    a :class:`ToolInputError` (the runtime uses it to mark the driver failed).
    """

    def __init__(self, registry: Registry, info: ServerInfo, *, page_size: int = 50,
                 broadcast: Send | None = None,
                 on_tool_error: Callable[[str, BaseException], None] | None = None,
                 reply_cache: int = 64,
                 on_session_change: Callable[[Session, bool], None] | None = None,
                 policy: Policy | None = None):
        self.registry = registry
        self.policy = policy or Policy.open()
        self.reply_cache = max(0, reply_cache)
        self.on_session_change = on_session_change
        self.info = info
        self.page_size = max(1, page_size)
        self.broadcast: Send = broadcast or (lambda msg: None)
        self.on_tool_error = on_tool_error
        self.sessions: dict[str, Session] = {}
        self._validators: dict[str, Draft202012Validator] = {}
        self._methods: dict[str, Callable[[Session, dict[str, Any]], Any]] = {
            "initialize": self._initialize,
            "ping": self._ping,
            "logging/setLevel": self._set_level,
            "tools/list": self._tools_list,
            "tools/call": self._tools_call,
            "resources/list": self._resources_list,
            "resources/templates/list": self._templates_list,
            "resources/read": self._resources_read,
            "resources/subscribe": self._subscribe,
            "resources/unsubscribe": self._unsubscribe,
            "prompts/list": self._prompts_list,
            "prompts/get": self._prompts_get,
            "completion/complete": self._complete,
        }

    # ------------------------------------------------------------------ sessions
    def open_session(self, session_id: str, send: Send) -> Session:
        """Create (or replace, for a re-initialize) the session of ``session_id``."""
        old = self.sessions.get(session_id)
        if old is not None:
            self._cancel_all(old)
        session = Session(session_id, send, role=self.policy.role_for(session_id))
        self.sessions[session_id] = session
        return session

    def restore_session(self, session_id: str, data: dict[str, Any], send: Send) -> Session:
        """Re-create a session from :meth:`Session.snapshot` (after an agent restart)."""
        session = Session(session_id, send, state=data.get("state", "ready"),
                          protocol_version=data.get("protocol_version"), client_info=data.get("client_info") or {},
                          client_capabilities=data.get("client_capabilities") or {},
                          log_level=data.get("log_level", "warning"),
                          subscriptions=set(data.get("subscriptions") or ()),
                          role=self.policy.role_for(session_id))
        self.sessions[session_id] = session
        return session

    def close_session(self, session_id: str) -> bool:
        """Drop a session (client left): cancel its in-flight requests. True if it existed."""
        session = self.sessions.pop(session_id, None)
        if session is None:
            return False
        self._cancel_all(session)
        self._changed(session, closed=True)
        return True

    def _changed(self, session: Session, closed: bool = False) -> None:
        if self.on_session_change is not None:
            self.on_session_change(session, closed)

    def end_all(self, *, forget: bool) -> None:
        """Shutdown: cancel every session's requests and drop the sessions; ``forget`` also
        reports them closed (so a persisted copy is deleted)."""
        for sid in list(self.sessions):
            session = self.sessions.pop(sid)
            self._cancel_all(session)
            if forget:
                self._changed(session, closed=True)

    @staticmethod
    def _cancel_all(session: Session) -> None:
        for task, event in session.inflight.values():
            event.set()
            task.cancel()
        session.inflight.clear()

    def capabilities(self) -> dict[str, Any]:
        return {
            "tools": {"listChanged": True},
            "resources": {"subscribe": True, "listChanged": True},
            "prompts": {"listChanged": True},
            "logging": {},
            "completions": {},
        }

    # ------------------------------------------------------------------ entry point
    async def handle(self, session: Session, payload: bytes | str | dict[str, Any], *,
                     deadline: float | None = None) -> None:
        """Handle one incoming message of ``session``. Never raises for bad input: malformed
        JSON gets -32700, a bad message -32600, an unknown method -32601, a request before
        ``initialize`` -32600; requests run as tasks so they can be cancelled and overlap.
        ``deadline``: Unix time (s) after which the transport says the message expired (MQTT
        Message Expiry); destructive tools called after it are refused.
        """
        if isinstance(payload, dict):
            try:
                msg = jsonrpc.check(payload)
            except RpcError as err:
                msg_id = err.data.get("id") if isinstance(err.data, dict) else None
                err.data = None
                session.send(jsonrpc.error(msg_id, err))
                return
        else:
            try:
                msg = jsonrpc.decode(payload)
            except RpcError as err:
                msg_id = err.data.get("id") if isinstance(err.data, dict) else None
                err.data = None
                session.send(jsonrpc.error(msg_id, err))
                return
        if jsonrpc.is_notification(msg):
            self._notification(session, msg)
        elif jsonrpc.is_request(msg):
            msg_id = msg["id"]
            if msg_id in session.inflight:
                log.info("duplicate of in-flight request %r from %s ignored", msg_id, session.id)
                return  # a QoS 1 redelivery: the answer is on its way
            cached = session.replies.get(msg_id)
            if cached is not None and cached[0] == _fingerprint(msg):
                log.info("duplicate of request %r from %s answered from the reply cache", msg_id, session.id)
                session.send(cached[1])
                return
            cancel = threading.Event()
            task = asyncio.get_running_loop().create_task(self._request(session, msg, cancel, deadline))
            session.inflight[msg["id"]] = (task, cancel)
        # responses: this server sends no requests, so there is nothing to match; ignore.

    async def _request(self, session: Session, msg: dict[str, Any], cancel: threading.Event,
                       deadline: float | None = None) -> None:
        reply = await self._answer(session, msg, cancel, deadline)
        entry = session.inflight.get(msg["id"])
        if entry is not None and entry[1] is cancel:
            del session.inflight[msg["id"]]  # before replying: the client may reuse the id at once
        if reply is not None and not cancel.is_set():
            if self.reply_cache and msg["method"] != "initialize":
                session.replies[msg["id"]] = (_fingerprint(msg), reply)
                while len(session.replies) > self.reply_cache:
                    session.replies.popitem(last=False)
            session.send(reply)
            if msg["method"] in _DURABLE:
                self._changed(session)

    async def _answer(self, session: Session, msg: dict[str, Any], cancel: threading.Event,
                      deadline: float | None = None) -> dict[str, Any] | None:
        method, msg_id = msg["method"], msg["id"]
        params = msg.get("params") or {}
        try:
            handler = self._methods.get(method)
            if handler is None:
                raise RpcError(METHOD_NOT_FOUND, f"Method not found: {method}")
            if not session.initialized and method not in ALLOWED_BEFORE_INIT:
                raise RpcError(INVALID_REQUEST, f"Session not initialized: send initialize before {method}")
            if session.role is not None and not session.role.allows_method(method):
                raise RpcError(FORBIDDEN, f"Forbidden: role {session.role.name!r} may not call {method}",
                               {"role": session.role.name, "method": method})
            if method == "tools/call":
                result = await self._tools_call(session, params, msg_id=msg_id, cancel=cancel, deadline=deadline)
            else:
                result = await handler(session, params)
        except RpcError as err:
            return jsonrpc.error(msg_id, err)
        except asyncio.CancelledError:
            return None  # notifications/cancelled: no response (basic/utilities/cancellation)
        except Exception as exc:  # a bug in a handler must not take the agent down
            log.exception("internal error in %s", method)
            return jsonrpc.error(msg_id, RpcError(INTERNAL_ERROR, f"Internal error in {method}: {exc}"))
        return jsonrpc.result(msg_id, result)

    def _notification(self, session: Session, msg: dict[str, Any]) -> None:
        method = msg["method"]
        params = msg.get("params") or {}
        if method == "notifications/initialized":
            if session.state == "initializing":
                session.state = "ready"
                self._changed(session)
        elif method == "notifications/cancelled":
            rid = params.get("requestId")
            if not isinstance(rid, (str, int)) or isinstance(rid, bool):
                return
            entry = session.inflight.pop(rid, None)  # pop now: a task cancelled before it ran never cleans up
            if entry is not None and entry[0] is not None:
                task, event = entry
                event.set()
                task.cancel()
                log.info("request %r of %s cancelled: %s", params.get("requestId"), session.id, params.get("reason", ""))
        # roots/list_changed, progress from the client, unknown notifications: nothing to do.

    # ------------------------------------------------------------------ lifecycle
    async def _initialize(self, session: Session, params: dict[str, Any]) -> dict[str, Any]:
        requested = params.get("protocolVersion")
        if not isinstance(requested, str):
            raise RpcError(INVALID_PARAMS, "initialize: params.protocolVersion (a string) is required",
                           {"supported": list(SUPPORTED_VERSIONS)})
        version = requested if requested in SUPPORTED_VERSIONS else SUPPORTED_VERSIONS[0]
        session.protocol_version = version
        session.client_info = params.get("clientInfo") or {}
        session.client_capabilities = params.get("capabilities") or {}
        session.state = "initializing"
        info: dict[str, Any] = {"name": self.info.name, "version": self.info.version}
        if self.info.title:
            info["title"] = self.info.title
        result: dict[str, Any] = {"protocolVersion": version, "capabilities": self.capabilities(), "serverInfo": info}
        if self.info.instructions:
            result["instructions"] = self.info.instructions
        return result

    async def _ping(self, session: Session, params: dict[str, Any]) -> dict[str, Any]:
        return {}

    async def _set_level(self, session: Session, params: dict[str, Any]) -> dict[str, Any]:
        level = params.get("level")
        if level not in LOG_LEVELS:
            raise RpcError(INVALID_PARAMS, f"logging/setLevel: level must be one of {', '.join(LOG_LEVELS)}")
        session.log_level = level
        return {}

    # ------------------------------------------------------------------ pagination
    def _page(self, items: list[dict[str, Any]], params: dict[str, Any], key: str) -> dict[str, Any]:
        cursor = params.get("cursor")
        start = 0
        if cursor is not None:
            try:
                start = int(base64.urlsafe_b64decode(str(cursor).encode()).decode())
                if start < 0 or start > len(items):
                    raise ValueError
            except (ValueError, UnicodeDecodeError):
                raise RpcError(INVALID_PARAMS, f"Invalid cursor {cursor!r}") from None
        end = start + self.page_size
        out: dict[str, Any] = {key: items[start:end]}
        if end < len(items):
            out["nextCursor"] = base64.urlsafe_b64encode(str(end).encode()).decode()
        return out

    # ------------------------------------------------------------------ tools
    async def _tools_list(self, session: Session, params: dict[str, Any]) -> dict[str, Any]:
        role = session.role
        return self._page([t.describe() for t in self.registry.tools.values()
                           if role is None or role.allows_tool(t.name, t.annotations)], params, "tools")

    def _validator(self, name: str, schema: Any) -> Draft202012Validator:
        validator = self._validators.get(name)
        if validator is None or validator.schema is not schema:
            validator = Draft202012Validator(schema)
            self._validators[name] = validator
        return validator

    async def _tools_call(self, session: Session, params: dict[str, Any], *, msg_id: Any = None,
                          cancel: threading.Event | None = None, deadline: float | None = None) -> dict[str, Any]:
        name = params.get("name")
        if not isinstance(name, str):
            raise RpcError(INVALID_PARAMS, "tools/call: params.name (a string) is required")
        tool = self.registry.tools.get(name)
        if tool is None:
            raise RpcError(INVALID_PARAMS, f"Unknown tool: {name}")
        if session.role is not None and not session.role.allows_tool(name, tool.annotations):
            raise RpcError(FORBIDDEN, f"Forbidden: role {session.role.name!r} may not call tool {name}",
                           {"role": session.role.name, "tool": name})
        arguments = params.get("arguments")
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            raise RpcError(INVALID_PARAMS, "tools/call: params.arguments must be an object")
        try:
            problems = sorted(self._validator(name, tool.input_schema).iter_errors(arguments), key=lambda e: list(e.path))
        except SchemaError as exc:  # a driver declared a broken schema: a bug, reported clearly
            return _tool_error(f"{name}: the tool's input schema is invalid ({exc.message})")
        if not problems and not _finite(arguments):
            return _tool_error(f"Invalid arguments for {name}: NaN and infinity are not accepted")
        if problems:
            lines = []
            for p in problems:
                where = ".".join(str(x) for x in p.path) or "arguments"
                lines.append(f"{where}: {p.message}")
            return _tool_error(f"Invalid arguments for {name}: " + "; ".join(lines))
        if tool.unavailable:
            return _tool_error(f"{name} is unavailable: {tool.unavailable}")
        meta = params.get("_meta") or {}
        if not isinstance(meta, dict):
            raise RpcError(INVALID_PARAMS, "tools/call: params._meta must be an object")
        try:
            deadline = _earliest(deadline, _parse_deadline(meta.get(DEADLINE_META)))
        except ValueError as exc:
            return _tool_error(f"{name}: bad {DEADLINE_META}: {exc}")
        if deadline is not None and (tool.annotations or {}).get("destructiveHint") and time.time() > deadline:
            return _tool_error(stale_message(name, deadline))
        ctx = ToolContext(
            session_id=session.id,
            progress=self._progress_fn(session, meta.get("progressToken")),
            cancelled=cancel or threading.Event(),
            log=lambda level, text: self.log_to(session, level, text, logger=name),
            meta=meta,
            deadline=deadline if (tool.annotations or {}).get("destructiveHint") else None,
        )
        try:
            value = await tool.handler(arguments, ctx)
        except asyncio.CancelledError:
            ctx.cancelled.set()
            raise
        except ToolInputError as exc:
            return _tool_error(str(exc))
        except Exception as exc:
            if self.on_tool_error is not None:
                self.on_tool_error(name, exc)
            return _tool_error(f"{name} failed: {type(exc).__name__}: {exc}")
        return _tool_result(value)

    def _progress_fn(self, session: Session, token: Any) -> Callable[..., None]:
        if token is None:
            return lambda *a, **k: None
        last: list[float] = []

        def progress(value: float, total: float | None = None, message: str | None = None) -> None:
            if last and value <= last[0]:
                return  # progress MUST increase (basic/utilities/progress)
            last[:] = [value]
            params: dict[str, Any] = {"progressToken": token, "progress": value}
            if total is not None:
                params["total"] = total
            if message is not None:
                params["message"] = message
            session.send(jsonrpc.notification("notifications/progress", params))

        return progress

    # ------------------------------------------------------------------ resources
    async def _resources_list(self, session: Session, params: dict[str, Any]) -> dict[str, Any]:
        role = session.role
        return self._page([r.describe() for r in self.registry.resources.values()
                           if role is None or role.allows_resource(r.uri)], params, "resources")

    async def _templates_list(self, session: Session, params: dict[str, Any]) -> dict[str, Any]:
        role = session.role
        visible = role is None or role.allowed_resources == "all"
        return self._page([t.describe() for t in self.registry.templates] if visible else [], params, "resourceTemplates")

    def _require_uri(self, params: dict[str, Any], method: str, session: Session | None = None) -> str:
        uri = params.get("uri")
        if not isinstance(uri, str) or not uri:
            raise RpcError(INVALID_PARAMS, f"{method}: params.uri (a string) is required")
        if session is not None and session.role is not None and not session.role.allows_resource(uri):
            raise RpcError(FORBIDDEN, f"Forbidden: role {session.role.name!r} may not access {uri}",
                           {"role": session.role.name, "uri": uri})
        return uri

    def _known(self, uri: str) -> bool:
        return uri in self.registry.resources or self.registry.find_template(uri) is not None

    async def _resources_read(self, session: Session, params: dict[str, Any]) -> dict[str, Any]:
        uri = self._require_uri(params, "resources/read", session)
        resource = self.registry.resources.get(uri)
        if resource is not None:
            text = await resource.read()
            return {"contents": [{"uri": uri, "mimeType": resource.mime_type, "text": text}]}
        found = self.registry.find_template(uri)
        if found is not None:
            template, variables = found
            try:
                text = await template.read(uri, variables)
            except KeyError as exc:
                raise RpcError(RESOURCE_NOT_FOUND, f"Resource not found: {uri} ({exc.args[0] if exc.args else ''})",
                               {"uri": uri}) from None
            except ValueError as exc:
                raise RpcError(INVALID_PARAMS, f"{uri}: {exc}") from None
            return {"contents": [{"uri": uri, "mimeType": template.mime_type, "text": text}]}
        raise RpcError(RESOURCE_NOT_FOUND, f"Resource not found: {uri}", {"uri": uri})

    async def _subscribe(self, session: Session, params: dict[str, Any]) -> dict[str, Any]:
        uri = self._require_uri(params, "resources/subscribe", session)
        if not self._known(uri):
            raise RpcError(RESOURCE_NOT_FOUND, f"Resource not found: {uri}", {"uri": uri})
        session.subscriptions.add(uri)
        return {}

    async def _unsubscribe(self, session: Session, params: dict[str, Any]) -> dict[str, Any]:
        uri = self._require_uri(params, "resources/unsubscribe")
        session.subscriptions.discard(uri)
        return {}

    def subscribed(self, uri: str) -> bool:
        """True if any session subscribed to ``uri``."""
        return any(uri in s.subscriptions for s in self.sessions.values())

    def resource_updated(self, uri: str) -> bool:
        """Send ``notifications/resources/updated`` for ``uri`` if anyone subscribed; True if sent."""
        if not self.subscribed(uri):
            return False
        self.broadcast(jsonrpc.notification("notifications/resources/updated", {"uri": uri}))
        return True

    def list_changed(self, *kinds: str) -> None:
        """Send ``notifications/{kind}/list_changed`` for each of ``tools``, ``resources``, ``prompts``."""
        if not self.sessions:
            return
        for kind in kinds:
            self.broadcast(jsonrpc.notification(f"notifications/{kind}/list_changed"))

    # ------------------------------------------------------------------ prompts
    async def _prompts_list(self, session: Session, params: dict[str, Any]) -> dict[str, Any]:
        return self._page([p.describe() for p in self.registry.prompts.values()], params, "prompts")

    async def _prompts_get(self, session: Session, params: dict[str, Any]) -> dict[str, Any]:
        name = params.get("name")
        prompt = self.registry.prompts.get(name) if isinstance(name, str) else None
        if prompt is None:
            raise RpcError(INVALID_PARAMS, f"Unknown prompt: {name}")
        arguments = params.get("arguments") or {}
        if not isinstance(arguments, dict) or not all(isinstance(v, str) for v in arguments.values()):
            raise RpcError(INVALID_PARAMS, "prompts/get: arguments must be an object of strings")
        missing = [a.name for a in prompt.arguments if a.required and a.name not in arguments]
        if missing:
            raise RpcError(INVALID_PARAMS, f"prompts/get {name}: missing required argument(s): {', '.join(missing)}")
        unknown = sorted(set(arguments) - {a.name for a in prompt.arguments})
        if unknown:
            raise RpcError(INVALID_PARAMS, f"prompts/get {name}: unknown argument(s): {', '.join(unknown)}")
        try:
            description, messages = await prompt.render(arguments)
        except ValueError as exc:
            raise RpcError(INVALID_PARAMS, f"prompts/get {name}: {exc}") from None
        return {"description": description, "messages": messages}

    # ------------------------------------------------------------------ completion
    async def _complete(self, session: Session, params: dict[str, Any]) -> dict[str, Any]:
        ref = params.get("ref") or {}
        argument = params.get("argument") or {}
        if not isinstance(ref, dict) or not isinstance(argument, dict):
            raise RpcError(INVALID_PARAMS, "completion/complete: ref and argument must be objects")
        arg_name, prefix = argument.get("name"), str(argument.get("value", ""))
        if not isinstance(ref.get("name", ""), str) or not isinstance(ref.get("uri", ""), str) \
                or not isinstance(arg_name, (str, type(None))):
            raise RpcError(INVALID_PARAMS, "completion/complete: ref.name, ref.uri and argument.name must be strings")
        values: list[str] = []
        if ref.get("type") == "ref/prompt":
            prompt = self.registry.prompts.get(ref.get("name"))
            if prompt is None:
                raise RpcError(INVALID_PARAMS, f"Unknown prompt: {ref.get('name')}")
            for arg in prompt.arguments:
                if arg.name == arg_name and arg.complete:
                    values = arg.complete(prefix)
        elif ref.get("type") == "ref/resource":
            template = next((t for t in self.registry.templates if t.uri_template == ref.get("uri")), None)
            if template is None:
                raise RpcError(INVALID_PARAMS, f"Unknown resource template: {ref.get('uri')}")
            if template.complete:
                values = template.complete(arg_name, prefix)
        else:
            raise RpcError(INVALID_PARAMS, "completion/complete: ref.type must be ref/prompt or ref/resource")
        return {"completion": {"values": values[:100], "total": len(values), "hasMore": len(values) > 100}}

    # ------------------------------------------------------------------ logging
    def log_to(self, session: Session, level: str, text: str, *, logger: str | None = None) -> None:
        """Send ``notifications/message`` to one session if its level allows."""
        if level not in LOG_LEVELS or not session.initialized:
            return
        if LOG_LEVELS.index(level) < LOG_LEVELS.index(session.log_level):
            return
        params: dict[str, Any] = {"level": level, "data": text}
        if logger:
            params["logger"] = logger
        session.send(jsonrpc.notification("notifications/message", params))

    def log_all(self, level: str, text: str, *, logger: str | None = None) -> None:
        """Send ``notifications/message`` to every session whose level allows it."""
        for session in list(self.sessions.values()):
            self.log_to(session, level, text, logger=logger)


def _finite(value: Any) -> bool:
    """False if ``value`` holds a NaN or an infinity anywhere (JSON Schema ranges let NaN through)."""
    if isinstance(value, float):
        return value == value and value not in (float("inf"), float("-inf"))
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


_DURABLE = {"initialize", "resources/subscribe", "resources/unsubscribe", "logging/setLevel"}


def _fingerprint(msg: dict[str, Any]) -> str:
    try:
        return json.dumps([msg.get("method"), msg.get("params")], sort_keys=True, default=str)
    except (TypeError, ValueError):  # CBOR maps may have non-string keys
        return repr([msg.get("method"), msg.get("params")])


def _parse_deadline(value: Any) -> float | None:
    """A deadline from ``_meta``: Unix seconds (number) or an RFC 3339 string."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError("must be a number of Unix seconds or an RFC 3339 time")
    if isinstance(value, (int, float)):
        try:
            deadline = float(value)
        except OverflowError:
            raise ValueError("out of range") from None
        if deadline != deadline:
            raise ValueError("NaN is not a time")
        return deadline
    if isinstance(value, str):
        from datetime import datetime

        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            raise ValueError(f"{value!r} is not an RFC 3339 time") from None
    raise ValueError("must be a number of Unix seconds or an RFC 3339 time")


def _earliest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def stale_message(tool: str, deadline: float) -> str:
    """The refusal of a destructive command that arrived after its deadline."""
    late = time.time() - deadline
    return (f"{tool} refused: the command arrived {late:.1f} s after its deadline, so it was not executed "
            "(send it again if it is still wanted)")


def _tool_error(text: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}], "isError": True}


def _tool_result(value: Any) -> dict[str, Any]:
    if value is None:
        return {"content": [{"type": "text", "text": "ok"}], "isError": False}
    if isinstance(value, str):
        return {"content": [{"type": "text", "text": value}], "isError": False}
    text = json.dumps(value, ensure_ascii=False)
    out: dict[str, Any] = {"content": [{"type": "text", "text": text}], "isError": False}
    if isinstance(value, dict):
        out["structuredContent"] = value  # also serialised as text above, for older clients
    return out
