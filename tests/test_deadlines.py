"""Deadlines that hold (issue 12 item 3): a tool call that is not read-only is never executed
after its deadline, however it got late:

- in the broker's queue (the agent was away; its persistent session kept the request);
- in flight on a dead TCP connection, sent again by the broker with DUP after the reconnect
  (the case Message Expiry alone does not bound);
- unacknowledged when the agent crashed (waiting for its driver), sent again after the restart;

and our cloud client stamps ``_meta["dev.edge-agent/deadline"]`` on every request. Against a
real Mosquitto; the dead link is tests/faults.py's BlackholeProxy."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import pytest

from edge_agent.cloud import connect
from edge_agent.device import config as cfg
from edge_agent.device.runtime import Agent

from .agent_process import AgentProcess, RawSubscriber, write_config
from .faults import BlackholeProxy
from .raw_client import RawMcpClient

NAME, SID = "devices/lab/deadlines", "deadlines-1"
SKEW = 0.2


def agent_config(tmp_path, **link):
    data = {"device": {"server_name": NAME, "server_id": SID, "simulate": True, "state_dir": str(tmp_path / "state")},
            "link": {"profile": "unreliable", "reconnect_min": 0.1, "reconnect_max": 0.3, "deadline_skew": SKEW,
                     **link},
            "drivers": [{"kind": "relay", "name": "pump_relay", "pin": 17}]}
    return cfg.from_dict(data)


def on_call(client: RawMcpClient, deadline: float, id: str, name: str = "pump_relay_on") -> None:
    client.send("tools/call", {"name": name, "arguments": {}, "_meta": {"dev.edge-agent/deadline": deadline}}, id=id)


def state(client: RawMcpClient, uri: str = "sensor://pump_relay/state") -> bool:
    reply = client.request("resources/read", {"uri": uri})
    return json.loads(reply["result"]["contents"][0]["text"])["value"]


def refused(answer: dict) -> bool:
    result = answer.get("result") or {}
    return bool(result.get("isError")) and "after its deadline" in result["content"][0]["text"]


def test_late_in_the_broker_queue_is_refused(broker, tmp_path):
    async def go():
        config = agent_config(tmp_path)
        agent = Agent(config, broker_url=broker.url)
        await agent.start(connect_timeout=20)
        client = await asyncio.to_thread(RawMcpClient, broker.url, "late-queue", SID, NAME, persistent=True)
        try:
            await asyncio.to_thread(client.initialize)
            await agent.stop()  # away; the broker keeps its session and queues what comes
            on_call(client, time.time() + 0.3, "late-1")
            await asyncio.sleep(0.3 + SKEW + 0.5)
            agent = Agent(config, broker_url=broker.url)
            await agent.start(connect_timeout=20)
            answer = await asyncio.to_thread(client.wait_response, "late-1", 20)
            assert refused(answer), answer
            assert await asyncio.to_thread(state, client) is False  # never executed
            on_call(client, time.time() + 30, "timely-1")  # a call in time still runs
            answer = await asyncio.to_thread(client.wait_response, "timely-1", 20)
            assert answer["result"]["structuredContent"] == {"state": True}, answer
        finally:
            await asyncio.to_thread(client.close)
            await agent.stop()

    asyncio.run(go())


def test_late_by_dup_redelivery_after_a_dead_link_is_refused(broker, tmp_path):
    """The request is handed to the agent's TCP connection while it is dead (no RST): the broker
    sends it again, with DUP, once the agent has reconnected, seconds after its deadline."""
    proxy = BlackholeProxy(broker.port)

    async def go():
        agent = Agent(agent_config(tmp_path, keepalive=2, connack_timeout=2), broker_url=proxy.url)
        await agent.start(connect_timeout=20)
        transport = agent.endpoint.transport
        client = await asyncio.to_thread(RawMcpClient, broker.url, "late-dup", SID, NAME, persistent=True)
        try:
            await asyncio.to_thread(client.initialize)
            proxy.blackhole()
            on_call(client, time.time() + 0.5, "late-dup-1")  # the broker sends it into the void
            while transport.connected.is_set():  # noticed after ~1.5 keepalives
                await asyncio.sleep(0.05)
            proxy.restore()
            answer = await asyncio.to_thread(client.wait_response, "late-dup-1", 30)
            assert refused(answer), answer
            assert transport.link_health()["redelivered"] >= 1, "the request was not sent again with DUP"
            assert await asyncio.to_thread(state, client) is False
        finally:
            await asyncio.to_thread(client.close)
            await agent.stop()
            proxy.close()

    asyncio.run(go())


def test_late_after_an_agent_crash_is_refused(broker, tmp_path):
    """The call waits for its driver (a blink holds it) when the agent is SIGKILLed; the broker
    sends the unacknowledged request again after the restart: past its deadline, refused."""
    drivers = f"""
[link]
profile = "unreliable"
keepalive = 5
reconnect_min = 0.05
reconnect_max = 0.2
deadline_skew = {SKEW}

[[drivers]]
kind = "led"
name = "status_led"
pin = 27
"""
    config = write_config(tmp_path / "agent.toml", server_name=NAME, server_id=SID, drivers=drivers,
                          state_dir=tmp_path / "state")
    agent = AgentProcess(config, broker.url, SID, NAME).start()
    client = RawMcpClient(broker.url, "late-crash", SID, NAME, persistent=True)
    try:
        client.initialize()
        client.send("tools/call", {"name": "status_led_blink", "arguments": {"times": 10, "on_time": 0.2,
                                                                            "off_time": 0.2}}, id="blink")
        time.sleep(0.3)
        on_call(client, time.time() + 1.0, "late-crash-1", name="status_led_on")  # waits for the blink
        time.sleep(0.4)
        agent.signal(signal.SIGKILL)
        agent.wait()
        time.sleep(1.0 + SKEW)
        agent.start()
        answer = client.wait_response("late-crash-1", 30)
        assert refused(answer), answer
        assert state(client, "sensor://status_led/state") is False
    finally:
        client.close()
        agent.stop()


@pytest.mark.anyio
async def test_cloud_client_stamps_a_deadline_on_every_request(broker, tmp_path):
    agent = Agent(agent_config(tmp_path), broker_url=broker.url)
    await agent.start(connect_timeout=20)
    spy = await asyncio.to_thread(RawSubscriber, broker.url, [f"$mcp-server/{SID}/#", f"$mcp-rpc/+/{SID}/#"])
    try:
        before = time.time()
        async with connect(broker.url, NAME, read_timeout_seconds=20, call_deadline=5) as session:
            await session.list_tools()
            await session.call_tool("pump_relay_on", {})
        requests = [json.loads(m.payload) for m in list(spy.messages) if m.payload]
        requests = [r for r in requests if "method" in r and "id" in r]
        assert {r["method"] for r in requests} >= {"initialize", "tools/list", "tools/call"}
        for r in requests:
            deadline = r["params"]["_meta"]["dev.edge-agent/deadline"]
            horizon = 5 if r["method"] == "tools/call" else 20
            assert before + horizon - 1 < deadline < time.time() + horizon + 1, r
    finally:
        await asyncio.to_thread(spy.close)
        await agent.stop()


@pytest.fixture
def anyio_backend():
    return "asyncio"
