"""Bounded in-flight requests in the shared request engine (edge_agent.core.dispatch):
``Dispatcher.max_inflight`` requests of one session may be in flight (being answered, or their
answer being sent); one more is answered at once with TOO_MANY_REQUESTS (-32004), an error
code of the implementation-defined range no MCP SDK uses. None (the default) is unbounded;
the board sets 4, the Pi 64. Waits are on events, never fixed sleeps."""

from __future__ import annotations

import asyncio
from typing import Any

import mcp.types

from edge_agent.core import jsonrpc
from edge_agent.core.dispatch import Dispatcher
from edge_agent.core.jsonrpc import TOO_MANY_REQUESTS
from edge_agent.core.lifecycle import Session
from edge_agent.server import McpServer

INIT = {"jsonrpc": "2.0", "id": "i", "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}


class Server(Dispatcher):
    """``test/hold`` waits for :attr:`gate`; emit can be held too (a slow link)."""

    def __init__(self, limit: int | None) -> None:
        super().__init__()
        self.max_inflight = limit
        self.out: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()
        self.gate = asyncio.Event()
        self.link = asyncio.Event()
        self.link.set()
        self.table.add("test/hold", self.hold)

    async def hold(self, session: Any, params: Any, req: Any) -> dict[str, Any]:
        await self.gate.wait()
        return {"held": req.id}

    async def emit(self, session: Any, msg: Any) -> None:
        if "error" not in msg:
            await self.link.wait()
        self.out.append(msg)
        self.arrived.set()

    async def answer_to(self, mid: Any) -> dict[str, Any]:
        async with asyncio.timeout(5):
            while True:
                for m in self.out:
                    if m.get("id") == mid:
                        return m
                self.arrived.clear()
                await self.arrived.wait()


async def ready(limit: int | None) -> tuple[Server, Session]:
    server = Server(limit)
    s = Session("c1")
    await server.handle(s, dict(INIT))
    await server.answer_to("i")
    await server.handle(s, {"jsonrpc": "2.0", "method": "notifications/initialized"})
    return server, s


def hold(mid: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": mid, "method": "test/hold"}


def test_the_code_is_ours_alone():
    assert -32099 <= TOO_MANY_REQUESTS <= -32000
    sdk = {getattr(mcp.types, n) for n in dir(mcp.types) if n.isupper() and isinstance(getattr(mcp.types, n), int)}
    assert TOO_MANY_REQUESTS not in sdk | {jsonrpc.FORBIDDEN, jsonrpc.RESOURCE_NOT_FOUND}


def test_one_request_over_the_limit_is_refused_at_once_and_the_rest_are_answered():
    async def go():
        server, s = await ready(3)
        for mid in (1, 2, 3):
            await server.handle(s, hold(mid))
        assert len(s.inflight) == 3
        await server.handle(s, hold(4))  # answered before handle returns: nothing waits
        refused = [m for m in server.out if m.get("id") == 4]
        assert refused and refused[0]["error"]["code"] == TOO_MANY_REQUESTS
        assert "3" in refused[0]["error"]["message"] and "in flight" in refused[0]["error"]["message"]
        assert 4 not in s.inflight
        await server.handle(s, {"jsonrpc": "2.0", "method": "notifications/initialized"})  # never limited
        server.gate.set()
        for mid in (1, 2, 3):
            assert (await server.answer_to(mid))["result"] == {"held": mid}
        await server.handle(s, {"jsonrpc": "2.0", "id": 5, "method": "ping"})
        assert (await server.answer_to(5))["result"] == {}
        assert s.inflight == {}
    asyncio.run(go())


def test_a_cancelled_request_frees_its_slot():
    async def go():
        server, s = await ready(1)
        await server.handle(s, hold(1))
        await server.handle(s, {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}})
        await server.handle(s, {"jsonrpc": "2.0", "id": 2, "method": "ping"})
        assert (await server.answer_to(2))["result"] == {}
    asyncio.run(go())


def test_an_answer_still_being_sent_counts_and_its_id_may_be_reused():
    async def go():
        server, s = await ready(1)
        server.gate.set()
        server.link.clear()  # the link is slow: the answer to 1 is being sent
        await server.handle(s, hold(1))
        async with asyncio.timeout(5):
            while 1 in s.inflight:  # answered, now sending (no longer under its id)
                await asyncio.sleep(0)
        assert len(s.inflight) == 1
        await server.handle(s, {"jsonrpc": "2.0", "id": 2, "method": "ping"})
        assert (await server.answer_to(2))["error"]["code"] == TOO_MANY_REQUESTS
        server.link.set()
        assert (await server.answer_to(1))["result"] == {"held": 1}
        async with asyncio.timeout(5):
            while s.inflight:
                await asyncio.sleep(0)
        await server.handle(s, hold(1))  # the id of an answered request may be used again
        assert (await server.answer_to(1))["result"] == {"held": 1}
    asyncio.run(go())


def test_unbounded_by_default_and_the_pi_allows_64():
    async def go():
        server, s = await ready(None)
        assert Dispatcher.max_inflight is None
        for mid in range(200):
            await server.handle(s, hold(mid))
        assert len(s.inflight) == 200 and not any("error" in m for m in server.out)
        server.gate.set()
        for mid in range(200):
            await server.answer_to(mid)
    asyncio.run(go())
    assert McpServer.max_inflight == 64


def test_depth_limit_refuses_deep_json_without_parsing_it():
    deep = b"[" * 40 + b"]" * 40
    assert jsonrpc.too_deep(deep, 32) and not jsonrpc.too_deep(deep, 40)
    assert not jsonrpc.too_deep(b'{"a": "' + b"[" * 100 + b'"}', 32)  # brackets in a string
    assert not jsonrpc.too_deep(b'{"a": "\\"' + b"[" * 100 + b'"}', 32)  # after an escaped quote
    assert jsonrpc.too_deep('{"a":' + "[" * 33 + "1" + "]" * 33 + "}", 33)
    assert not jsonrpc.too_deep(b"[" + b"[1]," * 100 + b"[1]]", 32)  # many brackets, depth 2
    assert jsonrpc.MAX_DEPTH == 0  # the Pi: no limit of its own (the board sets 32)
    try:
        jsonrpc.MAX_DEPTH = 32
        try:
            jsonrpc.decode(deep)
        except jsonrpc.RpcError as e:
            assert e.code == jsonrpc.PARSE_ERROR and "nested deeper than 32" in e.message
        else:
            raise AssertionError("not refused")
        assert jsonrpc.decode(b'{"jsonrpc":"2.0","method":"x","params":{"a":[[1]]}}')["method"] == "x"
    finally:
        jsonrpc.MAX_DEPTH = 0
