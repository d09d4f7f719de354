"""The MCP server core without any network: messages in, messages out."""

from __future__ import annotations

import asyncio
import json

import pytest

from edge_agent.core.jsonrpc import RpcError, decode
from edge_agent.errors import ToolInputError
from edge_agent.server import (
    McpServer,
    Prompt,
    PromptArgument,
    Registry,
    Resource,
    ResourceTemplate,
    ServerInfo,
    Tool,
)


def make_server(page_size: int = 50):
    reg = Registry()
    calls: list[dict] = []

    async def set_angle(args, ctx):
        calls.append(args)
        if args["angle"] == 13:
            raise ToolInputError("13° is unlucky for this servo")
        return {"angle": args["angle"]}

    async def broken(args, ctx):
        raise OSError("I2C bus 1: remote I/O error")

    async def slow(args, ctx):
        for i in range(1, 4):
            ctx.progress(i, 3, f"step {i}")
            await asyncio.sleep(0.01)
        while not ctx.cancelled.is_set() and args.get("forever"):
            await asyncio.sleep(0.01)
        return "done"

    reg.add_tool(Tool("servo_set_angle", "Set the angle", {
        "type": "object", "properties": {"angle": {"type": "number", "minimum": -90, "maximum": 90}},
        "required": ["angle"], "additionalProperties": False}, set_angle,
        output_schema={"type": "object", "properties": {"angle": {"type": "number"}}}))
    reg.add_tool(Tool("bus_read", "Read the bus", {"type": "object"}, broken))
    reg.add_tool(Tool("slow_sweep", "Slow", {"type": "object", "properties": {"forever": {"type": "boolean"}}}, slow))
    for i in range(5):
        async def read(i=i):
            return json.dumps({"value": i, "unit": "°C"})
        reg.add_resource(Resource(f"sensor://t{i}/temperature", f"t{i}", read))

    async def hist(uri, variables):
        if variables["driver"] != "t1":
            raise KeyError("no such sensor")
        return json.dumps({"samples": []})

    reg.add_template(ResourceTemplate("sensor://{driver}/{sensor}/history", "history", hist))

    async def render(args):
        return "desc", [{"role": "user", "content": {"type": "text", "text": f"focus={args.get('focus')}"}}]

    reg.add_prompt(Prompt("report", "A report", render, [PromptArgument("focus", required=True,
                                                                         complete=lambda p: [x for x in ("all", "air") if x.startswith(p)])]))
    server = McpServer(reg, ServerInfo("edge-agent", "0.1.0"), page_size=page_size)
    return server, calls


class Wire:
    """One client session of ``server``: what the server sends it lands in :attr:`out`, and
    :meth:`request` waits for the reply (on an event set by each message, not by polling)."""

    def __init__(self, server):
        self.server = server
        self.out: list[dict] = []
        self._arrived = asyncio.Event()
        self.session = server.open_session("c1", self.deliver)

    def deliver(self, msg: dict) -> None:
        self.out.append(msg)
        self._arrived.set()

    async def send(self, msg):
        """Hand one message to the server. Notifications and refusals of malformed messages are
        handled before this returns; a request runs on as a task (see :meth:`request`)."""
        payload = msg if isinstance(msg, (str, bytes)) else json.dumps(msg)
        await self.server.handle(self.session, payload)

    async def wait_for(self, predicate, after: int = 0, timeout: float = 5.0) -> dict:
        """The first message from index ``after`` on that ``predicate`` accepts, waiting for it."""
        async with asyncio.timeout(timeout):
            while True:
                self._arrived.clear()
                found = [m for m in self.out[after:] if predicate(m)]
                if found:
                    return found[0]
                await self._arrived.wait()

    async def request(self, method, params=None, id=1):
        msg = {"jsonrpc": "2.0", "id": id, "method": method}
        if params is not None:
            msg["params"] = params
        before = len(self.out)
        await self.send(msg)
        try:
            return await self.wait_for(lambda m: m.get("id") == id and ("result" in m or "error" in m), before)
        except TimeoutError:
            raise AssertionError(f"no reply to {method} within 5 s") from None

    async def init(self, version="2025-11-25"):
        r = await self.request("initialize", {"protocolVersion": version, "capabilities": {},
                                              "clientInfo": {"name": "t", "version": "1"}}, id="init_1")
        await self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return r


def run(coro):
    return asyncio.run(coro)


