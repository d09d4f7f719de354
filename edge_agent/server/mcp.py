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
import copy
import json
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from edge_agent.core import args as core_args
from edge_agent.core import jsonrpc, lifecycle
from edge_agent.core import tools as core_tools
from edge_agent.core.dispatch import Dispatcher
from edge_agent.core.jsonrpc import (
    FORBIDDEN,
    INVALID_PARAMS,
    INVALID_REQUEST,
    RESOURCE_NOT_FOUND,
    RpcError,
    resource_not_found,
)
from edge_agent.core.lifecycle import LOG_LEVELS
from edge_agent.core.lifecycle import VERSIONS as SUPPORTED_VERSIONS
from edge_agent.core.results import resource_updated
from edge_agent.core.results import tool_error as _tool_error
from edge_agent.errors import ToolInputError
from edge_agent.server import modern
from edge_agent.server.inputs import normalise
from edge_agent.server.rbac import Admission, Policy, Role
from edge_agent.server.registry import Registry, ToolContext

log = logging.getLogger(__name__)

__all__ = ["LOG_LEVELS", "SUPPORTED_VERSIONS", "McpServer", "ServerInfo", "Session", "stale_message"]

# A client may bound when a command is still worth executing (Unix time in seconds, or an
# RFC 3339 string) in params._meta; tools that are not read-only refuse to run after it (plus
# McpServer.deadline_skew, for the two wall clocks). Our cloud client stamps it on every request.
DEADLINE_META = "dev.edge-agent/deadline"
LEGACY_DEADLINE_META = "io.edge-agent/deadline"  # (the name before the dev.edge-agent/ prefix)

Send = Callable[[dict[str, Any]], None]


@dataclass
class ServerInfo:
    """``serverInfo`` of the initialize result, plus ``instructions`` for the model."""

    name: str
    version: str
    title: str | None = None
    instructions: str | None = None


class Session(lifecycle.Session):
    """One MCP client's session (keyed by its mcp-client-id), on the Pi: the core's session
    (:class:`edge_agent.core.lifecycle.Session`: state, versions, subscriptions, log level,
    in-flight requests) plus ``send(message)``, the reply cache and the RBAC role (None: no
    role check at all)."""

    def __init__(self, id: str, send: Send, *, state: str = lifecycle.NEW, protocol_version: str | None = None,
                 client_info: dict[str, Any] | None = None, client_capabilities: dict[str, Any] | None = None,
                 log_level: str = "warning", subscriptions: set[str] | None = None, role: Role | None = None):
        super().__init__(id)
        self.send = send
        self.state = state
        self.protocol_version = protocol_version
        self.client_info = client_info or {}
        self.client_capabilities = client_capabilities or {}
        self.log_level = log_level
        self.subscriptions = set(subscriptions or ())
        self.replies: OrderedDict[Any, tuple[str, dict[str, Any]]] = OrderedDict()
        self.role = role
        self.subject: str | None = None  # who a verified token says this is (None: unauthenticated)
        self.expires: float | None = None  # when that token expires (Unix s)
        # 2026-07-28: a session-less client (requests carry their version in _meta); its
        # open subscriptions/listen streams by listen id
        self.modern = False
        self.listens: dict[Any, modern.Listen] = {}

    def snapshot(self) -> dict[str, Any]:
        """What survives an agent restart (JSON-serialisable)."""
        return {"state": self.state, "protocol_version": self.protocol_version, "client_info": self.client_info,
                "client_capabilities": self.client_capabilities, "log_level": self.log_level,
                "subscriptions": sorted(self.subscriptions),
                **({"subject": self.subject, "expires": self.expires,
                    "role": self.role.name if self.role else None} if self.subject is not None else {})}


