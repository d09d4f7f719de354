"""PUBACKs under ``ack_when_handled``, against a real Mosquitto: in the order the requests came
(MQTT 5.0 §4.6 [MQTT-4.6.0-2]) though a ping received after a slow tool call is answered first
(paho's ``ack`` watched; edge_agent/mqtt/acks.py), and slow calls holding theirs do not stall
other clients (the CONNECT Receive Maximum)."""

from __future__ import annotations

import asyncio
import time

from edge_agent.device import config as cfg
from edge_agent.device.runtime import Agent
from edge_agent.mqtt.acks import OrderedAcks

from .raw_client import RawMcpClient

NAME, SID = "devices/lab/acks", "acks-1"


def test_ordered_acks_hold_a_later_puback_until_the_earlier_ones():
    sent: list[int] = []
    flushes: list[int] = []
    acks = OrderedAcks(lambda mid, qos: sent.append(mid), lambda: flushes.append(len(sent)))
    a1, a2, a3 = acks.add(1, 1), acks.add(2, 1), acks.add(3, 1)
    a3()
    a2()
    assert sent == [] and len(acks) == 3  # 1 is still being handled
    a1()
    assert sent == [1, 2, 3] and flushes == [3] and len(acks) == 0
    a1()  # twice: nothing more
    assert sent == [1, 2, 3]
    old = acks.add(4, 1)
    acks.reset(7)  # a new connection: the old one's PUBACKs are not sent
    old()
    assert sent == [1, 2, 3]


async def _led_agent(broker, tmp_path) -> Agent:
    """A started ``unreliable`` agent (``ack_when_handled``) with an LED whose blink is a slow call."""
    data = {"device": {"server_name": NAME, "server_id": SID, "simulate": True, "state_dir": str(tmp_path / "s")},
            "link": {"profile": "unreliable"},
            "drivers": [{"kind": "led", "name": "status_led", "pin": 18}]}
    agent = Agent(cfg.from_dict(data), broker_url=broker.url)
    await agent.start(connect_timeout=20)
    return agent


def test_the_device_acknowledges_in_the_order_received_not_handled(broker, tmp_path):
    async def go():
        agent = await _led_agent(broker, tmp_path)
        client = agent.endpoint.transport.client
        order: list[int] = []
        paho_ack = client.ack
        client.ack = lambda mid, qos: (order.append(mid), paho_ack(mid, qos))[1]  # watch the PUBACKs
        received: list[tuple[int, bytes]] = []
        on_message = client.on_message
        client.on_message = lambda c, u, m: (received.append((m.mid, bytes(m.payload))), on_message(c, u, m))[1]
        caller = await asyncio.to_thread(RawMcpClient, broker.url, "acks-caller", SID, NAME)
        try:
            await asyncio.to_thread(caller.initialize)
            caller.send("tools/call", {"name": "status_led_blink",
                                       "arguments": {"times": 1, "on_time": 0.6, "off_time": 0.05}}, id="slow")
            for i in range(5):
                caller.send("ping", id=f"p{i}")
            pings = [await asyncio.to_thread(caller.wait_response, f"p{i}", 10) for i in range(5)]
            assert all(p.get("result") == {} for p in pings)
            assert not caller.responses("slow"), "the pings were answered after the slow call"
            await asyncio.to_thread(caller.wait_response, "slow", 15)
            deadline = time.monotonic() + 5
            while len(order) < len(received) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            mine = [mid for mid, payload in received if b'"id": "slow"' in payload or b'"id": "p' in payload]
            assert len(mine) == 6, received
            acked = [m for m in order if m in mine]
            assert acked == mine, f"PUBACKs {acked} for messages received as {mine}"
        finally:
            await asyncio.to_thread(caller.close)
            await agent.stop()

    asyncio.run(go())


def test_slow_calls_held_unacknowledged_do_not_stall_other_clients(broker, tmp_path):
    """``unreliable`` acknowledges a request only once handled: 40 slow calls (more than
    Mosquitto's default window of 20 unacknowledged messages) from five clients hold theirs,
    and a sixth client's ping is still answered long before the first of them ends (the
    CONNECT Receive Maximum, 1024, is the window; without it the ping waits behind them)."""

    async def go():
        agent = await _led_agent(broker, tmp_path)
        callers = [await asyncio.to_thread(RawMcpClient, broker.url, f"slow-{i}", SID, NAME) for i in range(5)]
        quiet = await asyncio.to_thread(RawMcpClient, broker.url, "quiet-slow", SID, NAME)
        try:
            for c in [*callers, quiet]:
                await asyncio.to_thread(c.initialize)
            for c in callers:
                for i in range(8):
                    c.send("tools/call", {"name": "status_led_blink", "arguments": {"times": 1, "on_time": 1.0,
                                                                                    "off_time": 0.05}}, id=f"s{i}")
            await asyncio.sleep(0.3)  # all 40 reached the broker
            reply = await asyncio.to_thread(quiet.request, "ping", None, 30)
            assert reply.get("result") == {}, reply
            pinged = time.time()
            first = [r.at for c in callers for r in c.received
                     if r.message and str(r.message.get("id", "")).startswith("s") and "method" not in r.message]
            assert not first or min(first) > pinged, "the ping waited for a slow call to end"
        finally:
            for c in [*callers, quiet]:
                await asyncio.to_thread(c.close)
            await agent.stop()

    asyncio.run(go())
