"""The gateway in-process (official ``mcp`` client over memory streams) against simulated devices
on a real Mosquitto: timeouts, cancellation, progress, paging, templates, prompts, completion,
device list changes, eager sessions, a device that forgot the session, least-outstanding."""

from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import ClientSession, MCPError
from mcp.shared.memory import create_client_server_memory_streams

from edge_agent.gateway.command import GatewayOptions, build
from edge_agent.gateway.fleet import Timeouts
from edge_agent.gateway.names import resource_uri, template_uri
from edge_agent.server.registry import Tool
from edge_agent.testing.fleet_sim import LoopDriver, SimDevice

pytestmark = pytest.mark.anyio

NAME, SID = "devices/lab/sim-1", "sim-1"
TOOL = "devices.lab.sim-1__"


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
async def sim(broker):
    driver = LoopDriver(asyncio.get_running_loop())
    device = SimDevice(broker.url, SID, NAME, driver=driver)
    await device.start()
    yield device
    await device.stop()
    driver.close()


@asynccontextmanager
async def gateway(broker_url: str, **options: Any):
    async with build(GatewayOptions(broker=broker_url, **options)) as gw:
        yield gw


@asynccontextmanager
async def client(gw, notes: list | None = None):
    async def handler(message: Any) -> None:
        if notes is not None:
            notes.append(message)

    async with create_client_server_memory_streams() as ((c_read, c_write), (s_read, s_write)):
        async with anyio.create_task_group() as tg:
            tg.start_soon(gw.server.run, s_read, s_write, gw.init_options)
            async with ClientSession(c_read, c_write, message_handler=handler, read_timeout_seconds=20) as session:
                await session.initialize()
                yield session
            tg.cancel_scope.cancel()


async def wait_until(predicate, timeout: float = 5.0, what: str = "condition") -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.02)


async def test_timeout_names_the_device_and_cancels_the_call_there(broker, sim):
    async with gateway(broker.url, timeouts=Timeouts(call=0.5)) as gw, client(gw) as s:
        with pytest.raises(MCPError) as err:
            await s.call_tool(TOOL + "slow", {"seconds": 5, "steps": 5})
        assert err.value.error.code == types.REQUEST_TIMEOUT
        assert str(err.value) == f"{NAME} ({SID}): tools/call timed out after 0.5 s"
        await wait_until(lambda: sim.cancelled == 1)  # the device got notifications/cancelled
        ok = await s.call_tool(TOOL + "echo", {"text": "still here"})
        assert ok.structured_content == {"text": "still here", "server_id": SID}


async def test_progress_is_forwarded_and_cancellation_propagated(broker, sim):
    async with gateway(broker.url) as gw, client(gw) as s:
        seen: list[tuple[float, float | None, str | None]] = []

        async def progress(value: float, total: float | None, message: str | None) -> None:
            seen.append((value, total, message))

        done = await s.call_tool(TOOL + "slow", {"seconds": 0.3, "steps": 3}, progress_callback=progress)
        assert done.structured_content == {"completed": 3, "server_id": SID}
        assert seen == [(1, 3, "step 1 of 3"), (2, 3, "step 2 of 3"), (3, 3, "step 3 of 3")]

        seen.clear()
        with anyio.move_on_after(0.6):  # the client gives up: notifications/cancelled to the gateway
            await s.call_tool(TOOL + "slow", {"seconds": 10, "steps": 100}, progress_callback=progress)
        assert seen, "no progress before the cancellation"
        await wait_until(lambda: sim.cancelled == 1)  # ... and from the gateway to the device


