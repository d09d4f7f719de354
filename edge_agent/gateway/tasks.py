"""MCP tasks (2025-11-25 ``basic/utilities/tasks``) through the gateway: passed on to the device.

A task runs on the device that owns the tool; the gateway keeps no task state. It:

- declares ``capabilities.tasks`` (list, cancel, ``requests.tools.call``) to handshake-era
  clients (:func:`capability`);
- passes a task-augmented ``tools/call`` (``params.task``) to the caller's replica of the
  tool's server-name and answers with the device's ``CreateTaskResult``, its ``taskId``
  replaced by a gateway task id that names the replica (:func:`gateway_task_id`: opaque,
  base64url of ``[server-name, server-id, device task id]``), so later ``tasks/*`` reach the
  same replica whichever replica the client is on by then;
- serves ``tasks/get``, ``tasks/result``, ``tasks/cancel`` by sending them to that replica (the
  ``io.modelcontextprotocol/related-task`` ``_meta`` of a result carries the gateway id) and
  ``tasks/list`` by asking every online replica and joining the answers (one page; a device
  that does not serve tasks is left out).

The SDK's server checks a ``tools/call`` result against ``CallToolResult``, so the
task-augmented call is answered from a server middleware (:class:`TaskPassthrough`), which owns
its result; the device leg uses :mod:`edge_agent.client.tasks`.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import mcp_types as types
from mcp import MCPError

from edge_agent.client.tasks import RELATED, raw_request

if TYPE_CHECKING:
    from edge_agent.gateway.fleet import Replica
    from edge_agent.gateway.server import Gateway

log = logging.getLogger(__name__)

TASK_METHODS = ("tasks/get", "tasks/result", "tasks/cancel", "tasks/list")
LIST_CONCURRENCY = 64  # replicas asked at once by tasks/list


def capability() -> types.ServerTasksCapability:
    """``capabilities.tasks`` of the gateway's initialize result."""
    return types.ServerTasksCapability(
        list=types.TasksListCapability(), cancel=types.TasksCancelCapability(),
        requests=types.ServerTasksRequestsCapability(tools=types.TasksToolsCapability(call=types.TasksCallCapability())))