def test_version_negotiation():
    async def go():
        for asked, answered in [("2024-11-05", "2024-11-05"), ("2025-03-26", "2025-03-26"),
                                ("2025-06-18", "2025-06-18"), ("2025-11-25", "2025-11-25"), ("1999-01-01", "2025-11-25")]:
            w = Wire(make_server()[0])
            r = await w.init(asked)
            assert r["id"] == "init_1"  # string ids are answered as strings
            assert r["result"]["protocolVersion"] == answered
            assert r["result"]["serverInfo"] == {"name": "edge-agent", "version": "0.1.0"}
            assert r["result"]["capabilities"]["resources"] == {"subscribe": True, "listChanged": True}
    run(go())


def test_errors_for_bad_messages():
    async def go():
        w = Wire(make_server()[0])
        r = await w.request("tools/list")
        assert r["error"]["code"] == -32600 and "initialize" in r["error"]["message"]
        assert (await w.request("ping"))["result"] == {}  # ping is allowed before initialize
        await w.init()
        await w.send(b"{not json")
        assert w.out[-1]["error"]["code"] == -32700 and w.out[-1]["id"] is None
        await w.send("[1, 2]")
        assert w.out[-1]["error"]["code"] == -32600
        await w.send({"jsonrpc": "1.0", "id": 9, "method": "ping"})
        assert w.out[-1] == {"jsonrpc": "2.0", "id": 9, "error": w.out[-1]["error"]} and w.out[-1]["error"]["code"] == -32600
        assert (await w.request("no/such", id=10))["error"]["code"] == -32601
        r = await w.request("initialize", {}, id=11)
        assert r["error"]["code"] == -32602
    run(go())


def test_decode_rejects_null_and_bool_ids():
    for bad in ('{"jsonrpc":"2.0","id":null,"method":"ping"}', '{"jsonrpc":"2.0","id":true,"method":"ping"}',
                '{"jsonrpc":"2.0","method":5}', '{"jsonrpc":"2.0","id":1,"method":"x","params":[1]}'):
        with pytest.raises(RpcError) as exc:
            decode(bad)
        assert exc.value.code == -32600


def test_tools_call_validation_and_results():
    async def go():
        server, calls = make_server()
        w = Wire(server)
        await w.init()
        ok = await w.request("tools/call", {"name": "servo_set_angle", "arguments": {"angle": 45}}, id=2)
        assert ok["result"]["structuredContent"] == {"angle": 45}
        assert json.loads(ok["result"]["content"][0]["text"]) == {"angle": 45}
        out_of_range = await w.request("tools/call", {"name": "servo_set_angle", "arguments": {"angle": 500}}, id=3)
        assert out_of_range["result"]["isError"] is True
        assert "angle" in out_of_range["result"]["content"][0]["text"] and "90" in out_of_range["result"]["content"][0]["text"]
        wrong_type = await w.request("tools/call", {"name": "servo_set_angle", "arguments": {"angle": "left"}}, id=4)
        assert wrong_type["result"]["isError"] is True
        refused = await w.request("tools/call", {"name": "servo_set_angle", "arguments": {"angle": 13}}, id=5)
        assert refused["result"]["isError"] and "unlucky" in refused["result"]["content"][0]["text"]
        assert calls == [{"angle": 45}, {"angle": 13}]  # the invalid ones never reached the handler
        failing = await w.request("tools/call", {"name": "bus_read"}, id=6)
        assert failing["result"]["isError"] and "remote I/O error" in failing["result"]["content"][0]["text"]
        unknown = await w.request("tools/call", {"name": "nope"}, id=7)
        assert unknown["error"]["code"] == -32602
        bad_args = await w.request("tools/call", {"name": "servo_set_angle", "arguments": [1]}, id=8)
        assert bad_args["error"]["code"] == -32602
    run(go())


def test_progress_and_cancellation():
    async def go():
        w = Wire(make_server()[0])
        await w.init()
        r = await w.request("tools/call", {"name": "slow_sweep", "_meta": {"progressToken": "p1"}}, id=2)
        assert r["result"]["content"][0]["text"] == "done"
        # the progress notifications were sent before the response: all here already
        progress = [m["params"] for m in w.out if m.get("method") == "notifications/progress"]
        assert [p["progress"] for p in progress] == [1, 2, 3] and progress[0]["progressToken"] == "p1"
        assert progress[0]["total"] == 3
        await w.send({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "slow_sweep", "arguments": {"forever": True}}})
        assert 3 in w.session.inflight
        task, req = w.session.inflight[3]
        await w.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 3, "reason": "user"}})
        assert 3 not in w.session.inflight and req.cancelled.is_set()
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 5)  # the call has ended
        assert task.done()
        assert not [m for m in w.out if m.get("id") == 3]  # no response after cancellation
    run(go())