async def test_paging_templates_prompts_completion(broker, sim):
    async with gateway(broker.url, page_size=3) as gw, client(gw) as s:
        names, cursor = [], None
        while True:
            page = await s.list_tools(params=types.PaginatedRequestParams(cursor=cursor) if cursor else None)
            names += [t.name for t in page.tools]
            cursor = page.next_cursor
            if not cursor:
                break
        assert names == [TOOL + t for t in ("echo", "whoami", "set_relay", "slow")]
        tool = (await s.list_tools()).tools[0]
        assert tool.description.startswith(f"[{NAME}] ") and tool.meta == {"edge-agent/server-name": NAME}

        templates = (await s.list_resource_templates()).resource_templates
        assert [t.uri_template for t in templates] == [template_uri(NAME, "sim://history/{n}")]
        read = await s.read_resource(templates[0].uri_template.replace("{n}", "2"))
        assert json.loads(read.contents[0].text) == {"values": [21.5, 21.5], "unit": "°C"}
        assert read.contents[0].uri == resource_uri(NAME, "sim://history/2")

        prompt = await s.get_prompt(TOOL + "status", {"detail": "hi"})
        assert prompt.messages[0].content.text == f"{NAME} is at 21.5 °C; relay off. (hi)"
        done = await s.complete(types.ResourceTemplateReference(type="ref/resource", uri=templates[0].uri_template),
                                {"name": "n", "value": "1"})
        assert done.completion.values == ["1", "10", "100"]

        with pytest.raises(MCPError, match="not a gateway tool name"):
            await s.call_tool("echo", {})
        with pytest.raises(MCPError, match="server devices/lab/nope is not online"):
            await s.call_tool("devices.lab.nope__echo", {})
        with pytest.raises(MCPError, match=r"devices/lab/sim-1 \(sim-1\): Unknown tool: nope"):
            await s.call_tool(TOOL + "nope", {})


async def test_device_list_changes_reach_the_client_and_refresh_the_cache(broker, sim):
    notes: list[Any] = []
    async with gateway(broker.url) as gw, client(gw, notes) as s:
        assert TOOL + "beep" not in [t.name for t in (await s.list_tools()).tools]
        notes.clear()

        async def beep(args: dict, ctx: Any) -> str:
            return "beep"

        sim.server.registry.add_tool(Tool("beep", "Beep.", input_schema={"type": "object"}, handler=beep))
        sim.server.list_changed("tools")
        await wait_until(lambda: any(isinstance(n, types.ToolListChangedNotification) for n in notes))
        assert TOOL + "beep" in [t.name for t in (await s.list_tools()).tools]
        assert (await s.call_tool(TOOL + "beep", {})).content[0].text == "beep"


async def test_eager_sessions_and_a_device_that_forgot_the_session(broker, sim):
    async with gateway(broker.url, eager=True) as gw, client(gw) as s:
        await gw.fleet.ready.wait()
        replica = gw.fleet.replica(NAME, SID)
        await wait_until(lambda: replica.session is not None)  # initialized before any request
        assert list(sim.server.sessions)  # the gateway's mcp-client-id
        for cid in list(sim.server.sessions):
            sim.server.close_session(cid)  # e.g. the device restarted without the broker noticing
        echoed = await s.call_tool(TOOL + "echo", {"text": "again"})  # re-initialized transparently
        assert echoed.structured_content["text"] == "again"


async def test_least_outstanding_avoids_the_busy_replica(broker):
    driver = LoopDriver(asyncio.get_running_loop())
    replicas = [SimDevice(broker.url, f"w-{i}", "devices/pool/worker", driver=driver) for i in (1, 2, 3)]
    for r in replicas:
        await r.start()
    try:
        async with gateway(broker.url, strategy="least-outstanding") as gw, client(gw) as a:
            busy = (await a.call_tool("devices.pool.worker__whoami", {})).structured_content["server_id"]
            async with anyio.create_task_group() as tg:
                tg.start_soon(a.call_tool, "devices.pool.worker__slow", {"seconds": 1.0, "steps": 2})
                await wait_until(lambda: gw.fleet.replica("devices/pool/worker", busy).outstanding == 1)
                for _ in range(4):  # new sessions never land on the replica with a call in flight
                    async with client(gw) as b:
                        other = (await b.call_tool("devices.pool.worker__whoami", {})).structured_content
                        assert other["server_id"] != busy
    finally:
        for r in replicas:
            await r.stop()
        driver.close()


