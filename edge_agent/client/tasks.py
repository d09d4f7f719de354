"""MCP tasks (2025-11-25 ``basic/utilities/tasks``) from the client side, on the official SDK.

The ``mcp`` SDK 2.3 has the task types (``mcp_types.CreateTaskResult``, ``GetTaskResult``...)
but no client methods for them, and its ``send_request`` checks a ``tools/call`` answer
against ``CallToolResult`` only, so a ``CreateTaskResult`` (the answer to a task-augmented
call) would be refused as malformed. These helpers send the request through the session's
JSON-RPC dispatcher (``ClientSession._dispatcher.send_raw_request``, the SDK's own path under
``send_request``) and check the answer's shape here against the SDK's task types.
Used by ``edge-agent call --task``, ``edge-agent task ...`` and the gateway's passthrough.
"""

from __future__ import annotations

from typing import Any

RELATED = "io.modelcontextprotocol/related-task"


class NotStarted(Exception):
    """A task-augmented ``tools/call`` the server refused as a plain call would be refused (bad
    arguments, a stale command): ``result`` is its ``CallToolResult`` dict (``isError``), the
    message its text."""

    def __init__(self, result: dict[str, Any]):
        self.result = result
        super().__init__(" ".join(str(c.get("text", "")) for c in result.get("content") or []
                                  if isinstance(c, dict)) or "the task was not started")


async def raw_request(session: Any, method: str, params: dict[str, Any] | None,
                      timeout: float | None = None) -> dict[str, Any]:
    """Send ``method`` with ``params`` on ``session`` (a ``ClientSession``); the raw result dict.

    Raises:
        mcp.MCPError: the peer answered with an error, or no answer within ``timeout`` s
            (``REQUEST_TIMEOUT``), or the link closed (``CONNECTION_CLOSED``).
    """
    opts: dict[str, Any] = {}
    if timeout is not None:
        opts["timeout"] = timeout
    result: dict[str, Any] = await session._dispatcher.send_raw_request(method, params, opts)
    return result


async def call_tool_as_task(session: Any, name: str, arguments: dict[str, Any], *, ttl_ms: int | None = None,
                            timeout: float | None = None) -> dict[str, Any]:
    """``tools/call`` with ``params.task``: the created task (the spec's ``Task`` dict:
    ``taskId``, ``status``, ``createdAt``, ``lastUpdatedAt``, ``ttl``, ``pollInterval``).

    Raises:
        mcp.MCPError: as :func:`raw_request` (-32601: the tool does not run as a task).
        NotStarted: the server answered ``isError`` instead (the arguments were refused).
        pydantic.ValidationError: the answer is not a ``CreateTaskResult`` (a server that does
            not do tasks answers the call normally).
    """
    import mcp_types as types

    task: dict[str, Any] = {} if ttl_ms is None else {"ttl": ttl_ms}
    raw = await raw_request(session, "tools/call", {"name": name, "arguments": arguments, "task": task}, timeout)
    if "task" not in raw and raw.get("isError") is True:  # refused before it started (bad arguments)
        raise NotStarted(raw)
    return types.CreateTaskResult.model_validate(raw).task.model_dump(by_alias=True, mode="json", exclude_none=True)


async def get(session: Any, task_id: str, timeout: float | None = None) -> dict[str, Any]:
    """``tasks/get``: the task (``Task`` dict). Raises MCPError (-32602: unknown or expired)."""
    import mcp_types as types

    raw = await raw_request(session, "tasks/get", {"taskId": task_id}, timeout)
    return types.GetTaskResult.model_validate(raw).model_dump(by_alias=True, mode="json", exclude_none=True)


async def result(session: Any, task_id: str, timeout: float | None = None) -> dict[str, Any]:
    """``tasks/result``: waits for the end, then the tool's ``CallToolResult`` as a dict."""
    import mcp_types as types

    raw = await raw_request(session, "tasks/result", {"taskId": task_id}, timeout)
    types.CallToolResult.model_validate(raw)
    return raw


async def cancel(session: Any, task_id: str, timeout: float | None = None) -> dict[str, Any]:
    """``tasks/cancel``: the task, now ``cancelled``. Raises MCPError (-32602: already ended)."""
    import mcp_types as types

    raw = await raw_request(session, "tasks/cancel", {"taskId": task_id}, timeout)
    return types.CancelTaskResult.model_validate(raw).model_dump(by_alias=True, mode="json", exclude_none=True)


async def list_all(session: Any, timeout: float | None = None) -> list[dict[str, Any]]:
    """``tasks/list``, every page: the tasks, oldest first."""
    import mcp_types as types

    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        raw = await raw_request(session, "tasks/list", {"cursor": cursor} if cursor else {}, timeout)
        page = types.ListTasksResult.model_validate(raw)
        out += [t.model_dump(by_alias=True, mode="json", exclude_none=True) for t in page.tasks]
        cursor = page.next_cursor
        if not cursor:
            return out


def status_binding(handler: Any) -> Any:
    """A ``NotificationBinding`` for ``ClientSession(notification_bindings=[...])`` that hands each
    ``notifications/tasks/status`` (a ``mcp_types.TaskStatusNotificationParams``: ``task_id``,
    ``status``, ``status_message``...) to ``handler`` (async). The SDK 2.3 does not know that
    notification at 2025-11-25 and drops it without a binding."""
    import mcp_types as types
    from mcp.client.extension import NotificationBinding

    return NotificationBinding(method="notifications/tasks/status", params_type=types.TaskStatusNotificationParams,
                               handler=handler)
