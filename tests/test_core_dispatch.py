"""edge_agent.core.dispatch.Dispatcher, the request engine shared by the Pi and the board:
decode, initialize first, requests as tasks, an id answered once, cancellation without a
response, failing handlers, and the subclass hooks (MCP 2025-11-25 basic/lifecycle,
basic/utilities/cancellation; JSON-RPC 2.0). Waits are on events, never fixed sleeps."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from edge_agent.core import lifecycle
from edge_agent.core.dispatch import Dispatcher, Flag, Request
from edge_agent.core.jsonrpc import FORBIDDEN, INVALID_PARAMS, RpcError
from edge_agent.core.lifecycle import Session

INIT = {"jsonrpc": "2.0", "id": "i", "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}


class Server(Dispatcher):
    """A dispatcher that records what it sends and what its hooks saw."""

    server_info = {"name": "test", "version": "9"}

    def __init__(self) -> None:
        super().__init__()
        self.out: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()
        self.changes: list[tuple[str, bool]] = []
        self.errors: list[tuple[str, BaseException]] = []
        self.notes: list[tuple[str, dict[str, Any]]] = []
        self.requests: list[Request] = []
        self.refuse: set[str] = set()
        self.replayed: set[Any] = set()
        self.emit_fails = False
        self.gate = asyncio.Event()
        self.held = asyncio.Event()
        self.hold_cancelled = asyncio.Event()
        self.table.add("logging/setLevel", self.set_level)
        self.table.add("test/echo", self.echo)
        self.table.add("test/hold", self.hold)
        self.table.add("test/boom", self.boom)
        self.table.add("test/refuse", self.refuse_params)
        self.table.add("test/remember", self.echo, durable=True)

    # hooks
    async def emit(self, session: Any, msg: Any) -> None:
        if self.emit_fails and "id" in msg:
            raise ConnectionError("link down")
        self.out.append(msg)
        self.arrived.set()

    def changed(self, session: Any, closed: bool = False) -> None:
        self.changes.append((session.id, closed))

    def log_error(self, method: Any, exc: Any) -> None:
        self.errors.append((method, exc))

    def on_notification(self, session: Any, method: Any, params: Any) -> None:
        self.notes.append((method, params))

    def authorize(self, session: Any, method: Any) -> None:
        if method.name in self.refuse:
            raise RpcError(FORBIDDEN, "Forbidden: " + method.name)

    async def replay(self, session: Any, msg: Any) -> bool:
        return msg["id"] in self.replayed

    # handlers
    async def echo(self, session: Any, params: Any, req: Any) -> Any:
        self.requests.append(req)
        return {"params": params}

    async def hold(self, session: Any, params: Any, req: Any) -> Any:
        self.requests.append(req)
        self.held.set()
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.hold_cancelled.set()
            raise
        return {"released": True}

    async def boom(self, session: Any, params: Any, req: Any) -> Any:
        raise RuntimeError("sensor on fire")

    async def refuse_params(self, session: Any, params: Any, req: Any) -> Any:
        raise RpcError(INVALID_PARAMS, "no", {"why": "because"})

    # helpers
    async def send(self, session: Any, msg: Any, deadline: float | None = None) -> None:
        await self.handle(session, msg if isinstance(msg, (dict, list, bytes)) else json.dumps(msg), deadline)

    async def reply(self, mid: Any, after: int = 0, timeout: float = 5.0) -> dict[str, Any]:
        """The first answer to ``mid`` sent from ``out[after]`` on, waiting for it."""
        async with asyncio.timeout(timeout):
            while True:
                self.arrived.clear()
                found = [m for m in self.out[after:] if m.get("id") == mid and ("result" in m or "error" in m)]
                if found:
                    return found[0]
                await self.arrived.wait()

    async def request(self, session: Any, method: str, params: Any = None, mid: Any = 1) -> dict[str, Any]:
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": mid, "method": method}
        if params is not None:
            msg["params"] = params
        before = len(self.out)
        await self.send(session, msg)
        return await self.reply(mid, before)


async def ready(server: Server, sid: str = "c1") -> Session:
    session = Session(sid)
    server.sessions[sid] = session
    assert "result" in await server.request(session, "initialize", INIT["params"], mid="i")
    await server.send(session, {"jsonrpc": "2.0", "method": "notifications/initialized"})
    return session


async def finished(task: asyncio.Task) -> None:
    await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 5)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_flag_and_request():
    f = Flag()
    assert not f.is_set()
    f.set()
    assert f.is_set()
    r = Request(1, "m", {"a": 1}, f, 123.0)
    assert (r.id, r.method, r.params, r.cancelled, r.deadline) == (1, "m", {"a": 1}, f, 123.0)


def test_lifecycle_initialize_first_then_ready():
    async def go():
        server = Server()
        s = Session("c1")
        early = await server.request(s, "test/echo", mid=1)
        assert early["error"]["code"] == -32600 and "send initialize before test/echo" in early["error"]["message"]
        assert (await server.request(s, "ping", mid=2))["result"] == {}  # allowed before initialize
        assert (await server.request(s, "logging/setLevel", {"level": "info"}, mid=3))["result"] == {}
        init = await server.request(s, "initialize", INIT["params"], mid="i")
        assert init["result"]["serverInfo"] == {"name": "test", "version": "9"}
        assert init["result"]["protocolVersion"] == "2025-11-25"
        assert "tools" not in init["result"]["capabilities"] and "logging" in init["result"]["capabilities"]
        assert s.state == lifecycle.INITIALIZING and ("c1", False) in server.changes  # initialize is durable
        await server.send(s, {"jsonrpc": "2.0", "method": "notifications/initialized"})
        assert s.state == lifecycle.READY
        assert (await server.request(s, "test/echo", {"x": 1}, mid=4))["result"] == {"params": {"x": 1}}
    run(go())


def test_bad_messages_are_answered_and_responses_ignored():
    async def go():
        server = Server()
        s = await ready(server)
        server.out.clear()
        await server.send(s, b"{nope")
        await server.send(s, {"jsonrpc": "1.0", "id": 9, "method": "ping"})  # id readable: answered to 9
        await server.send(s, [{"jsonrpc": "2.0", "id": 1, "method": "ping"}])
        await server.send(s, {"jsonrpc": "2.0", "id": 5, "result": {}})  # a response: we sent no requests
        assert [(m["id"], m["error"]["code"]) for m in server.out] == [(None, -32700), (9, -32600), (None, -32600)]
        assert all("data" not in m["error"] for m in server.out)
        unknown = await server.request(s, "no/such", mid=10)
        assert unknown["error"] == {"code": -32601, "message": 'Method not found: "no/such"'}
    run(go())


def test_unknown_method_before_initialize_is_method_not_found():
    async def go():
        server = Server()
        assert (await server.request(Session("c1"), "no/such"))["error"]["code"] == -32601
    run(go())


def test_handler_errors():
    async def go():
        server = Server()
        s = await ready(server)
        refused = await server.request(s, "test/refuse", mid=1)
        assert refused["error"] == {"code": -32602, "message": "no", "data": {"why": "because"}}
        boom = await server.request(s, "test/boom", mid=2)
        assert boom["error"]["code"] == -32603 and boom["error"]["message"] == \
            "Internal error in test/boom: sensor on fire"
        assert [(m, type(e)) for m, e in server.errors] == [("test/boom", RuntimeError)]
        assert "result" in await server.request(s, "test/echo", mid=3)  # still serving
    run(go())


def test_an_id_in_flight_is_answered_once_and_reusable_after():
    async def go():
        server = Server()
        s = await ready(server)
        await server.send(s, {"jsonrpc": "2.0", "id": 5, "method": "test/hold"})
        task = s.inflight[5][0]
        await server.send(s, {"jsonrpc": "2.0", "id": 5, "method": "test/hold"})  # a QoS 1 redelivery
        assert s.inflight[5][0] is task
        server.gate.set()
        assert (await server.reply(5))["result"] == {"released": True}
        await finished(task)
        assert [m for m in server.out if m.get("id") == 5] == [{"jsonrpc": "2.0", "id": 5, "result": {"released": True}}]
        assert len(server.requests) == 1 and s.inflight == {}
        # the id is free again once answered
        assert (await server.request(s, "test/echo", {"n": 2}, mid=5))["result"] == {"params": {"n": 2}}
    run(go())


def test_cancellation_sends_no_response():
    async def go():
        server = Server()
        s = await ready(server)
        await server.send(s, {"jsonrpc": "2.0", "id": 6, "method": "test/hold"})
        await server.held.wait()
        task, req = s.inflight[6]
        await server.send(s, {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 6}})
        assert 6 not in s.inflight and req.cancelled.is_set()
        await finished(task)
        assert server.hold_cancelled.is_set()
        assert not [m for m in server.out if m.get("id") == 6]
        # cancelling what is not in flight, or with a bad id, changes nothing
        await server.send(s, {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 99}})
        await server.send(s, {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": True}})
        await server.send(s, {"jsonrpc": "2.0", "method": "notifications/cancelled"})
        assert "result" in await server.request(s, "test/echo", mid=7)
        assert server.notes == []  # lifecycle notifications never reach on_notification
    run(go())


def test_a_request_cancelled_before_it_ran():
    async def go():
        server = Server()
        s = await ready(server)
        await server.send(s, {"jsonrpc": "2.0", "id": 8, "method": "test/echo"})
        task = s.inflight[8][0]  # created, not started: handle() did not yield
        await server.send(s, {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 8}})
        await finished(task)
        assert task.cancelled() and s.inflight == {} and server.requests == []
        assert not [m for m in server.out if m.get("id") == 8]
    run(go())


def test_hooks_authorize_replay_notifications_deadline_and_durable():
    async def go():
        server = Server()
        s = await ready(server)
        server.refuse.add("test/echo")
        refused = await server.request(s, "test/echo", mid=1)
        assert refused["error"]["code"] == FORBIDDEN and server.requests == []
        server.refuse.clear()
        server.replayed.add(2)
        await server.send(s, {"jsonrpc": "2.0", "id": 2, "method": "test/echo"})
        assert 2 not in s.inflight and server.requests == []  # the replay hook answered it
        await server.send(s, {"jsonrpc": "2.0", "method": "notifications/roots/list_changed", "params": {"a": 1}})
        await server.send(s, {"jsonrpc": "2.0", "method": "notifications/progress"})
        assert server.notes == [("notifications/roots/list_changed", {"a": 1}), ("notifications/progress", {})]
        await server.send(s, {"jsonrpc": "2.0", "id": 3, "method": "test/echo"}, deadline=1234.5)
        await server.reply(3)
        assert server.requests[-1].deadline == 1234.5 and server.requests[-1].params == {}
        before = len(server.changes)
        await server.request(s, "test/echo", mid=4)
        assert len(server.changes) == before  # not durable
        await server.request(s, "test/remember", mid=5)
        assert server.changes[before:] == [("c1", False)]
    run(go())


def test_a_durable_method_is_persisted_before_its_answer_leaves():
    """A client that holds the answer to a durable request (initialize, a subscription) may
    see the server killed right after: the session must already be persisted by then
    (tests/test_unreliable.py kills the agent right after subscribe_resource)."""
    async def go():
        server = Server()
        order: list[str] = []
        emit, changed = server.emit, server.changed

        async def emit_logged(session: Any, msg: Any) -> None:
            if "id" in msg:
                order.append(f"answer {msg['id']}")
            await emit(session, msg)

        def changed_logged(session: Any, closed: bool = False) -> None:
            order.append("persisted")
            changed(session, closed)

        server.emit, server.changed = emit_logged, changed_logged  # type: ignore[method-assign]
        s = await ready(server)
        order.clear()
        await server.request(s, "test/remember", mid=5)
        await server.request(s, "test/echo", mid=6)
        assert order == ["persisted", "answer 5", "answer 6"]
    run(go())


def test_a_send_failure_is_logged_not_raised():
    async def go():
        server = Server()
        s = await ready(server)
        server.emit_fails = True
        await server.send(s, {"jsonrpc": "2.0", "id": 3, "method": "test/hold"})
        task = s.inflight[3][0]
        server.gate.set()
        await finished(task)
        assert task.exception() is None
        assert [(m, type(e)) for m, e in server.errors] == [("send", ConnectionError)]
        server.emit_fails = False
        assert "result" in await server.request(s, "test/echo", mid=4)
    run(go())


def test_cancel_all():
    async def go():
        server = Server()
        s = await ready(server)
        for mid in (1, 2):
            await server.send(s, {"jsonrpc": "2.0", "id": mid, "method": "test/hold"})
        await server.held.wait()
        entries = list(s.inflight.values())
        server.cancel_all(s)
        assert s.inflight == {} and all(req.cancelled.is_set() for _, req in entries)
        for task, _ in entries:
            await finished(task)
        assert not [m for m in server.out if m.get("id") in (1, 2)]
    run(go())


def test_emit_must_be_given_by_a_subclass():
    with pytest.raises(NotImplementedError):
        run(Dispatcher().emit(Session("c1"), {}))
