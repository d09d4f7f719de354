"""The task manager (edge_agent/device/tasks.py) on the server core, over the in-memory pair
(the official ``mcp`` client, no broker): the watchdog stops a job that overruns its end,
``taskSupport: required``, status notifications, ttl bounds, restart recovery from the store."""

from __future__ import annotations

import threading
import time
from typing import Any

import anyio
import pytest
from mcp import ClientSession, MCPError

from edge_agent.client import tasks
from edge_agent.device.tasks import WORKING, TaskManager, TaskRecord, TaskStore
from edge_agent.drivers.base import ToolSpec, no_arguments
from edge_agent.server import McpServer, Registry, ServerInfo, Tool
from edge_agent.testing.memory import memory_streams

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


class Hardware:
    """A pump that records when it was stopped; its job ignores cancel (a hung handler)."""

    def __init__(self) -> None:
        self.on = False
        self.stops: list[float] = []
        self.release = threading.Event()

    def stop(self) -> None:
        self.on = False
        self.stops.append(time.time())

    def stuck(self, seconds: float, *, progress: Any, cancel: threading.Event) -> dict[str, Any]:
        self.on = True
        self.release.wait(10)  # does not look at cancel
        return {"ok": True}


def build(tmp_path, hw: Hardware, *, support: str = "optional") -> tuple[McpServer, TaskManager, ToolSpec]:
    registry = Registry()
    server = McpServer(registry, ServerInfo("test", "0"))
    spec = ToolSpec("run", "run", {"type": "object", "properties": {"seconds": {"type": "number"}},
                                   "required": ["seconds"]}, hw.stuck, long_running=True,
                    task_support=support, stop=hw.stop, duration=lambda seconds: seconds)

    async def handler(arguments: dict[str, Any], ctx: Any) -> Any:
        return await anyio.to_thread.run_sync(lambda: hw.stuck(arguments["seconds"], progress=ctx.progress,
                                                               cancel=ctx.cancelled))

    async def plain(arguments: dict[str, Any], ctx: Any) -> Any:
        return {"ok": True}

    registry.add_tool(Tool("pump_run", "run the pump", spec.input_schema, handler, task_support=support))
    registry.add_tool(Tool("pump_on", "on", no_arguments(), plain))
    manager = TaskManager(server, TaskStore(str(tmp_path / "state.sqlite3")), {"pump_run": spec}.get)
    return server, manager, spec


async def test_watchdog_stops_a_job_that_overruns_and_status_is_notified(tmp_path):
    hw = Hardware()
    server, manager, _ = build(tmp_path, hw)
    notes: list[Any] = []

    async def on_status(params: Any) -> None:
        notes.append(params)

    try:
        async with memory_streams(server) as (read, write):
            async with ClientSession(read, write, notification_bindings=[tasks.status_binding(on_status)]) as session:
                await session.initialize()
                task = await tasks.call_tool_as_task(session, "pump_run", {"seconds": 0.5}, ttl_ms=10**12)
                assert task["ttl"] == 86_400_000  # bounded to 24 h
                started = time.time()
                with anyio.fail_after(5):
                    while not hw.on:  # the job starts in the background
                        await anyio.sleep(0.01)
                with anyio.fail_after(5):
                    while not hw.stops:
                        await anyio.sleep(0.01)
                assert 0.5 <= hw.stops[0] - started < 0.5 + 0.25 + 0.3  # end + grace
                assert not hw.on
                hw.release.set()
                result = await tasks.result(session, task["taskId"])
                got = await tasks.get(session, task["taskId"])
                assert got["status"] == "failed" and "overran" in got["statusMessage"]
                assert result["_meta"]["io.modelcontextprotocol/related-task"]["taskId"] == task["taskId"]
                with anyio.fail_after(5):
                    while not notes:
                        await anyio.sleep(0.01)
                assert notes[-1].status == "failed" and notes[-1].task_id == task["taskId"]
    finally:
        await manager.close()