def gateway_task_id(server_name: str, server_id: str, task_id: str) -> str:
    """The id a gateway client sees for the device task ``task_id`` of that replica."""
    raw = json.dumps([server_name, server_id, task_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def split_task_id(gateway_id: str) -> tuple[str, str, str]:
    """``(server-name, server-id, device task id)`` of a gateway task id. Raises MCPError(-32602)."""
    try:
        padded = gateway_id + "=" * (-len(gateway_id) % 4)
        name, sid, tid = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if not all(isinstance(x, str) for x in (name, sid, tid)):
            raise ValueError
        return name, sid, tid
    except (ValueError, TypeError, UnicodeDecodeError):
        raise MCPError(code=types.INVALID_PARAMS, message=f"Failed to retrieve task: Task not found ({gateway_id!r} "
                                                          "is no task id of this gateway)") from None


class TaskPassthrough:
    """Server middleware and ``tasks/*`` handlers of one :class:`Gateway` (see the module
    docstring). :meth:`install` adds them to ``gateway.server``."""

    def __init__(self, gateway: Gateway):
        self.gateway = gateway

    def install(self) -> None:
        server = self.gateway.server
        server.middleware.append(self)
        server.add_request_handler("tasks/get", types.GetTaskRequestParams, self._get)
        server.add_request_handler("tasks/result", types.GetTaskPayloadRequestParams, self._result)
        server.add_request_handler("tasks/cancel", types.CancelTaskRequestParams, self._cancel)
        server.add_request_handler("tasks/list", types.PaginatedRequestParams, self._list)

    async def __call__(self, ctx: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
        params = ctx.params if isinstance(getattr(ctx, "params", None), dict) else None
        if ctx.method != "tools/call" or params is None or params.get("task") is None:
            return await call_next(ctx)
        return await self._call_tool(ctx, params)

    async def _call_tool(self, ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
        gw = self.gateway
        await gw.fleet.ready.wait()
        server_name, tool = gw._split_name(str(params.get("name")), "tool")
        wire = {k: v for k, v in params.items() if k != "name"}
        wire["name"] = tool
        replica = gw._replica_for(gw.client_of(ctx), server_name)
        session = await gw.fleet.open(replica)
        raw = await self._ask(replica, session, "tools/call", wire)
        task = raw.get("task")
        if not isinstance(task, dict) or not isinstance(task.get("taskId"), str):
            return raw  # a device that does not do tasks answered the call normally (spec: it may)
        task["taskId"] = gateway_task_id(replica.server_name, replica.server_id, task["taskId"])
        log.info("task %s: %s started on %s", task["taskId"], tool, replica.label)
        return raw

    async def _ask(self, replica: Replica, session: Any, method: str, params: dict[str, Any],
                   timeout: float | None = 0.0) -> dict[str, Any]:
        fleet = self.gateway.fleet
        try:
            return await raw_request(session, method, params,
                                     fleet.timeouts.for_method(method) if timeout == 0.0 else timeout)
        except MCPError as exc:
            raise fleet._name_error(replica, method, exc, fleet.timeouts.for_method(method)) from None

    async def _on_replica(self, gateway_id: str, method: str, timeout: float | None = 0.0) -> tuple[dict[str, Any], str]:
        server_name, server_id, task_id = split_task_id(gateway_id)
        replica = self.gateway.fleet.replica(server_name, server_id)
        if replica is None:
            raise MCPError(code=types.INVALID_PARAMS, message=f"Failed to retrieve task: {server_name} ({server_id}), "
                                                              "where the task runs, is offline")
        session = await self.gateway.fleet.open(replica)
        return await self._ask(replica, session, method, {"taskId": task_id}, timeout), server_name

    async def _get(self, ctx: Any, params: types.GetTaskRequestParams) -> dict[str, Any]:
        raw, _ = await self._on_replica(params.task_id, "tasks/get")
        raw["taskId"] = params.task_id
        return raw

    async def _cancel(self, ctx: Any, params: types.CancelTaskRequestParams) -> dict[str, Any]:
        raw, _ = await self._on_replica(params.task_id, "tasks/cancel")
        raw["taskId"] = params.task_id
        return raw

    async def _result(self, ctx: Any, params: types.GetTaskPayloadRequestParams) -> dict[str, Any]:
        raw, server_name = await self._on_replica(params.task_id, "tasks/result", timeout=None)
        meta: dict[str, Any] = dict(raw["_meta"]) if isinstance(raw.get("_meta"), dict) else {}
        raw["_meta"] = {**meta, RELATED: {"taskId": params.task_id}}
        self.gateway._rewrite_content(server_name, raw.get("content"))
        return raw

    async def _list(self, ctx: Any, params: types.PaginatedRequestParams) -> dict[str, Any]:
        fleet = self.gateway.fleet
        await fleet.ready.wait()
        found: list[dict[str, Any]] = []
        limit = anyio.Semaphore(LIST_CONCURRENCY)

        async def one(replica: Replica) -> None:
            cursor = None
            async with limit:
                try:
                    session = await fleet.open(replica)
                    while True:
                        raw = await self._ask(replica, session, "tasks/list", {"cursor": cursor} if cursor else {})
                        for task in raw.get("tasks") or []:
                            if isinstance(task, dict) and isinstance(task.get("taskId"), str):
                                task["taskId"] = gateway_task_id(replica.server_name, replica.server_id,
                                                                 task["taskId"])
                                found.append(task)
                        cursor = raw.get("nextCursor")
                        if not cursor:
                            return
                except MCPError as exc:  # offline, or no tasks there (-32601): left out
                    log.debug("tasks/list on %s: %s", replica.label, exc)

        async with anyio.create_task_group() as tg:
            for replica in list(fleet.replicas.values()):
                if replica.online:
                    tg.start_soon(one, replica)
        found.sort(key=lambda t: str(t.get("createdAt", "")))
        return {"tasks": found}