async def test_a_replica_that_never_initializes_is_skipped(broker):
    driver = LoopDriver(asyncio.get_running_loop())
    mute, good = (SimDevice(broker.url, sid, "devices/pool/worker", driver=driver) for sid in ("w-1", "w-2"))

    async def ignore(cid: str, payload: bytes) -> None:  # online, but never answers initialize
        return None

    mute._initialize = ignore
    for d in (mute, good):
        await d.start()
    try:
        async with gateway(broker.url, strategy="round-robin", timeouts=Timeouts(initialize=0.5)) as gw:
            async with client(gw) as a:  # round-robin puts the first session on w-1: it fails over
                assert (await a.call_tool("devices.pool.worker__whoami", {})).structured_content["server_id"] == "w-2"
            async with client(gw) as b:  # w-1 is passed over for a while: no second wait
                with anyio.fail_after(0.4):
                    who = await b.call_tool("devices.pool.worker__whoami", {})
                assert who.structured_content["server_id"] == "w-2"
                assert "devices.pool.worker__echo" in [t.name for t in (await b.list_tools()).tools]
    finally:
        for d in (mute, good):
            await d.stop()
        driver.close()


async def test_the_gateway_reconnects_after_a_broker_restart(broker, sim):
    notes: list[Any] = []
    async with gateway(broker.url) as gw, client(gw, notes) as s:
        assert TOOL + "echo" in [t.name for t in (await s.list_tools()).tools]
        notes.clear()
        broker.kill()  # the broker dies: every device is gone as far as the gateway knows
        await wait_until(lambda: any(isinstance(n, types.ToolListChangedNotification) for n in notes))
        assert (await s.list_tools()).tools == []
        broker.start()
        twin = sim.restarted()  # (the simulated device does not reconnect by itself)
        await twin.start()
        try:
            notes.clear()
            await wait_until(lambda: any(isinstance(n, types.ToolListChangedNotification) for n in notes),
                             timeout=10)
            echoed = await s.call_tool(TOOL + "echo", {"text": "after the restart"})
            assert echoed.structured_content == {"text": "after the restart", "server_id": SID}
        finally:
            await twin.stop()


async def test_a_replica_that_drops_the_gateway_is_left_for_another(broker):
    driver = LoopDriver(asyncio.get_running_loop())
    replicas = {sid: SimDevice(broker.url, sid, "devices/pool/worker", driver=driver) for sid in ("w-1", "w-2")}
    for d in replicas.values():
        await d.start()
    try:
        async with gateway(broker.url, strategy="round-robin") as gw, client(gw) as s:
            first = (await s.call_tool("devices.pool.worker__whoami", {})).structured_content["server_id"]
            replicas[first].drop_clients()  # notifications/disconnected on the RPC topic; still online
            await wait_until(lambda: gw.fleet.replica("devices/pool/worker", first).session is None)
            then = (await s.call_tool("devices.pool.worker__whoami", {})).structured_content["server_id"]
            assert then != first
    finally:
        for d in replicas.values():
            await d.stop()
        driver.close()


async def test_a_replica_that_does_not_answer_initialize_costs_the_failover_timeout_not_30_s(broker):
    """A stale replica (a retained presence nobody stands behind: the broker crashed, so no will
    came) beside a live one: the first request waits ``initialize_failover`` (here 1 s), not the
    30 s initialize timeout, then goes to the live replica (issue 12 item 6). Alone, a replica
    keeps the whole initialize timeout."""
    driver = LoopDriver(asyncio.get_running_loop())
    mute, good = (SimDevice(broker.url, sid, "devices/pool/worker", driver=driver) for sid in ("w-1", "w-2"))

    async def ignore(cid: str, payload: bytes) -> None:  # a presence, but nobody answers initialize
        return None

    mute._initialize = ignore
    for d in (mute, good):
        await d.start()
    try:
        async with gateway(broker.url, strategy="round-robin", timeouts=Timeouts(initialize_failover=1.0)) as gw:
            await wait_until(lambda: len(gw.fleet.replicas_of("devices/pool/worker")) == 2, what="two replicas")
            mute_replica, good_replica = gw.fleet.replicas_of("devices/pool/worker")
            assert gw.fleet._initialize_timeout(mute_replica) == 1.0
            async with client(gw) as a:  # round-robin puts the first session on w-1: it fails over
                with anyio.fail_after(6):
                    who = await a.call_tool("devices.pool.worker__whoami", {})
                assert who.structured_content["server_id"] == "w-2"
            await good.stop()
            await wait_until(lambda: not good_replica.usable, what="w-2 offline")
            assert gw.fleet._initialize_timeout(mute_replica) == 30.0  # alone: the whole timeout
    finally:
        for d in (mute, good):
            await d.stop()
        driver.close()
