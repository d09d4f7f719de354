"""The official ``mcp`` client against our server core, in memory (edge_agent.testing.memory):
initialize, tools, resources, subscriptions, progress and cancellation, with no broker.
Every wait is on an event, bounded by ``anyio.fail_after``."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import MCPError

from edge_agent.server import McpServer, Registry, Resource, ServerInfo, Tool
from edge_agent.testing.memory import MemoryHub, memory_session, memory_streams

pytestmark = [pytest.mark.anyio, pytest.mark.filterwarnings("ignore::mcp.MCPDeprecationWarning")]


@pytest.fixture
def anyio_backend():
    return "asyncio"  # the core runs each request as an asyncio task


class Rig:
    """A server with a relay, a slow tool that reports progress, a tool that waits until it is
    cancelled, and two sensor resources. Records what the tools saw."""

    def __init__(self) -> None:
        self.relay = False
        self.hold_started = asyncio.Event()
        self.hold_cancelled = asyncio.Event()
        self.release = asyncio.Event()
        reg = Registry()

        async def relay_set(args: dict[str, Any], ctx: Any) -> dict[str, Any]:
            self.relay = args["on"]
            return {"on": self.relay}

        async def sweep(args: dict[str, Any], ctx: Any) -> str:
            for i in range(1, args["steps"] + 1):
                ctx.progress(i, args["steps"], f"step {i}")
                await asyncio.sleep(0)
            return "swept"

        async def hold(args: dict[str, Any], ctx: Any) -> str:
            self.hold_started.set()
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.hold_cancelled.set()
                raise
            return "released"

        reg.add_tool(Tool("relay_set", "Switch the relay", {
            "type": "object", "properties": {"on": {"type": "boolean"}}, "required": ["on"],
            "additionalProperties": False}, relay_set,
            output_schema={"type": "object", "properties": {"on": {"type": "boolean"}}, "required": ["on"]}))
        reg.add_tool(Tool("sweep", "Sweep in steps", {
            "type": "object", "properties": {"steps": {"type": "integer", "minimum": 1, "maximum": 10}},
            "required": ["steps"]}, sweep))
        reg.add_tool(Tool("hold", "Wait until released", {"type": "object"}, hold))
        for name, value in (("soil", 18.5), ("air", 21.0)):
            async def read(value: float = value) -> str:
                return json.dumps({"value": value, "unit": "°C"})
            reg.add_resource(Resource(f"sensor://{name}/temperature", name, read))
        self.server = McpServer(reg, ServerInfo("devices/test/memory", "1.2.3", title="Memory rig"))


async def test_initialize_list_and_call_tools_read_a_resource():
    rig = Rig()
    async with memory_session(rig.server, "client-a") as session:
        init = await session.initialize()
        assert init.server_info.name == "devices/test/memory" and init.server_info.version == "1.2.3"
        assert init.protocol_version == "2025-11-25"
        assert init.capabilities.resources is not None and init.capabilities.resources.subscribe
        assert rig.server.sessions["client-a"].initialized

        tools = {t.name: t for t in (await session.list_tools()).tools}
        assert set(tools) == {"relay_set", "sweep", "hold"}
        assert tools["relay_set"].input_schema["required"] == ["on"]

        on = await session.call_tool("relay_set", {"on": True})
        assert not on.is_error and on.structured_content == {"on": True} and rig.relay is True
        refused = await session.call_tool("relay_set", {"on": "yes"})
        assert refused.is_error and "on" in refused.content[0].text and rig.relay is True
        with pytest.raises(MCPError) as unknown:
            await session.call_tool("no_such_tool", {})
        assert unknown.value.error.code == -32602

        read = await session.read_resource("sensor://soil/temperature")
        assert json.loads(read.contents[0].text) == {"value": 18.5, "unit": "°C"}
        with pytest.raises(MCPError) as missing:
            await session.read_resource("sensor://nowhere/temperature")
        assert missing.value.error.code == -32002
    assert rig.server.sessions == {}  # leaving closed the session


async def test_subscribe_and_updates_reach_only_subscribers():
    rig = Rig()
    seen: list[Any] = []
    updated = anyio.Event()

    async def handler(message: Any) -> None:
        seen.append(message)
        if isinstance(message, types.ResourceUpdatedNotification):
            updated.set()

    async with memory_session(rig.server, message_handler=handler) as session:
        await session.initialize()
        await session.subscribe_resource("sensor://soil/temperature")
        assert rig.server.subscribed("sensor://soil/temperature")
        assert not rig.server.resource_updated("sensor://air/temperature")  # nobody subscribed to air
        rig.server.list_changed("tools")
        assert rig.server.resource_updated("sensor://soil/temperature")
        with anyio.fail_after(5):
            await updated.wait()
        await session.unsubscribe_resource("sensor://soil/temperature")
        assert not rig.server.subscribed("sensor://soil/temperature")
        with pytest.raises(MCPError) as bad:
            await session.subscribe_resource("nope://x")
        assert bad.value.error.code == -32002
    kinds = [type(m).__name__ for m in seen]
    assert kinds == ["ToolListChangedNotification", "ResourceUpdatedNotification"]
    assert str(seen[1].params.uri) == "sensor://soil/temperature"


async def test_progress_reaches_the_callback_in_order():
    rig = Rig()
    got: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        got.append((progress, total, message))

    async with memory_session(rig.server) as session:
        await session.initialize()
        result = await session.call_tool("sweep", {"steps": 3}, progress_callback=on_progress)
        assert not result.is_error and result.content[0].text == "swept"
    # progress notifications precede the response on the one stream: all seen by now
    assert got == [(1, 3, "step 1"), (2, 3, "step 2"), (3, 3, "step 3")]


async def test_cancel_stops_the_tool_and_sends_no_response():
    rig = Rig()
    async with memory_session(rig.server, "client-c") as session:
        await session.initialize()
        state = rig.server.sessions["client-c"]
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(session.call_tool, "hold", {})
                await rig.hold_started.wait()
                [held_id] = list(state.inflight)
                tg.cancel_scope.cancel()  # the SDK sends notifications/cancelled
            await rig.hold_cancelled.wait()
        assert state.inflight == {}
        # the session is still usable, and the cancelled call was never answered: the server
        # caches every reply it sends (but initialize's), the held call's is not among them
        assert not (await session.call_tool("relay_set", {"on": False})).is_error
        sent = {mid: reply for mid, (_, reply) in state.replies.items()}
        assert held_id not in sent
        assert {"on": False} in [r["result"].get("structuredContent") for r in sent.values()]


async def test_leaving_cancels_in_flight_requests():
    rig = Rig()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            async with memory_session(rig.server, "client-d") as session:
                await session.initialize()
                tg.start_soon(session.call_tool, "hold", {})
                await rig.hold_started.wait()
                assert len(rig.server.sessions["client-d"].inflight) == 1
                tg.cancel_scope.cancel()
        await rig.hold_cancelled.wait()
    assert rig.server.sessions == {}


async def test_requests_before_initialize_and_two_clients():
    rig = Rig()
    hub = MemoryHub(rig.server)
    async with hub.connect("early") as (read, write):
        from mcp.shared.message import SessionMessage

        await write.send(SessionMessage(types.JSONRPCRequest(jsonrpc="2.0", id=7, method="tools/list")))
        with anyio.fail_after(5):
            reply = await read.receive()
        assert isinstance(reply, SessionMessage) and isinstance(reply.message, types.JSONRPCError)
        assert reply.message.id == 7 and reply.message.error.code == -32600

    seen: dict[str, list[str]] = {"a": [], "b": []}
    got_b = anyio.Event()

    def handler_for(name: str) -> Any:
        async def handler(message: Any) -> None:
            if isinstance(message, types.ResourceUpdatedNotification):
                seen[name].append(str(message.params.uri))
                if name == "b":
                    got_b.set()
        return handler

    from mcp import ClientSession

    async with hub.connect("a") as (ra, wa), hub.connect("b") as (rb, wb):
        async with ClientSession(ra, wa, message_handler=handler_for("a")) as a, \
                ClientSession(rb, wb, message_handler=handler_for("b")) as b:
            await a.initialize()
            await b.initialize()
            assert set(rig.server.sessions) == {"a", "b"}
            await b.subscribe_resource("sensor://air/temperature")
            await a.call_tool("relay_set", {"on": True})
            rig.server.resource_updated("sensor://air/temperature")
            with anyio.fail_after(5):
                await got_b.wait()
            await a.send_ping()  # a's stream has carried everything sent before this answer
        with pytest.raises(ValueError):
            async with hub.connect("a"):
                pass
    assert seen == {"a": [], "b": ["sensor://air/temperature"]}
    assert rig.server.sessions == {}


async def test_memory_streams_is_one_hub_connection():
    rig = Rig()
    async with memory_streams(rig.server, "solo") as (read, write):
        from mcp import ClientSession

        async with ClientSession(read, write) as session:
            await session.initialize()
            assert (await session.list_resources()).resources[0].uri is not None
            assert set(rig.server.sessions) == {"solo"}
    assert rig.server.sessions == {}
