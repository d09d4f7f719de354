"""The gateway's MCP server: the whole fleet behind one endpoint, built on the official ``mcp`` SDK.

:class:`Gateway` is an ``mcp.server.lowlevel.Server`` whose handlers aggregate and route to a
:class:`~edge_agent.gateway.fleet.Fleet`:

- ``tools/list``, ``resources/list``, ``resources/templates/list``, ``prompts/list``: every
  online server-name's items, renamed by :mod:`.gateway_names`, in server-name order, paged
  (``page_size`` per page, opaque cursor). Device lists are cached per server-name until the
  device says ``list_changed`` or its last replica goes away; a server-name that fails to
  answer is left out of that listing and logged.
- ``tools/call``, ``resources/read``, ``prompts/get``, ``completion/complete``,
  ``resources/subscribe``/``unsubscribe``: the name or URI is mapped back and the request goes
  to the caller's replica of that server-name.

Per client session (one MCP connection: the stdio pipe, or one Streamable HTTP session) the
gateway keeps a :class:`ClientState`: which replica it is on per server-name (chosen by the
fleet's balancer on first use, kept until that replica goes away) and its resource
subscriptions. When a replica goes away, the one request in flight on it fails with an error
naming the device; a request that did not change anything (lists, reads, prompts, subscribe)
is retried once on another replica, a ``tools/call`` is not. Subscriptions move to the new
replica at once.

Notifications to clients: ``notifications/{tools,resources,prompts}/list_changed`` when a
server-name comes online or goes offline or a device says its list changed (coalesced over
50 ms); ``notifications/resources/updated`` for the client's own subscriptions, with the
gateway URI it subscribed to; progress of a forwarded request on that request's stream.
A client's ``notifications/cancelled`` cancels the handler, which makes the device session
send ``notifications/cancelled`` to the device.

Clients speaking the session-less 2026-07-28 revision are served too, sharing one state (no
session to key it on), with that revision's result shapes and ``subscriptions/listen``
(:mod:`.listen`). Rolling upgrades: a client is pinned, per server-name, to the catalog digest
it listed (:meth:`Gateway._replica_for`, docs/architecture.md "Rolling upgrades").
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import anyio
import anyio.abc
import mcp_types as types
from mcp import MCPError
from mcp.server.lowlevel import NotificationOptions, Server
from mcp.server.models import InitializationOptions
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from edge_agent import __version__
from edge_agent.client.discovery import catalog_digest
from edge_agent.gateway import tasks as gateway_tasks
from edge_agent.gateway.auth import with_device_token as _with_device_token
from edge_agent.gateway.balance import with_digest
from edge_agent.gateway.catalog import PageCache
from edge_agent.gateway.fleet import DeviceGone, DeviceUnavailable, Fleet, Replica
from edge_agent.gateway.listen import GatewayListen, modern_results
from edge_agent.gateway.names import (
    Namer,
    resource_uri,
    split_resource_uri,
    template_uri,
)

log = logging.getLogger(__name__)

STATE_KEY = "edge_agent.gateway"
RESOURCE_NOT_FOUND = -32002
"""MCP's "Resource not found" error code (server/resources, "Error Handling")."""
META_SERVER_NAME = "edge-agent/server-name"
FLUSH_DELAY = 0.05
EXPOSE_MODES = ("flat", "catalog")
"""``--expose``: every device's tools, resources and prompts (flat), or a few search tools (catalog)."""
LIST_CONCURRENCY = 128
INSTRUCTIONS = (
    "Tools, resources and prompts of the MCP servers (devices) online at an MQTT broker. "
    "Tool and prompt names are '<server-name with / as .>__<name>'; resource URIs are "
    "'mcp-mqtt://<server-name>/<original URI, percent-encoded>'. The lists change as devices come and go."
)