async def test_required_task_support_and_capability(tmp_path):
    hw = Hardware()
    server, manager, _ = build(tmp_path, hw, support="required")
    try:
        async with memory_streams(server) as (read, write):
            async with ClientSession(read, write) as session:
                init = await session.initialize()
                assert init.capabilities.tasks is not None and init.capabilities.tasks.list is not None
                with pytest.raises(MCPError) as exc:  # required: a plain call is -32601
                    await session.call_tool("pump_run", {"seconds": 1})
                assert exc.value.error.code == -32601
                with pytest.raises(MCPError) as exc:
                    await tasks.get(session, "0" * 32)
                assert exc.value.error.code == -32602
                with pytest.raises(MCPError) as exc:
                    await tasks.raw_request(session, "tasks/list", {"cursor": "bogus!"})
                assert exc.value.error.code == -32602
    finally:
        hw.release.set()
        await manager.close()


async def test_restart_stops_a_job_past_its_end_and_one_that_cannot_resume(tmp_path):
    store = TaskStore(str(tmp_path / "state.sqlite3"))
    now = time.time()

    def record(task_id: str, ends: float) -> TaskRecord:
        return TaskRecord(task_id, None, "c1", "pump_run", {"seconds": 5}, WORKING, None, now - 10, now - 10,
                          3_600_000, now - 10, ends)

    store.put(record("a" * 32, now - 3))  # its end passed while the agent was dead
    store.put(record("b" * 32, now + 30))  # still before its end, but this job is not resumable (a resumable one
    # runs on: tests/test_tasks_restart.py)
    store.close()
    hw = Hardware()
    server, manager, _ = build(tmp_path, hw)
    try:
        await manager.recover()
        past, other = manager.tasks["a" * 32], manager.tasks["b" * 32]
        assert past.status == "failed" and "safe state at restart" in (past.status_message or "")
        assert past.stopped is not None and past.stopped - past.ends >= 3
        assert other.status == "failed" and "interrupted by an agent restart" in (other.status_message or "")
        assert len(hw.stops) == 2 and not hw.on
        again = {r.task_id: r.status for r in TaskStore(str(tmp_path / "state.sqlite3")).load()}
        assert again == {"a" * 32: "failed", "b" * 32: "failed"}  # on disk too
    finally:
        await manager.close()


async def test_a_viewer_neither_lists_nor_reads_nor_cancels_an_operators_task(tmp_path):
    """Tasks are bound to what the caller may do: a role that may not call the job's tool
    does not see its tasks (tasks/list, tasks/get, tasks/result, tasks/cancel)."""
    from edge_agent.server.rbac import Policy

    hw = Hardware()
    server, manager, _ = build(tmp_path, hw)
    server.policy = Policy(rules=[("ops-*", "operator")], default="viewer")
    try:
        async with memory_streams(server, "ops-1") as (read, write):
            async with ClientSession(read, write) as operator:
                await operator.initialize()
                task = await tasks.call_tool_as_task(operator, "pump_run", {"seconds": 5})
                listed = await tasks.raw_request(operator, "tasks/list", {})
                assert [t["taskId"] for t in listed["tasks"]] == [task["taskId"]]
                async with memory_streams(server, "viewer-1") as (vread, vwrite):
                    async with ClientSession(vread, vwrite) as viewer:
                        await viewer.initialize()
                        assert (await tasks.raw_request(viewer, "tasks/list", {}))["tasks"] == []
                        for method in ("tasks/get", "tasks/result", "tasks/cancel"):
                            with pytest.raises(MCPError) as exc:
                                await tasks.raw_request(viewer, method, {"taskId": task["taskId"]})
                            assert exc.value.error.code == -32602, method
                assert hw.on  # the viewer's cancel did not reach the pump
    finally:
        hw.release.set()
        await manager.close()