def test_pagination_and_bad_cursor():
    async def go():
        w = Wire(make_server(page_size=2)[0])
        await w.init()
        uris, cursor, pages = [], None, 0
        while True:
            r = await w.request("resources/list", {"cursor": cursor} if cursor else {}, id=100 + pages)
            uris += [x["uri"] for x in r["result"]["resources"]]
            pages += 1
            cursor = r["result"].get("nextCursor")
            if not cursor:
                break
        assert pages == 3 and uris == [f"sensor://t{i}/temperature" for i in range(5)]
        assert (await w.request("resources/list", {"cursor": "garbage!"}, id=200))["error"]["code"] == -32602
    run(go())


def test_resources_read_subscribe_and_updates():
    async def go():
        server, _ = make_server()
        broadcast: list[dict] = []
        server.broadcast = broadcast.append
        w = Wire(server)
        await w.init()
        r = await w.request("resources/read", {"uri": "sensor://t2/temperature"}, id=2)
        assert json.loads(r["result"]["contents"][0]["text"]) == {"value": 2, "unit": "°C"}
        assert (await w.request("resources/read", {"uri": "sensor://zz/none"}, id=3))["error"]["code"] == -32002
        assert (await w.request("resources/read", {"uri": "sensor://t9/x/history"}, id=4))["error"]["code"] == -32002
        assert "result" in await w.request("resources/read", {"uri": "sensor://t1/x/history?limit=2"}, id=5)
        templates = await w.request("resources/templates/list", id=6)
        assert templates["result"]["resourceTemplates"][0]["uriTemplate"] == "sensor://{driver}/{sensor}/history"
        assert server.resource_updated("sensor://t2/temperature") is False  # nobody subscribed
        assert (await w.request("resources/subscribe", {"uri": "sensor://t2/temperature"}, id=7))["result"] == {}
        assert server.resource_updated("sensor://t2/temperature") is True
        assert broadcast == [{"jsonrpc": "2.0", "method": "notifications/resources/updated",
                              "params": {"uri": "sensor://t2/temperature"}}]
        await w.request("resources/unsubscribe", {"uri": "sensor://t2/temperature"}, id=8)
        assert server.resource_updated("sensor://t2/temperature") is False
        assert (await w.request("resources/subscribe", {"uri": "nope://x"}, id=9))["error"]["code"] == -32002
    run(go())


def test_prompts_logging_and_completion():
    async def go():
        server, _ = make_server()
        w = Wire(server)
        await w.init()
        assert (await w.request("prompts/list", id=2))["result"]["prompts"][0]["arguments"][0]["required"] is True
        got = await w.request("prompts/get", {"name": "report", "arguments": {"focus": "air"}}, id=3)
        assert got["result"]["messages"][0]["content"]["text"] == "focus=air"
        assert (await w.request("prompts/get", {"name": "report"}, id=4))["error"]["code"] == -32602
        assert (await w.request("prompts/get", {"name": "nope"}, id=5))["error"]["code"] == -32602
        comp = await w.request("completion/complete", {"ref": {"type": "ref/prompt", "name": "report"},
                                                       "argument": {"name": "focus", "value": "a"}}, id=6)
        assert comp["result"]["completion"]["values"] == ["all", "air"]
        server.log_all("info", "hello")
        assert not [m for m in w.out if m.get("method") == "notifications/message"]  # default level: warning
        assert (await w.request("logging/setLevel", {"level": "debug"}, id=7))["result"] == {}
        server.log_all("info", "hello")
        assert w.out[-1] == {"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "hello"}}
        assert (await w.request("logging/setLevel", {"level": "loud"}, id=8))["error"]["code"] == -32602
    run(go())


def test_reinitialize_replaces_session_and_close_cancels():
    async def go():
        server, _ = make_server()
        w = Wire(server)
        await w.init()
        await w.request("resources/subscribe", {"uri": "sensor://t0/temperature"}, id=2)
        await w.send({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "slow_sweep", "arguments": {"forever": True}}})
        task, req = w.session.inflight[3]
        event = req.cancelled
        w.session = server.open_session("c1", w.deliver)  # a second initialize from the same id
        await w.init()
        assert event.is_set()
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 5)  # the old call has ended
        assert task.done()
        assert not [m for m in w.out if m.get("id") == 3]
        assert not server.subscribed("sensor://t0/temperature")
        assert server.close_session("c1") and not server.close_session("c1")
    run(go())