class ClientState:
    """What the gateway keeps per client session.

    ``connection``: the SDK's per-connection object (``None`` for the shared stateless state);
    ``bindings``: server-name → server-id of the replica this session is on;
    ``subscriptions``: gateway URI → (server-name, device URI); ``digests``: server-name →
    the catalog digest of the tools it listed (rolling upgrades: it is balanced only over
    replicas announcing that digest); ``on_updated(client, gateway_uri)``: how a subscribed
    resource's update reaches it when it has no connection (a ``subscriptions/listen`` stream).
    """

    def __init__(self, connection: Any | None):
        self.connection = connection
        self.bindings: dict[str, str] = {}
        self.subscriptions: dict[str, tuple[str, str]] = {}
        self.digests: dict[str, str] = {}
        self.on_updated: Callable[[ClientState, str], None] | None = None


class _GatewayServer(Server[Any]):
    """A lowlevel ``Server`` that announces ``listChanged`` on every transport.

    (Streamable HTTP sessions build their initialize result from
    ``create_initialization_options()`` with no arguments.)
    """

    def create_initialization_options(self, notification_options: NotificationOptions | None = None,
                                      experimental_capabilities: dict[str, dict[str, Any]] | None = None,
                                      extensions: dict[str, dict[str, Any]] | None = None) -> InitializationOptions:
        return super().create_initialization_options(
            notification_options or NotificationOptions(prompts_changed=True, resources_changed=True,
                                                        tools_changed=True),
            experimental_capabilities, extensions)

    def get_capabilities(self, notification_options: NotificationOptions | None = None,
                         experimental_capabilities: dict[str, dict[str, Any]] | None = None,
                         extensions: dict[str, dict[str, Any]] | None = None, *,
                         protocol_version: str | None = None) -> types.ServerCapabilities:
        caps = super().get_capabilities(notification_options, experimental_capabilities, extensions,
                                        protocol_version=protocol_version)
        if protocol_version not in MODERN_PROTOCOL_VERSIONS:  # MCP 2025-11-25 tasks, passed on (gateway/tasks.py)
            caps.tasks = gateway_tasks.capability()
        return caps


class _RegisterClient:
    """Server middleware: know every client session from its first message (``initialize``)."""

    def __init__(self, gateway: "Gateway"):
        self.gateway = gateway

    async def __call__(self, ctx: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
        self.gateway.client_of(ctx)
        return await call_next(ctx)


def _encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"gw:{offset}".encode()).decode()