class McpServer(Dispatcher):
    """The Pi's MCP server: the core's request engine (:class:`edge_agent.core.dispatch.Dispatcher`:
    framing, the method table, lifecycle, in-flight and cancellation rules, tool calls) with the
    CPython extras on top: a :class:`Registry` of tools, resources, templates and prompts, full
    JSON Schema for tools outside the core's subset, pagination, completion, logging, a reply
    cache, stale-command deadlines and RBAC.

    ``page_size``: items per ``*/list`` page (cursor pagination). ``broadcast``: sends a
    notification to every client (set by the transport; a no-op until then).
    ``on_tool_error(tool_name, exc)``: called when a tool handler raises something other than
    a :class:`ToolInputError` (the runtime uses it to mark the driver failed).
    """

    max_inflight = 64  # requests per session being answered; more: -32004 (core.dispatch)

    def __init__(self, registry: Registry, info: ServerInfo, *, page_size: int = 50,
                 broadcast: Send | None = None,
                 on_tool_error: Callable[[str, BaseException], None] | None = None,
                 reply_cache: int = 64,
                 on_session_change: Callable[[Session, bool], None] | None = None,
                 policy: Policy | None = None):
        super().__init__()
        self.registry = registry
        self.policy = policy or Policy.open()
        self.reply_cache = max(0, reply_cache)
        self.on_session_change = on_session_change
        self.info = info
        self.page_size = max(1, page_size)
        self.broadcast: Send = broadcast or (lambda msg: None)
        self.on_tool_error = on_tool_error
        self.sessions: dict[str, Session] = {}
        self._validators: dict[str, Any] = {}
        # MCP 2025-11-25 tasks: the device's TaskManager (edge_agent.device.tasks) sets itself
        # here; it serves tasks/* and task-augmented tools/call. None: no tasks capability.
        self.tasks: Any = None
        # the device's durable reply cache (edge_agent.device.journal.ReplyJournal), or None
        self.reply_store: Any = None
        # seconds a _meta deadline is stretched by: the client's and this device's clocks differ
        self.deadline_skew = 2.0
        # awaited before each answer is sent (the device: a changed session is on disk first), or None
        self.before_send: Callable[[Session], Awaitable[None]] | None = None
        add = self.table.add
        add("logging/setLevel", self.set_level)
        add("tools/list", self._tools_list)
        add("tools/call", self._tools_call)
        add("resources/list", self._resources_list)
        add("resources/templates/list", self._templates_list)
        add("resources/read", self._resources_read)
        add("resources/subscribe", self._subscribe)
        add("resources/unsubscribe", self._unsubscribe)
        add("prompts/list", self._prompts_list)
        add("prompts/get", self._prompts_get)
        add("completion/complete", self._complete)
        # MCP 2026-07-28 (edge_agent.server.modern): the session-less revision, side by side
        add("server/discover", self._discover, capability=None, before_init=True, durable=False, access="open")
        add("subscriptions/listen", self._listen, capability=None, before_init=False, durable=False, access="read")
        self.confirmations = modern.Confirmations()

    @property
    def server_info(self) -> dict[str, Any]:  # type: ignore[override]
        info: dict[str, Any] = {"name": self.info.name, "version": self.info.version}
        if self.info.title:
            info["title"] = self.info.title
        return info

    @property
    def instructions(self) -> str | None:  # type: ignore[override]
        return self.info.instructions

    # ------------------------------------------------------------------ sessions
    def admit(self, session_id: str, params: Any) -> Admission:
        """Who the ``initialize`` with ``params`` from ``session_id`` is from: a signed token in
        ``params._meta`` gives the role and subject (:meth:`Policy.admit`), else the client-id
        rules. A re-initialize of a live session is admitted only for the same subject.

        Raises:
            RpcError: -32003 the token is missing (``[auth] required``) or refused, or a live
                session of ``session_id`` belongs to another subject.
        """
        from edge_agent.server.tokens import TokenError

        try:
            admission = self.policy.admit(session_id, params if isinstance(params, dict) else {})
        except TokenError as exc:
            raise RpcError(FORBIDDEN, f"Unauthorized: {exc}", {"reason": "token"}) from None
        old = self.sessions.get(session_id)
        if old is not None and old.subject is not None and old.subject != admission.subject:
            raise RpcError(FORBIDDEN, "Unauthorized: this client id has a live session of another subject",
                           {"reason": "subject"})
        return admission

    def open_session(self, session_id: str, send: Send, params: dict[str, Any] | None = None,
                     admission: Admission | None = None) -> Session:
        """Create (or replace, for a re-initialize) the session of ``session_id``, for the
        ``admission`` :meth:`admit` gave (default: :meth:`admit` of ``params``, the
        ``initialize`` params; the client-id rules when there are none).

        Raises:
            RpcError: as :meth:`admit`; the live session is then left untouched.
        """
        if admission is None:
            admission = self.admit(session_id, params)
        old = self.sessions.get(session_id)
        if old is not None:
            self.cancel_all(old)
        session = Session(session_id, send, role=admission.role)
        session.subject, session.expires = admission.subject, admission.expires
        self.sessions[session_id] = session
        return session

    def restore_session(self, session_id: str, data: dict[str, Any], send: Send) -> Session:
        """Re-create a session from :meth:`Session.snapshot` (after an agent restart)."""
        session = Session(session_id, send, state=data.get("state", lifecycle.READY),
                          protocol_version=data.get("protocol_version"), client_info=data.get("client_info") or {},
                          client_capabilities=data.get("client_capabilities") or {},
                          log_level=data.get("log_level", "warning"),
                          subscriptions=set(data.get("subscriptions") or ()),
                          role=self.policy.role_for(session_id))
        if isinstance(data.get("subject"), str):  # authenticated by a token: its role, until it expires
            session.subject, session.expires = data["subject"], data.get("expires")
            session.role = self.policy.role_for_claims([data["role"]] if isinstance(data.get("role"), str) else [])
        self.sessions[session_id] = session
        return session

    def close_session(self, session_id: str) -> bool:
        """Drop a session (client left): cancel its in-flight requests. True if it existed."""
        session = self.sessions.pop(session_id, None)
        if session is None:
            return False
        self.cancel_all(session)
        self.changed(session, closed=True)
        return True

    def end_all(self, *, forget: bool) -> None:
        """Shutdown: cancel every session's requests and drop the sessions; ``forget`` also
        reports them closed (so a persisted copy is deleted)."""
        for sid in list(self.sessions):
            session = self.sessions.pop(sid)
            self.cancel_all(session)
            if forget:
                self.changed(session, closed=True)

    def capabilities(self) -> dict[str, Any]:
        caps = self.table.capabilities({"tools": {"listChanged": True}, "resources": {"listChanged": True},
                                        "prompts": {"listChanged": True}})
        if self.tasks is not None:
            caps["tasks"] = self.tasks.capability()
        return caps

    # ------------------------------------------------------------------ core hooks
    async def emit(self, session: Session, msg: dict[str, Any]) -> None:  # type: ignore[override]
        if self.before_send is not None:  # e.g. the session's persisted copy on disk first
            await self.before_send(session)
        session.send(msg)

    def new_flag(self) -> threading.Event:  # type: ignore[override]
        return threading.Event()

    def changed(self, session: Session, closed: bool = False) -> None:  # type: ignore[override]
        if self.on_session_change is not None:
            self.on_session_change(session, closed)

    def authorize(self, session: Session, method: Any) -> None:  # type: ignore[override]
        if session.expires is not None and method.name != "initialize" and time.time() > session.expires + getattr(self.policy.verifier, "clock_skew", 30.0):
            raise RpcError(FORBIDDEN, "Unauthorized: the session's token has expired; initialize again with a fresh one",
                           {"reason": "expired"})
        role = session.role
        if role is not None and not role.allows_method(method.name, method.access):
            raise RpcError(FORBIDDEN, f"Forbidden: role {role.name!r} may not call {method.name}",
                           {"role": role.name, "method": method.name})

    async def replay(self, session: Session, msg: dict[str, Any]) -> bool:  # type: ignore[override]
        cached = session.replies.get(msg["id"])
        if cached is not None and cached[0] == _fingerprint(msg):
            log.info("duplicate of request %r from %s answered from the reply cache", msg["id"], session.id)
            session.send(cached[1])
            return True
        if self.reply_store is not None and self.reply_store.replay(session.id, msg):
            return True
        return False

    def answered(self, session: Session, msg: dict[str, Any], reply: dict[str, Any]) -> None:  # type: ignore[override]
        if self.reply_cache and msg["method"] != "initialize":
            session.replies[msg["id"]] = (_fingerprint(msg), reply)
            while len(session.replies) > self.reply_cache:
                session.replies.popitem(last=False)
        if self.reply_store is not None:
            self.reply_store.record(session.id, msg, reply)

    def log_error(self, method: str, exc: BaseException) -> None:
        log.error("internal error in %s", method, exc_info=exc)

    async def handle(self, session: Session, payload: bytes | str | dict[str, Any], *,  # type: ignore[override]
                     deadline: float | None = None) -> None:
        """Handle one incoming message of ``session`` (see :meth:`Dispatcher.handle`).
        ``deadline``: Unix time (s) after which the transport says the message expired (MQTT
        Message Expiry); destructive tools called after it are refused. A request that carries
        its own signed token (:meth:`per_request`) is answered for that token's subject and role."""
        if self.policy.verifier is not None and isinstance(payload, dict):
            acting = self.per_request(session, payload)
            if acting is None:
                return
            session = acting
        await super().handle(session, payload, deadline)

    PER_REQUEST_METHODS = frozenset(("tools/call", "tools/list", "resources/read", "resources/list",
                                     "resources/templates/list", "prompts/get", "prompts/list",
                                     "completion/complete"))

    def per_request(self, session: Session, msg: dict[str, Any]) -> Session | None:
        """``session`` as the subject of a token in the request's own ``params._meta`` (a
        gateway's device token for its caller, or any client's under MCP 2026-07-28): a copy
        with that token's role, subject and expiry, for one request of a method that changes
        no session state (:data:`PER_REQUEST_METHODS`); the session itself when there is no
        token. A refused token is answered -32003 at once, and None returned (nothing to do)."""
        from edge_agent.server.tokens import TOKEN_META, TokenError

        params = msg.get("params")
        meta = params.get("_meta") if isinstance(params, dict) else None
        if not isinstance(meta, dict) or TOKEN_META not in meta or msg.get("method") not in self.PER_REQUEST_METHODS \
                or "id" not in msg:
            return session
        try:
            admission = self.policy.admit(session.id, params)
        except TokenError as exc:
            session.send(jsonrpc.error(msg["id"], RpcError(FORBIDDEN, f"Unauthorized: {exc}", {"reason": "token"})))
            return None
        acting = copy.copy(session)  # shares the in-flight table, subscriptions, replies and sender
        acting.role, acting.subject, acting.expires = admission.role, admission.subject, admission.expires
        return acting

    async def answer(self, session: Session, req: Any) -> dict[str, Any] | None:  # type: ignore[override]
        """The core's answer, with the session-less revision (MCP 2026-07-28) on top: a request
        whose ``params._meta`` names a 2026-07-28 version needs no ``initialize`` (its client
        capabilities and info come with it), an unknown version is -32022, and its result gets
        ``resultType`` (and ``ttlMs``/``cacheScope`` on cacheable methods); a resource not
        found is -32602 there. Handshake-era requests are answered exactly as before."""
        try:
            version = modern.modern_version(req.params)
        except RpcError as err:
            return jsonrpc.error(req.id, err)
        if version is None and not session.modern:
            return await super().answer(session, req)
        if version is not None:
            meta = req.params["_meta"]
            session.modern = True
            session.protocol_version = version
            if session.state != lifecycle.READY:
                session.state = lifecycle.READY
            caps, info = meta.get(modern.CLIENT_CAPABILITIES_META), meta.get(modern.CLIENT_INFO_META)
            if isinstance(caps, dict):
                session.client_capabilities = caps
            if isinstance(info, dict):
                session.client_info = info
        reply = await super().answer(session, req)
        if reply is not None:
            result = reply.get("result")
            if isinstance(result, dict):
                modern.finish_result(req.method, result)
            elif isinstance(reply.get("error"), dict) and reply["error"].get("code") == RESOURCE_NOT_FOUND:
                reply["error"]["code"] = INVALID_PARAMS
        return reply

    async def _discover(self, session: Session, params: dict[str, Any], req: Any = None) -> dict[str, Any]:
        """server/discover (MCP 2026-07-28): every version we serve, capabilities, identity."""
        return modern.discover_result(self.server_info, self.capabilities(), self.instructions)

    async def _listen(self, session: Session, params: dict[str, Any], req: Any = None) -> dict[str, Any]:
        """subscriptions/listen (MCP 2026-07-28 basic/patterns/subscriptions): acknowledge the
        honored filter, then send the list changes and resource updates it asked for, tagged
        with its id, until the client cancels it (no response) or the server ends it
        (:meth:`end_listens`: a graceful result)."""
        if not session.modern:
            raise RpcError(INVALID_REQUEST, "subscriptions/listen needs the 2026-07-28 request _meta "
                           "(io.modelcontextprotocol/protocolVersion); use resources/subscribe")
        flags, uris = modern.listen_filter(params)
        for uri in uris:
            self._require_uri({"uri": uri}, "subscriptions/listen", session)
            if not self._known(uri):
                raise resource_not_found(uri)
        listen_id = req.id if req is not None else None
        listen = modern.Listen(listen_id, flags, set(uris), asyncio.Event())
        session.listens[listen_id] = listen
        try:
            session.send(modern.acknowledged(listen))
            await listen.done.wait()
        finally:
            if session.listens.get(listen_id) is listen:
                del session.listens[listen_id]
        return {"_meta": {modern.SUBSCRIPTION_ID_META: listen_id}}

    async def end_listens(self, timeout: float = 1.0) -> int:
        """End every open ``subscriptions/listen`` stream gracefully, as at a clean shutdown:
        each gets its result (the spec's "Graceful Closure"); waits up to ``timeout`` s for
        them to be sent. Returns how many streams there were."""
        tasks = []
        for session in self.sessions.values():
            for listen in session.listens.values():
                listen.done.set()
            tasks += [task for task, req in session.inflight.values()
                      if getattr(req, "method", None) == "subscriptions/listen"]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        return len(tasks)

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
    async def _tools_list(self, session: Session, params: dict[str, Any], req: Any = None) -> dict[str, Any]:
        role = session.role
        return self._page([t.describe() for t in self.registry.tools.values()
                           if role is None or _may_call(role, t)], params, "tools")

    def _problem(self, name: str, schema: Any, arguments: dict[str, Any]) -> str | None:
        """Why ``arguments`` do not fit ``schema``: the core's checker for the JSON Schema subset
        device tools use (and the board uses); the full validator (imported only then) for
        anything beyond it."""
        if core_args.supported(schema):
            return core_args.check(schema, arguments)
        from jsonschema import Draft202012Validator

        validator = self._validators.get(name)
        if validator is None or validator.schema is not schema:
            Draft202012Validator.check_schema(schema)
            validator = self._validators[name] = Draft202012Validator(schema)
        problems = sorted(validator.iter_errors(arguments), key=lambda e: list(e.path))
        return "; ".join(f"{'.'.join(str(x) for x in p.path) or 'arguments'}: {p.message}" for p in problems) or None

    async def _tools_call(self, session: Session, params: dict[str, Any], req: Any = None) -> dict[str, Any]:
        name, arguments = core_tools.name_and_arguments(params)
        tool = self.registry.tools.get(name)
        if tool is None:
            raise core_tools.unknown(name)
        if session.role is not None and not _may_call(session.role, tool):
            raise RpcError(FORBIDDEN, f"Forbidden: role {session.role.name!r} may not call tool {name}",
                           {"role": session.role.name, "tool": name})
        try:
            problem = self._problem(name, tool.input_schema, arguments)
        except Exception as exc:  # a driver declared a broken schema: a bug, reported clearly
            return _tool_error(f"{name}: the tool's input schema is invalid ({getattr(exc, 'message', exc)})")
        refused = core_tools.refusal(name, problem, arguments)
        if refused is not None:
            return refused
        try:  # 1.0 for an integer, a subnormal float: the caller's mistake, not a driver fault
            arguments = normalise(tool.input_schema, arguments)
        except ValueError as exc:
            return _tool_error(f"{name}: {exc}")
        if tool.unavailable:
            return _tool_error(f"{name} is unavailable: {tool.unavailable}")
        meta = params.get("_meta") or {}
        if not isinstance(meta, dict):
            raise RpcError(INVALID_PARAMS, "tools/call: params._meta must be an object")
        # the earlier of: the MQTT Message Expiry as it reached us (received + what was left; a
        # redelivery after a link cut may carry the whole interval again), and the client's
        # absolute deadline in _meta plus the clock-skew allowance; checked for every tool that
        # is not read-only however late the call got (broker queue, DUP redelivery, a redelivery
        # after an agent crash), and again by the runtime once the driver is free
        deadline = req.deadline if req is not None else None
        key = DEADLINE_META if DEADLINE_META in meta else LEGACY_DEADLINE_META
        try:
            stamped = _parse_deadline(meta.get(key))
        except ValueError as exc:
            return _tool_error(f"{name}: bad {key}: {exc}")
        deadline = _earliest(deadline, stamped + self.deadline_skew if stamped is not None else None)
        destructive = not (tool.annotations or {}).get("readOnlyHint")  # (anything that moves or changes)
        if deadline is not None and destructive and time.time() > deadline:
            return _tool_error(stale_message(name, deadline))
        if tool.meta.get(modern.CONFIRM_META) and session.modern \
                and isinstance(session.client_capabilities.get("elicitation"), dict):
            asked = self._confirmation(session, name, arguments, params)
            if asked is not None:
                return asked
        if self.tasks is not None:  # MCP 2025-11-25 tasks: params.task starts it in the background
            self.tasks.check_call(tool, params.get("task"))
            if params.get("task") is not None:
                return await self.tasks.create(session, tool, arguments, params["task"], meta)
        if self.reply_store is not None and req is not None:  # a non-idempotent call's started mark, on disk
            await self.reply_store.begin(session.id, {"id": req.id, "method": req.method, "params": req.params})
        cancelled = req.cancelled if req is not None else threading.Event()
        request_level = meta.get(modern.LOG_LEVEL_META) if session.modern else None
        ctx = ToolContext(
            session_id=session.id,
            progress=self.progress_fn(session, meta.get("progressToken")),
            cancelled=cancelled,
            log=lambda level, text: self.log_to(session, level, text, logger=name, request_level=request_level),
            meta=meta,
            deadline=deadline if destructive else None,
            subject=session.subject,
        )
        try:
            return await core_tools.invoke(name, lambda: tool.handler(arguments, ctx), self._tool_failed)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    def _confirmation(self, session: Session, name: str, arguments: dict[str, Any],
                      params: dict[str, Any]) -> dict[str, Any] | None:
        """For a tool whose ``_meta`` has ``dev.edge-agent/confirm`` and a client that can be
        asked (2026-07-28 with ``elicitation``): None once the user accepted (the retry carries
        our signed ``requestState`` and ``inputResponses.confirm``), else the
        ``InputRequiredResult`` that asks, or a tool error when the user declined. Raises
        RpcError(-32602) for a ``requestState`` that is not this call's."""
        state = params.get("requestState")
        if state is not None and self.confirmations.check(state, name, arguments, session.id):
            if modern.confirmed(params.get("inputResponses")):
                return None
            return _tool_error(f"{name} was not confirmed: nothing was done")
        return modern.confirm_request(name, arguments, self.confirmations.state(name, arguments, session.id))

    def _tool_failed(self, name: str, exc: BaseException) -> None:
        if self.on_tool_error is not None and not isinstance(exc, ToolInputError):
            self.on_tool_error(name, exc)

    def progress_fn(self, session: Session | Callable[[], Session | None], token: Any,
                    meta: dict[str, Any] | None = None) -> Callable[..., None]:
        """``progress(value, total=None, message=None)`` sending ``notifications/progress`` for
        ``token`` to ``session`` (MCP 2025-11-25 basic/utilities/progress: a value not above the
        last one is not sent, progress MUST increase). ``session`` and ``token`` may be
        callables asked at each call (a task's client may be away, then back); ``meta`` goes
        into each notification's ``_meta`` (a task's related-task id). No token: a no-op."""
        if token is None:
            return lambda *a, **k: None
        last: list[float] = []

        def progress(value: float, total: float | None = None, message: str | None = None) -> None:
            target = session() if callable(session) else session
            progress_token = token() if callable(token) else token
            if target is None or progress_token is None or (last and value <= last[0]):
                return
            last[:] = [value]
            params: dict[str, Any] = {"progressToken": progress_token, "progress": value}
            if meta:
                params["_meta"] = meta
            if total is not None:
                params["total"] = total
            if message is not None:
                params["message"] = message
            target.send(jsonrpc.notification("notifications/progress", params))

        return progress

    # ------------------------------------------------------------------ resources
    async def _resources_list(self, session: Session, params: dict[str, Any], req: Any = None) -> dict[str, Any]:
        role = session.role
        return self._page([r.describe() for r in self.registry.resources.values()
                           if role is None or role.allows_resource(r.uri)], params, "resources")

    async def _templates_list(self, session: Session, params: dict[str, Any], req: Any = None) -> dict[str, Any]:
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

    async def _resources_read(self, session: Session, params: dict[str, Any], req: Any = None) -> dict[str, Any]:
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
        raise resource_not_found(uri)

    async def _subscribe(self, session: Session, params: dict[str, Any], req: Any = None) -> dict[str, Any]:
        uri = self._require_uri(params, "resources/subscribe", session)
        if not self._known(uri):
            raise resource_not_found(uri)
        session.subscriptions.add(uri)
        return {}

    async def _unsubscribe(self, session: Session, params: dict[str, Any], req: Any = None) -> dict[str, Any]:
        uri = self._require_uri(params, "resources/unsubscribe")
        session.subscriptions.discard(uri)
        return {}

    def subscribed(self, uri: str) -> bool:
        """True if any session subscribed to ``uri`` (``resources/subscribe``, or a
        ``subscriptions/listen`` stream naming it)."""
        for s in self.sessions.values():  # (a loop: called after every actuation, with many sessions)
            if uri in s.subscriptions:
                return True
            if s.listens:
                for listen in s.listens.values():
                    if uri in listen.uris:
                        return True
        return False

    def resource_updated(self, uri: str) -> bool:
        """Send ``notifications/resources/updated`` for ``uri`` if anyone subscribed; True if
        sent: once on the capability topic for handshake-era subscribers, and to each
        2026-07-28 ``subscriptions/listen`` stream that names it (tagged, on its client's RPC topic)."""
        legacy = sent = False
        for s in list(self.sessions.values()):
            if uri in s.subscriptions:
                legacy = True
            if s.listens:
                for listen in list(s.listens.values()):
                    if uri in listen.uris:
                        s.send(listen.tag("notifications/resources/updated", {"uri": uri}))
                        sent = True
        if legacy:
            self.broadcast(resource_updated(uri))
        return legacy or sent

    def list_changed(self, *kinds: str) -> None:
        """Send ``notifications/{kind}/list_changed`` for each of ``tools``, ``resources``,
        ``prompts``: on the capability topic when a handshake-era session is open, and to each
        2026-07-28 ``subscriptions/listen`` stream that asked for that kind."""
        if not self.sessions:
            return
        legacy = False
        for s in list(self.sessions.values()):
            if not s.modern:
                legacy = True
            elif s.listens:
                for listen in list(s.listens.values()):
                    for kind in kinds:
                        if modern.LIST_FLAGS.get(kind) in listen.flags:
                            s.send(listen.tag(f"notifications/{kind}/list_changed"))
        if legacy:
            for kind in kinds:
                self.broadcast(jsonrpc.notification(f"notifications/{kind}/list_changed"))

    # ------------------------------------------------------------------ prompts
    async def _prompts_list(self, session: Session, params: dict[str, Any], req: Any = None) -> dict[str, Any]:
        return self._page([p.describe() for p in self.registry.prompts.values()], params, "prompts")

    async def _prompts_get(self, session: Session, params: dict[str, Any], req: Any = None) -> dict[str, Any]:
        name = params.get("name")
        prompt = self.registry.prompts.get(name) if isinstance(name, str) else None
        if prompt is None:
            raise RpcError(INVALID_PARAMS, f"Unknown prompt: {name}")
        arguments = params.get("arguments") or {}
        if not isinstance(arguments, dict) or not all(isinstance(v, str) for v in arguments.values()):
            raise RpcError(INVALID_PARAMS, "prompts/get: arguments must be an object of strings")
        role = session.role
        if role is not None and role.allowed_resources != "all":
            # a prompt embeds what it reads: the role must be allowed every one of those resources
            reads = prompt.reads(arguments) if prompt.reads is not None else None
            denied = [u for u in reads if not role.allows_resource(u)] if reads is not None else ["(undeclared)"]
            if denied:
                raise RpcError(FORBIDDEN, f"Forbidden: role {role.name!r} may not read what prompt {name} embeds "
                               f"({', '.join(denied[:5])})", {"role": role.name, "prompt": name, "uris": denied[:20]})
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
    async def _complete(self, session: Session, params: dict[str, Any], req: Any = None) -> dict[str, Any]:
        ref = params.get("ref") or {}
        argument = params.get("argument") or {}
        if not isinstance(ref, dict) or not isinstance(argument, dict):
            raise RpcError(INVALID_PARAMS, "completion/complete: ref and argument must be objects")
        arg_name, prefix = argument.get("name"), str(argument.get("value", ""))
        ref_name, ref_uri = ref.get("name"), ref.get("uri")
        if not isinstance(ref_name, (str, type(None))) or not isinstance(ref_uri, (str, type(None))) \
                or not isinstance(arg_name, (str, type(None))):
            raise RpcError(INVALID_PARAMS, "completion/complete: ref.name, ref.uri and argument.name must be strings")
        values: list[str] = []
        if ref.get("type") == "ref/prompt":
            prompt = self.registry.prompts.get(ref_name) if ref_name is not None else None
            if prompt is None:
                raise RpcError(INVALID_PARAMS, f"Unknown prompt: {ref_name}")
            for arg in prompt.arguments:
                if arg.name == arg_name and arg.complete:
                    values = arg.complete(prefix)
        elif ref.get("type") == "ref/resource":
            template = next((t for t in self.registry.templates if t.uri_template == ref_uri), None)
            if template is None:
                raise RpcError(INVALID_PARAMS, f"Unknown resource template: {ref_uri}")
            if template.complete and arg_name is not None:
                values = template.complete(arg_name, prefix)
        else:
            raise RpcError(INVALID_PARAMS, "completion/complete: ref.type must be ref/prompt or ref/resource")
        return {"completion": {"values": values[:100], "total": len(values), "hasMore": len(values) > 100}}

    # ------------------------------------------------------------------ logging
    def log_to(self, session: Session, level: str, text: str, *, logger: str | None = None,
               request_level: Any = None) -> None:
        """Send ``notifications/message`` to one session if its level allows. A 2026-07-28
        session gets it only within a request that opted in with ``request_level``
        (``_meta["io.modelcontextprotocol/logLevel"]``) at or below ``level``."""
        if session.modern:
            if not modern.level_allows(request_level, level):
                return
        elif not lifecycle.log_allowed(session, level):
            return
        params: dict[str, Any] = {"level": level, "data": text}
        if logger:
            params["logger"] = logger
        session.send(jsonrpc.notification("notifications/message", params))

    def log_all(self, level: str, text: str, *, logger: str | None = None) -> None:
        """Send ``notifications/message`` to every session whose level allows it."""
        for session in list(self.sessions.values()):
            self.log_to(session, level, text, logger=logger)



def _may_call(role: Role, tool: Any) -> bool:
    """RBAC on a tool: its name and annotations, and for a tool mirroring resources
    (``Tool.reads``: the sensor tools) at least one of them readable."""
    return role.allows_tool(tool.name, tool.annotations) and (
        not tool.reads or any(role.allows_resource(uri) for uri in tool.reads))


# json.dumps(..., sort_keys=True, default=str) without building an encoder per call
_fingerprint_encode = json.JSONEncoder(sort_keys=True, default=str).encode


def _fingerprint(msg: dict[str, Any]) -> str:
    try:
        return _fingerprint_encode([msg.get("method"), msg.get("params")])
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
