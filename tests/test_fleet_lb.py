"""Two gateway replicas behind one HTTP load balancer (docs/fleet.md, "Several gateways"):
MCP 2026-07-28 clients are served per request by either replica (round-robin, no stickiness);
handshake-era clients (2025-11-25) stick to the replica that issued their ``Mcp-Session-Id``.

The balancer here is a few lines of Starlette + httpx doing what an nginx/HAProxy/ALB rule
does: round-robin, except that a request carrying ``Mcp-Session-Id`` goes to the replica that
answered the session's ``initialize``."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter

import httpx2 as httpx  # the HTTP client the mcp SDK uses
import pytest
import uvicorn
from mcp import Client
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from edge_agent.testing.broker import free_port
from edge_agent.testing.fleet_sim import LoopDriver, SimDevice

from .test_gateway_http import GatewayProcess

pytestmark = pytest.mark.anyio

SESSION = "mcp-session-id"
HOP = {"host", "content-length", "connection", "transfer-encoding", "keep-alive"}


@pytest.fixture
def anyio_backend():
    return "asyncio"


class Balancer:
    """Round-robin over ``backends``; sticky by ``Mcp-Session-Id`` once a backend issued it."""

    def __init__(self, backends: list[str]):
        self.backends = backends
        self.turn = itertools.cycle(range(len(backends)))
        self.sessions: dict[str, int] = {}
        self.requests: Counter[int] = Counter()
        self.by_session: dict[str, Counter[int]] = {}
        self.client = httpx.AsyncClient(timeout=None)
        self.app = Starlette(routes=[Route("/mcp", self.proxy, methods=["GET", "POST", "DELETE"])])

    async def proxy(self, request: Request) -> StreamingResponse:
        sid = request.headers.get(SESSION)
        index = self.sessions.get(sid) if sid else None
        if index is None:
            index = next(self.turn)
        self.requests[index] += 1
        if sid:
            self.by_session.setdefault(sid, Counter())[index] += 1
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        upstream = self.client.build_request(request.method, self.backends[index], headers=headers,
                                             content=await request.body())
        answer = await self.client.send(upstream, stream=True)
        issued = answer.headers.get(SESSION)
        if issued:
            self.sessions.setdefault(issued, index)
        return StreamingResponse(answer.aiter_raw(), status_code=answer.status_code,
                                 headers={k: v for k, v in answer.headers.items() if k.lower() not in HOP},
                                 background=BackgroundTask(answer.aclose))


async def test_two_gateways_behind_one_balancer(broker, tmp_path):
    driver = LoopDriver(asyncio.get_running_loop())
    devices = [SimDevice(broker.url, f"w-{i}", f"devices/lb/w-{i}", driver=driver) for i in range(4)]
    for d in devices:
        await d.start()
    gateways = [await GatewayProcess(broker.url, tmp_path / f"gw{i}.log", "--catalog-cache", "none").ready()
                for i in range(2)]
    balancer = Balancer([g.url for g in gateways])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(balancer.app, host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.get_running_loop().create_task(server.serve())
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        while not server.started:
            await asyncio.sleep(0.02)
        # 2026-07-28: no session; every request may go to either replica
        async with Client(url) as modern:
            assert modern.session.protocol_version == "2026-07-28"
            names = {t.name for t in (await modern.list_tools()).tools}
            assert {f"devices.lb.w-{i}__echo" for i in range(4)} <= names
            before = Counter(balancer.requests)
            for i in range(8):
                result = await modern.call_tool(f"devices.lb.w-{i % 4}__echo", {"text": str(i)})
                assert result.structured_content == {"text": str(i), "server_id": f"w-{i % 4}"}
            spread = Counter(balancer.requests)
            spread.subtract(before)
            assert spread[0] >= 3 and spread[1] >= 3  # both replicas answered calls of one client

        # 2025-11-25: a stateful session, kept on the replica that initialized it
        async with Client(url, mode="legacy") as legacy:
            assert legacy.session.protocol_version == "2025-11-25"
            for i in range(6):
                result = await legacy.call_tool(f"devices.lb.w-{i % 4}__echo", {"text": "s"})
                assert not result.is_error
        assert balancer.by_session, "the legacy client sent its Mcp-Session-Id"
        for counts in balancer.by_session.values():
            assert len(counts) == 1  # every request of the session went to one replica
    finally:
        server.should_exit = True
        await serving
        await balancer.client.aclose()
        for g in gateways:
            g.stop()
        for d in devices:
            await d.stop()
        driver.close()