def _decode_cursor(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        text = base64.urlsafe_b64decode(cursor.encode()).decode()
        if not text.startswith("gw:"):
            raise ValueError
        offset = int(text[3:])
        if offset < 0:
            raise ValueError
        return offset
    except (ValueError, UnicodeDecodeError):
        raise MCPError(code=types.INVALID_PARAMS, message=f"invalid cursor {cursor!r}") from None


def _dump(params: Any) -> dict[str, Any]:
    """Request params as a wire dict, without the caller's progress token (the SDK adds its own)."""
    out = params.model_dump(by_alias=True, mode="json", exclude_none=True) if params is not None else {}
    meta = out.get("_meta")
    if isinstance(meta, dict):
        meta.pop("progressToken", None)
        if not meta:
            del out["_meta"]
    return out


DEPRECATED_META = "dev.edge-agent/deprecated"
"""A tool's ``_meta`` note that it is removed or changed in the next release (passed on in lists
and added to each call's result ``_meta``)."""
TOOL_VERSION_META = "dev.edge-agent/toolVersion"


def _schema(entry: dict[str, Any]) -> tuple[Any, ...]:
    """What a caller relies on in a ``tools/list`` entry: the version and both schemas."""
    return ((entry.get("_meta") or {}).get(TOOL_VERSION_META), entry.get("inputSchema"), entry.get("outputSchema"))


def _is_lost_session(exc: MCPError) -> bool:
    """The device answered "not initialized": it restarted and forgot the gateway's session."""
    return exc.error.code == types.INVALID_REQUEST and "not initialized" in exc.error.message.lower()


class Gateway:
    """The gateway MCP server over a :class:`Fleet`. Use as ``async with Gateway(fleet) as gw:``
    then serve ``gw.server`` (see :mod:`edge_agent.gateway.command`)."""

    def __init__(self, fleet: Fleet, *, page_size: int = 500, expose: str = "flat"):
        if expose not in EXPOSE_MODES:
            raise ValueError(f"expose must be one of {', '.join(EXPOSE_MODES)}, not {expose!r}")
        self.expose = expose
        self.fleet = fleet
        self.device_tokens: Any = None  # gateway/auth.py DeviceTokens: the caller's role reaches the device
        fleet.listener = self
        self.page_size = max(1, page_size)
        self.namer = Namer()
        self.clients: list[ClientState] = []
        self.stateless = ClientState(None)
        self._dirty: set[str] = set()
        self._aggregated: dict[str, tuple[int, list[dict[str, Any]]]] = {}  # kind -> (fleet generation, list)
        self._flush_pending = False
        self._tg: anyio.abc.TaskGroup | None = None
        self.listen = GatewayListen(self)  # 2026-07-28 subscriptions/listen
        self.server = self._build_server()
        self.server.middleware.append(_RegisterClient(self))
        self.server.middleware.append(PageCache(self))  # later pages of an unchanged list: as sent before
        gateway_tasks.TaskPassthrough(self).install()

    @property
    def init_options(self) -> InitializationOptions:
        return self.server.create_initialization_options()

    async def __aenter__(self) -> "Gateway":
        self._tg = anyio.create_task_group()  # first: fleet events may arrive as soon as it connects
        await self._tg.__aenter__()
        try:
            await self.fleet.__aenter__()
        except BaseException:
            await self._close_tasks()
            raise
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.listen.close()
        try:
            await self.fleet.__aexit__(*exc)
        finally:
            await self._close_tasks()

    async def _close_tasks(self) -> None:
        tg, self._tg = self._tg, None
        if tg is not None:
            tg.cancel_scope.cancel()
            await tg.__aexit__(None, None, None)

    def _spawn(self, func: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        if self._tg is not None:
            self._tg.start_soon(func, *args)

    def _build_server(self) -> Server[Any]:
        # The handlers return the devices' results as plain dicts, passed through unchanged. The
        # SDK takes a dict result at run time (mcp.server.runner: "expected BaseModel, dict, or
        # None") but its handler annotations name only the result models: hence dict[str, Any].
        handlers: dict[str, Any] = dict(
            on_list_tools=self._list_tools, on_call_tool=self._call_tool,
            on_list_resources=self._list_resources, on_list_resource_templates=self._list_templates,
            on_read_resource=self._read_resource, on_subscribe_resource=self._subscribe,
            on_unsubscribe_resource=self._unsubscribe, on_list_prompts=self._list_prompts,
            on_get_prompt=self._get_prompt, on_completion=self._complete)
        handlers = {key: modern_results(handler) for key, handler in handlers.items()}  # 2026-07-28 shapes
        handlers["on_subscriptions_listen"] = self.listen
        instructions = INSTRUCTIONS
        if self.expose == "catalog":  # a few search tools instead of every device's (gateway/expose.py)
            from edge_agent.gateway import expose

            handlers, instructions = expose.CatalogView(self).handlers(), expose.INSTRUCTIONS
        return _GatewayServer(
            "edge-agent-gateway", version=__version__, title="edge-agent gateway", instructions=instructions,
            **handlers)

    # -- client sessions ------------------------------------------------------------------------

    def client_of(self, ctx: Any) -> ClientState:
        """The :class:`ClientState` of the connection a request came on (created on first sight)."""
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            return self.stateless  # a fresh Connection per request: nothing to stick to
        # The SDK hands handlers a per-request ServerSession; the per-connection object (with
        # its scratch ``state`` and teardown ``exit_stack``) is its ``_connection``.
        connection = getattr(ctx.session, "_connection", None)
        if connection is None:  # pragma: no cover - another SDK shape: one shared client
            return self.stateless
        state = connection.state.get(STATE_KEY)
        if state is None:
            state = connection.state[STATE_KEY] = ClientState(connection)
            self.clients.append(state)
            connection.exit_stack.push_async_callback(self._client_gone, state)
        return state

    async def _client_gone(self, client: ClientState) -> None:
        if client in self.clients:
            self.clients.remove(client)
        for name, uri in list(client.subscriptions.values()):
            self._drop_subscriber(client, name, uri)
        client.subscriptions.clear()

    def _replica_for(self, client: ClientState, server_name: str, exclude: set[str] | frozenset[str] = frozenset()
                     ) -> Replica:
        """The client's replica of ``server_name``: its bound one while usable, else one chosen
        by the balancer; either way one that announces the catalog digest the client listed
        (pinned at its first use to the newest release), never one of ``exclude``."""
        replicas = self.fleet.replicas_of(server_name)
        pin = client.digests.get(server_name)
        same = with_digest(replicas, pin)
        if pin is None or (not same and replicas):  # first use, or its release is gone (announced)
            pin = self.fleet.digest_of(server_name)
            same = with_digest(replicas, pin)
            if pin is None:
                client.digests.pop(server_name, None)
            else:
                client.digests[server_name] = pin
        other = {r.server_id for r in replicas if r not in same}
        sid = client.bindings.get(server_name)
        if sid is not None and sid not in exclude and sid not in other:
            replica = self.fleet.replica(server_name, sid)
            if replica is not None and replica.usable:
                return replica
        replica = self.fleet.choose(server_name, set(exclude) | other)
        client.bindings[server_name] = replica.server_id
        return replica

    def _unbind(self, client: ClientState, replica: Replica) -> None:
        if client.bindings.get(replica.server_name) == replica.server_id:
            del client.bindings[replica.server_name]

    # -- fleet events (FleetListener) -----------------------------------------------------------

    def names_changed(self, appeared: set[str], vanished: set[str]) -> None:
        self._mark_dirty("tools", "resources", "prompts")
        for client in self.clients:
            if any(name in appeared for name, _ in client.subscriptions.values()):
                for name in appeared:
                    self._spawn(self._resubscribe, client, name)

    def list_changed(self, server_name: str, kind: str) -> None:
        self._mark_dirty(kind)

    def replica_lost(self, replica: Replica) -> None:
        subscribers = replica.subscribers
        replica.subscribers = {}
        for client in [*self.clients, self.stateless]:
            self._unbind(client, replica)
        digest = catalog_digest(replica.presence)
        remaining = self.fleet.replicas_of(replica.server_name)
        if digest is not None and remaining and not with_digest(remaining, digest):
            # the last replica of a release left (rolling upgrade): its sessions move to the
            # newest one, so their lists change
            log.info("%s: the last replica of catalog %s left", replica.server_name, digest)
            self._mark_dirty("tools", "resources", "prompts")
        moved = {c for clients in subscribers.values() for c in clients}
        if moved and self.fleet.replicas_of(replica.server_name):
            for client in moved:
                self._spawn(self._resubscribe, client, replica.server_name)

    def resource_updated(self, replica: Replica, uri: str) -> None:
        for client in list(replica.subscribers.get(uri, ())):
            if client.connection is None and client.on_updated is None:
                continue
            for gateway_uri, (name, device_uri) in list(client.subscriptions.items()):
                if name == replica.server_name and device_uri == uri:
                    if client.on_updated is not None:
                        client.on_updated(client, gateway_uri)
                    else:
                        self._spawn(client.connection.send_resource_updated, gateway_uri)

    def _mark_dirty(self, *kinds: str) -> None:
        if self.expose == "catalog":
            return  # its lists are fixed: devices are searched, not listed
        self._dirty.update(kinds)
        if not self._flush_pending:
            self._flush_pending = True
            self._spawn(self._flush)

    async def _flush(self) -> None:
        await anyio.sleep(FLUSH_DELAY)
        kinds, self._dirty, self._flush_pending = sorted(self._dirty), set(), False
        self._spawn(self.listen.lists_changed, kinds)
        for client in list(self.clients):
            connection = client.connection
            if connection is not None and connection.initialized.is_set():
                self._spawn(self._notify_lists, connection, kinds)  # one slow client must not hold up the rest

    @staticmethod
    async def _notify_lists(connection: Any, kinds: list[str]) -> None:
        for kind in kinds:
            await connection.notify(f"notifications/{kind}/list_changed", None)

    # -- forwarding -----------------------------------------------------------------------------

    @staticmethod
    def _progress(ctx: Any) -> Callable[..., Awaitable[None]] | None:
        token = (ctx.meta or {}).get("progress_token") if ctx is not None else None
        if token is None:
            return None
        session = ctx.session

        async def progress(value: float, total: float | None, message: str | None) -> None:
            await session.report_progress(value, total, message)

        return progress

    async def _forward(self, ctx: Any, client: ClientState, server_name: str, method: str,
                       params: dict[str, Any] | None, *, retry: bool) -> tuple[dict[str, Any], Replica]:
        """Send to the client's replica of ``server_name``; fail over as the module docstring says."""
        progress = self._progress(ctx)
        gone_retries = 1 if retry else 0
        reinit_retries = 1
        unavailable: set[str] = set()
        while True:
            replica = self._replica_for(client, server_name, unavailable)
            try:
                sent = params if self.device_tokens is None else _with_device_token(
                    params, ctx, self.device_tokens, self.fleet.link.client_id if self.fleet.link else None,
                    replica.server_id)
                return await self.fleet.request(replica, method, sent, progress=progress), replica
            except DeviceUnavailable:  # never sent: any other replica will do
                self._unbind(client, replica)
                unavailable.add(replica.server_id)
                if all(r.server_id in unavailable for r in self.fleet.replicas_of(server_name)):
                    raise
                log.info("%s: no session with %s; trying another replica", method, replica.label)
            except DeviceGone:
                self._unbind(client, replica)
                if gone_retries == 0 or not self.fleet.replicas_of(server_name):
                    raise
                gone_retries -= 1
                log.info("%s: %s went offline; retrying on another replica", method, replica.label)
            except MCPError as exc:
                if not (_is_lost_session(exc) and reinit_retries):
                    raise
                reinit_retries -= 1
                log.info("%s forgot the gateway's session; re-initializing", replica.label)
                self.fleet.reset(replica)
                await anyio.sleep(0)

    def _split_name(self, gateway_name: str, what: str) -> tuple[str, str]:
        try:
            server_name, name = self.namer.split(gateway_name)
        except ValueError:
            raise MCPError(code=types.INVALID_PARAMS, message=f"unknown {what} {gateway_name!r}: not a gateway "
                           f"{what} name (<server-name with / as .>__<name>)") from None
        if not self.fleet.replicas_of(server_name):
            raise MCPError(code=types.INVALID_PARAMS,
                           message=f"unknown {what} {gateway_name!r}: server {server_name} is not online")
        return server_name, name

    def _split_uri(self, uri: str) -> tuple[str, str]:
        try:
            server_name, original = split_resource_uri(uri, self.fleet.server_names())
        except ValueError as exc:
            raise MCPError(code=types.INVALID_PARAMS, message=str(exc)) from None
        if not self.fleet.replicas_of(server_name):
            raise MCPError(code=RESOURCE_NOT_FOUND,
                           message=f"resource {uri} not found: server {server_name} is not online",
                           data={"uri": uri})
        return server_name, original

    def _rewrite_content(self, server_name: str, content: Any) -> None:
        """Map resource URIs inside tool results and prompt messages to gateway URIs."""
        for item in content if isinstance(content, list) else [content]:
            if not isinstance(item, dict):
                continue
            if item.get("type") == "resource_link" and isinstance(item.get("uri"), str):
                item["uri"] = resource_uri(server_name, item["uri"])
            elif item.get("type") == "resource" and isinstance(item.get("resource"), dict):
                res = item["resource"]
                if isinstance(res.get("uri"), str):
                    res["uri"] = resource_uri(server_name, res["uri"])

    # -- lists ----------------------------------------------------------------------------------

    async def _aggregate(self, ctx: Any, kind: str, rename: Callable[[str, dict[str, Any]], dict[str, Any]]
                         ) -> list[dict[str, Any]]:
        client = self.client_of(ctx)
        await self.fleet.ready.wait()
        generation = self.fleet.generation
        done = self._aggregated.get(kind)
        if done is not None and done[0] == generation:  # nothing changed since: no work at all
            return done[1]
        names = self.fleet.server_names()
        found: dict[str, list[dict[str, Any]]] = {}
        for name in names:  # known by catalog digest (gateway/catalog.py) or cached: no request
            items = self.fleet.cached_items(name, kind)
            if items is not None:
                found[name] = items
        limit = anyio.Semaphore(LIST_CONCURRENCY)

        async def one(name: str) -> None:
            tried: set[str] = set()
            async with limit:
                while True:
                    try:
                        replica = self._replica_for(client, name, tried)
                    except MCPError:
                        return  # no (other) replica left; the reason was logged
                    try:
                        found[name] = await self.fleet.list_items(replica, kind)
                        return
                    except DeviceGone as exc:  # that replica is unusable: try the others
                        self._unbind(client, replica)
                        tried.add(replica.server_id)
                        log.warning("%s of %s: %s", kind, name, exc)
                    except MCPError as exc:
                        log.warning("%s of %s left out: %s", kind, name, exc)
                        return

        async with anyio.create_task_group() as tg:
            for name in names:
                if name not in found:
                    tg.start_soon(one, name)
        out = [rename(name, item) for name in names for item in found.get(name, [])]
        if len(found) == len(names) and generation == self.fleet.generation:
            self._aggregated[kind] = (generation, out)
        return out

    def _page(self, items: list[dict[str, Any]], params: Any, key: str) -> dict[str, Any]:
        start = _decode_cursor(getattr(params, "cursor", None))
        end = start + self.page_size
        out: dict[str, Any] = {key: items[start:end]}
        if end < len(items):
            out["nextCursor"] = _encode_cursor(end)
        return out

    @staticmethod
    def _tag(server_name: str, item: dict[str, Any]) -> dict[str, Any]:
        item = dict(item)
        description = item.get("description")
        item["description"] = f"[{server_name}] {description}" if description else f"[{server_name}]"
        meta = item.get("_meta")
        item["_meta"] = {**(meta if isinstance(meta, dict) else {}), META_SERVER_NAME: server_name}
        return item

    def _rename_tool(self, server_name: str, item: dict[str, Any]) -> dict[str, Any]:
        item = self._tag(server_name, item)
        item["name"] = self.namer.join(server_name, str(item.get("name", "")))
        return item

    def _rename_prompt(self, server_name: str, item: dict[str, Any]) -> dict[str, Any]:
        return self._rename_tool(server_name, item)

    def _rename_resource(self, server_name: str, item: dict[str, Any]) -> dict[str, Any]:
        item = self._tag(server_name, item)
        item["uri"] = resource_uri(server_name, str(item.get("uri", "")))
        return item

    def _rename_template(self, server_name: str, item: dict[str, Any]) -> dict[str, Any]:
        item = self._tag(server_name, item)
        item["uriTemplate"] = template_uri(server_name, str(item.get("uriTemplate", "")))
        return item

    async def _list_tools(self, ctx: Any, params: Any) -> dict[str, Any]:
        client = self.client_of(ctx)
        if getattr(params, "cursor", None) is None:
            client.digests.clear()  # listing again: pinned to what this listing shows (the newest)
        out = self._page(await self._aggregate(ctx, "tools", self._rename_tool), params, "tools")
        if getattr(params, "cursor", None) is None:  # once per listing, not per page (10,000 names)
            for name in self.fleet.server_names():
                digest = self.fleet.digest_of(name)
                if digest is not None and name not in client.digests:
                    client.digests[name] = digest
        return out

    async def _list_resources(self, ctx: Any, params: Any) -> dict[str, Any]:
        return self._page(await self._aggregate(ctx, "resources", self._rename_resource), params, "resources")

    async def _list_templates(self, ctx: Any, params: Any) -> dict[str, Any]:
        return self._page(await self._aggregate(ctx, "templates", self._rename_template), params,
                          "resourceTemplates")

    async def _list_prompts(self, ctx: Any, params: Any) -> dict[str, Any]:
        return self._page(await self._aggregate(ctx, "prompts", self._rename_prompt), params, "prompts")

    # -- routed requests ------------------------------------------------------------------------

    async def _call_tool(self, ctx: Any, params: types.CallToolRequestParams) -> dict[str, Any]:
        await self.fleet.ready.wait()
        server_name, tool = self._split_name(params.name, "tool")
        client = self.client_of(ctx)
        entry = self._changed_tool(client, server_name, tool)
        wire = _dump(params)
        wire["name"] = tool
        result, _ = await self._forward(ctx, client, server_name, "tools/call", wire, retry=False)
        self._rewrite_content(server_name, result.get("content"))
        note = ((entry or {}).get("_meta") or {}).get(DEPRECATED_META)
        if note:  # a tool marked deprecated for this release: the caller hears of it with each call
            result["_meta"] = {**(result.get("_meta") or {}), DEPRECATED_META: note}
        return result

    def _tool_entry(self, digest: str | None, server_name: str, tool: str) -> dict[str, Any] | None:
        """``tool``'s ``tools/list`` entry in the catalog of ``digest`` (None: not known)."""
        catalog = self.fleet.catalogs.get(digest) if digest is not None else None
        items = catalog["tools"] if catalog is not None else self.fleet.cached_items(server_name, "tools")
        return next((t for t in items or () if isinstance(t, dict) and t.get("name") == tool), None)

    def _changed_tool(self, client: ClientState, server_name: str, tool: str) -> dict[str, Any] | None:
        """The entry of ``tool`` the call will meet; raises MCPError (-32602) when the release
        the client listed is gone and the replicas now serving have this tool changed or removed
        (its schema was never listed by this session), so the call is not routed there."""
        listed = client.digests.get(server_name)
        now = self.fleet.digest_of(server_name)
        if listed is None or now is None or listed == now or with_digest(self.fleet.replicas_of(server_name), listed):
            return self._tool_entry(listed or now, server_name, tool)
        before, after = self._tool_entry(listed, server_name, tool), self._tool_entry(now, server_name, tool)
        if before is not None and (after is None or _schema(before) != _schema(after)):
            client.digests.pop(server_name, None)
            raise MCPError(code=types.INVALID_PARAMS, message=(
                f"tool {tool} of {server_name} changed in the release now serving (catalog {listed} -> {now}); "
                "list the tools again"), data={"listed": listed, "serving": now})
        return after

    async def _get_prompt(self, ctx: Any, params: types.GetPromptRequestParams) -> dict[str, Any]:
        await self.fleet.ready.wait()
        server_name, prompt = self._split_name(params.name, "prompt")
        wire = _dump(params)
        wire["name"] = prompt
        result, _ = await self._forward(ctx, self.client_of(ctx), server_name, "prompts/get", wire, retry=True)
        for message in result.get("messages") or []:
            if isinstance(message, dict):
                self._rewrite_content(server_name, message.get("content"))
        return result

    async def _read_resource(self, ctx: Any, params: types.ReadResourceRequestParams) -> dict[str, Any]:
        await self.fleet.ready.wait()
        server_name, uri = self._split_uri(params.uri)
        wire = _dump(params)
        wire["uri"] = uri
        result, _ = await self._forward(ctx, self.client_of(ctx), server_name, "resources/read", wire, retry=True)
        for content in result.get("contents") or []:
            if isinstance(content, dict) and isinstance(content.get("uri"), str):
                content["uri"] = resource_uri(server_name, content["uri"])
        return result

    async def _complete(self, ctx: Any, params: types.CompleteRequestParams) -> dict[str, Any]:
        await self.fleet.ready.wait()
        wire = _dump(params)
        ref = wire.get("ref") or {}
        if ref.get("type") == "ref/prompt":
            server_name, ref["name"] = self._split_name(str(ref.get("name")), "prompt")
        elif ref.get("type") == "ref/resource":
            server_name, ref["uri"] = self._split_uri(str(ref.get("uri")))
        else:
            raise MCPError(code=types.INVALID_PARAMS, message="completion/complete: unknown ref type")
        result, _ = await self._forward(ctx, self.client_of(ctx), server_name, "completion/complete", wire,
                                        retry=True)
        return result

    # -- subscriptions --------------------------------------------------------------------------

    async def _subscribe(self, ctx: Any, params: types.SubscribeRequestParams) -> dict[str, Any]:
        await self.fleet.ready.wait()
        client = self.client_of(ctx)
        server_name, uri = self._split_uri(params.uri)
        client.subscriptions[params.uri] = (server_name, uri)
        try:
            await self._subscribe_on_replica(client, server_name, uri)
        except BaseException:
            client.subscriptions.pop(params.uri, None)
            raise
        return {}

    async def _subscribe_on_replica(self, client: ClientState, server_name: str, uri: str) -> None:
        replica = self._replica_for(client, server_name)
        subscribers = replica.subscribers.get(uri)
        if subscribers and replica.session is not None:
            subscribers.add(client)
            return
        _, replica = await self._forward(None, client, server_name, "resources/subscribe", {"uri": uri}, retry=True)
        replica.subscribers.setdefault(uri, set()).add(client)

    async def _resubscribe(self, client: ClientState, server_name: str) -> None:
        for gateway_uri, (name, uri) in list(client.subscriptions.items()):
            if name != server_name or client.subscriptions.get(gateway_uri) != (name, uri):
                continue
            try:
                await self._subscribe_on_replica(client, name, uri)
                log.info("subscription %s moved to %s", gateway_uri, client.bindings.get(name))
            except MCPError as exc:
                log.warning("cannot renew the subscription to %s: %s", gateway_uri, exc)

    async def _unsubscribe(self, ctx: Any, params: types.UnsubscribeRequestParams) -> dict[str, Any]:
        client = self.client_of(ctx)
        entry = client.subscriptions.pop(params.uri, None)
        if entry is not None and entry not in client.subscriptions.values():
            self._drop_subscriber(client, *entry)
        return {}

    def _drop_subscriber(self, client: ClientState, server_name: str, uri: str) -> None:
        for replica in self.fleet.replicas_of(server_name):
            subscribers = replica.subscribers.get(uri)
            if subscribers is None or client not in subscribers:
                continue
            subscribers.discard(client)
            if not subscribers:
                del replica.subscribers[uri]
                if replica.session is not None:
                    self._spawn(self._device_unsubscribe, replica, uri)

    async def _device_unsubscribe(self, replica: Replica, uri: str) -> None:
        try:
            await self.fleet.request(replica, "resources/unsubscribe", {"uri": uri})
        except MCPError as exc:
            log.debug("unsubscribe %s: %s", uri, exc)
