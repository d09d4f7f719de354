"""The gateway's catalogs by digest (gateway/catalog.py): one initialize per distinct catalog,
none after a restart (the disk cache), list_changed only for a digest that changed."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import mcp_types as types
import pytest

from edge_agent.gateway import catalog as gateway_catalog
from edge_agent.gateway.command import GatewayOptions, build
from edge_agent.server import catalog as server_catalog
from edge_agent.server.registry import Tool
from edge_agent.testing.fleet_sim import LoopDriver, SimDevice, start_all

from .test_gateway_inprocess import client

pytestmark = pytest.mark.anyio

N = 40


@pytest.fixture
def anyio_backend():
    return "asyncio"


def test_meta_key_is_the_devices():
    assert gateway_catalog.META_KEY == server_catalog.META_KEY


@pytest.fixture
async def fleet(broker):
    driver = LoopDriver(asyncio.get_running_loop())
    devices = [SimDevice(broker.url, f"s-{i:02d}", f"devices/cat/d{i:02d}", driver=driver) for i in range(N)]
    await start_all(devices)
    yield devices
    for d in devices:
        await d.stop()
    driver.close()


async def wait_until(predicate, timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.02)


async def all_tool_names(session) -> list[str]:
    names: list[str] = []
    cursor = None
    while True:
        page = await session.list_tools(params=types.PaginatedRequestParams(cursor=cursor) if cursor else None)
        names += [t.name for t in page.tools]
        cursor = page.next_cursor
        if not cursor:
            return names


def sessions(gw) -> int:
    return sum(r.session is not None for r in gw.fleet.replicas.values())


async def test_one_initialize_per_digest_and_none_after_restart(broker, fleet, tmp_path):
    cache = tmp_path / "catalogs"
    options = GatewayOptions(broker=broker.url, server_name_filter="devices/cat/#", ping_interval=0,
                             catalog_cache=str(cache))
    async with build(options) as gw, client(gw) as s:
        tools = (await s.list_tools()).tools
        assert len(tools) == 4 * N
        assert {(t.meta or {}).get("edge-agent/server-name") for t in tools} == {d.server_name for d in fleet}
        assert gw.fleet.catalogs.fetched == 1 and sessions(gw) == 1  # one device asked, for all N
        assert len((await s.list_resources()).resources) == 2 * N
        assert len((await s.list_resource_templates()).resource_templates) == N
        assert len((await s.list_prompts()).prompts) == N
        assert sessions(gw) == 1
    digest = fleet[0].meta["catalogDigest"]
    assert (cache / f"{digest}.json").is_file()

    async with build(options) as gw, client(gw) as s:  # a restarted gateway: from the disk cache
        assert len((await s.list_tools()).tools) == 4 * N
        assert gw.fleet.catalogs.fetched == 0 and gw.fleet.catalogs.loaded == 1
        assert sessions(gw) == 0  # not one initialize
        # calls still go to the device itself
        name = "devices.cat.d07__whoami"
        assert (await s.call_tool(name, {})).structured_content["server_id"] == "s-07"


async def test_list_changed_only_for_a_changed_digest(broker, fleet):
    notes: list[Any] = []
    options = GatewayOptions(broker=broker.url, server_name_filter="devices/cat/#", ping_interval=0)
    async with build(options) as gw, client(gw, notes) as s:
        assert len((await s.list_tools()).tools) == 4 * N
        await wait_until(lambda: not gw._flush_pending)  # the devices' arrival, told
        notes.clear()
        # a device re-announcing the same catalog (e.g. after a reconnect): nothing to tell
        seen = gw.fleet.retained.presences
        fleet[3]._publish_presence()
        await wait_until(lambda: gw.fleet.retained.presences > seen)
        assert not gw._flush_pending and not gw._dirty  # no list_changed on its way

        async def beep(args: dict, ctx: Any) -> str:
            return "beep"

        changed = fleet[5]
        changed.server.registry.add_tool(Tool("beep", "Beep.", input_schema={"type": "object"}, handler=beep))
        changed.catalog_changed()
        await wait_until(lambda: any(isinstance(n, types.ToolListChangedNotification) for n in notes))
        tools = [t.name for t in (await s.list_tools()).tools]
        assert len(tools) == 4 * N + 1 and "devices.cat.d05__beep" in tools
        assert (await s.call_tool("devices.cat.d05__beep", {})).content[0].text == "beep"
        # the new digest's catalog was fetched once; the other devices still share the first
        assert gw.fleet.catalogs.fetched == 2
        assert sum(r.presence.meta["catalogDigest"] == changed.meta["catalogDigest"]
                   for r in gw.fleet.replicas.values()) == 1


async def test_warm_listing_is_served_without_work(broker, fleet):
    options = GatewayOptions(broker=broker.url, server_name_filter="devices/cat/#", ping_interval=0, page_size=7)
    async with build(options) as gw, client(gw) as s:
        first = await all_tool_names(s)
        assert len(first) == 4 * N and len(set(first)) == 4 * N
        cached = gw._aggregated["tools"]
        assert cached[0] == gw.fleet.generation
        await s.list_tools()
        assert gw._aggregated["tools"] is cached  # the same list object: nothing recomputed
        # the later pages, once sent, go out again as they were (no SDK re-serialization)
        page_cache = next(m for m in gw.server.middleware if type(m).__name__ == "PageCache")
        hits = page_cache.hits
        second = await all_tool_names(s)
        assert second == first
        listed = gw._aggregated["tools"][1]
        kept = [page for _, page in page_cache.pages.values()]
        assert kept and all(any(item is x for x in listed) for page in kept for item in page["tools"][:1])
        assert page_cache.hits - hits == -(-4 * N // 7) - 1  # every page but the first
