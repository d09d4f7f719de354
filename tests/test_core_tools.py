"""edge_agent.core.tools and edge_agent.core.results: the tools/call flow and result shapes
(MCP 2025-11-25 server/tools "Error Handling", "Tool Result")."""

from __future__ import annotations

import asyncio
import json
import math

import pytest

from edge_agent.core import results, tools
from edge_agent.core.jsonrpc import RpcError

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
          "required": ["n"]}


def run(coro):
    return asyncio.run(coro)


def test_name_and_arguments():
    assert tools.name_and_arguments({"name": "relay_set", "arguments": {"on": True}}) == ("relay_set", {"on": True})
    assert tools.name_and_arguments({"name": "ping_all"}) == ("ping_all", {})
    assert tools.name_and_arguments({"name": "x", "arguments": None}) == ("x", {})
    for params in ({}, {"name": 5}, {"name": None}):
        with pytest.raises(RpcError) as exc:
            tools.name_and_arguments(params)
        assert exc.value.code == -32602 and "params.name" in exc.value.message
    for bad in ([1], "a", 3):
        with pytest.raises(RpcError) as exc:
            tools.name_and_arguments({"name": "x", "arguments": bad})
        assert exc.value.code == -32602 and "arguments must be an object" in exc.value.message


def test_unknown_tool_is_a_protocol_error():
    err = tools.unknown("nope")
    assert (err.code, err.message) == (-32602, "Unknown tool: nope")
    assert tools.unknown("\ud800").message == 'Unknown tool: "\\ud800"'


def test_check_arguments_gives_a_tool_error_result():
    assert tools.check_arguments("pick", SCHEMA, {"n": 3}) is None
    refused = tools.check_arguments("pick", SCHEMA, {"n": 12})
    assert refused == {"content": [{"type": "text", "text": "Invalid arguments for pick: n: 12 is above the maximum 9"}],
                       "isError": True}
    # Python's json accepts Infinity and NaN: they must be refused, never crash the check
    wire = json.loads('{"n": Infinity}')
    assert tools.check_arguments("pick", SCHEMA, wire)["content"][0]["text"] == \
        "Invalid arguments for pick: n must be a finite integer, not Infinity"


def test_refusal_catches_nan_outside_the_schema():
    assert tools.refusal("t", None, {"a": 1}) is None
    assert tools.refusal("t", None, {"free": [1, math.nan]})["content"][0]["text"] == \
        "Invalid arguments for t: NaN and infinity are not accepted"
    assert tools.refusal("t", "x is wrong", {})["content"][0]["text"] == "Invalid arguments for t: x is wrong"


def test_invoke_sync_and_async_handlers():
    async def go():
        assert await tools.invoke("a", lambda: {"on": True}) == results.tool_result({"on": True})

        async def handler():
            await asyncio.sleep(0)
            return "moved"
        assert await tools.invoke("b", handler) == {"content": [{"type": "text", "text": "moved"}], "isError": False}
    run(go())


def test_invoke_value_error_is_the_callers_fault():
    failures = []

    def handler():
        raise ValueError("13° is unlucky")

    out = run(tools.invoke("servo", handler, lambda name, exc: failures.append(name)))
    assert out == results.tool_error("13° is unlucky") and failures == []


def test_invoke_other_errors_are_tool_failures():
    failures = []

    async def handler():
        raise OSError("I2C bus 1: remote I/O error")

    out = run(tools.invoke("bus_read", handler, lambda name, exc: failures.append((name, type(exc)))))
    assert out["isError"] is True
    assert out["content"][0]["text"] == "bus_read failed: OSError: I2C bus 1: remote I/O error"
    assert failures == [("bus_read", OSError)]
    assert run(tools.invoke("x", lambda: 1 / 0))["content"][0]["text"].startswith("x failed: ZeroDivisionError")


def test_invoke_lets_cancellation_through():
    async def go():
        started = asyncio.Event()

        async def handler():
            started.set()
            await asyncio.Event().wait()

        task = asyncio.ensure_future(tools.invoke("hold", handler))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    run(go())


def test_tool_result_shapes():
    assert results.tool_result(None) == {"content": [{"type": "text", "text": "ok"}], "isError": False}
    assert results.tool_result("hi") == {"content": [{"type": "text", "text": "hi"}], "isError": False}
    assert results.tool_result([1, 2]) == {"content": [{"type": "text", "text": "[1, 2]"}], "isError": False}
    out = results.tool_result({"t": 21.5, "unit": "°C"})
    assert out["structuredContent"] == {"t": 21.5, "unit": "°C"}
    assert json.loads(out["content"][0]["text"]) == out["structuredContent"]  # the same data for old clients
    assert "°C" in out["content"][0]["text"]  # non-ASCII kept
    assert results.tool_result(0)["content"][0]["text"] == "0"  # falsy values are values
    assert "structuredContent" not in results.tool_result(False)


def test_tool_error_and_resource_updated():
    assert results.tool_error("boom") == {"content": [{"type": "text", "text": "boom"}], "isError": True}
    assert results.resource_updated("sensor://a/b") == {
        "jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": "sensor://a/b"}}
