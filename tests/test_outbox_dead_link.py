"""The outbox policy holds on a dead link (issue 12 item 5): what the agent handed to paho but
the broker never acknowledged counts against the same policy, so under a full outbox on a
half-open link no notification is dropped while telemetry could be; every loss is counted in
``device://link``, QoS 0 too. Real Mosquitto; the dead link is tests/faults.py's BlackholeProxy
(packets vanish, no RST)."""

from __future__ import annotations

import asyncio
import time

from edge_agent.device import config as cfg
from edge_agent.device.runtime import Agent

from .faults import BlackholeProxy
from .raw_client import RawMcpClient

NAME, SID = "devices/lab/dead-link", "dead-link-1"
UPTIME = "sensor://system/uptime"
BLINKS = 30


def agent_config(tmp_path, **link):
    data = {"device": {"server_name": NAME, "server_id": SID, "simulate": True, "state_dir": str(tmp_path / "state")},
            "link": {"reconnect_min": 0.1, "reconnect_max": 0.3, "keepalive": 2, "connack_timeout": 1, **link},
            "drivers": [{"kind": "system", "name": "system", "poll_interval": 0.05, "deadband": 0},
                        {"kind": "led", "name": "status_led", "pin": 27}]}
    return cfg.from_dict(data)


def test_full_outbox_on_a_dead_link_drops_telemetry_never_notifications(broker, tmp_path):
    proxy = BlackholeProxy(broker.port)

    async def go():
        agent = Agent(agent_config(tmp_path, profile="unreliable", outbox_max_messages=40, max_inflight=10),
                      broker_url=proxy.url)
        await agent.start(connect_timeout=20)
        transport = agent.endpoint.transport
        client = await asyncio.to_thread(RawMcpClient, broker.url, "dead-link-watch", SID, NAME, persistent=True)
        try:
            await asyncio.to_thread(client.initialize)
            await asyncio.to_thread(client.request, "resources/subscribe", {"uri": UPTIME})
            client.send("tools/call", {"name": "status_led_blink", "arguments": {
                "times": BLINKS, "on_time": 0.05, "off_time": 0.05}, "_meta": {"progressToken": "blink"}}, id="blink")
            await asyncio.sleep(0.3)
            proxy.blackhole()  # not yet noticed: paho keeps taking messages for a dead socket
            cut = time.monotonic()
            while transport.connected.is_set():
                await asyncio.sleep(0.05)
            await asyncio.sleep(max(0.0, 4.5 - (time.monotonic() - cut)))  # the blink ends meanwhile
            during = transport.link_health()
            proxy.restore()
            answer = await asyncio.to_thread(client.wait_response, "blink", 30)
            assert answer["result"]["structuredContent"]["blinks"] == BLINKS, answer
            deadline = time.monotonic() + 20
            while transport.link_health()["outbox"]["messages"] and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            link = transport.link_health()
        finally:
            await asyncio.to_thread(client.close)
            await agent.stop()
            proxy.close()
        progress = sorted({r.message["params"]["progress"] for r in client.received
                           if r.message and r.message.get("method") == "notifications/progress"})
        drops = link["drops"]
        print(f"\ndead link, outbox bound 40: {len(progress)}/{BLINKS} progress notifications delivered, "
              f"drops {drops}, in flight/waiting at the worst {during['outbox']}")
        assert drops.get("outbox_full_telemetry", 0) > 0, ("the outbox never filled: the test proves nothing", link)
        assert not drops.get("outbox_full_notification"), drops
        assert progress == list(range(1, BLINKS + 1)), f"progress notifications lost: {progress}"

    asyncio.run(go())


def test_qos0_telemetry_lost_on_a_dead_link_is_counted(broker, tmp_path):
    """lan: telemetry is QoS 0; what went into the dead connection is counted, not silently lost."""
    proxy = BlackholeProxy(broker.port)

    async def go():
        agent = Agent(agent_config(tmp_path, profile="lan"), broker_url=proxy.url)
        await agent.start(connect_timeout=20)
        transport = agent.endpoint.transport
        client = await asyncio.to_thread(RawMcpClient, broker.url, "qos0-watch", SID, NAME)
        try:
            await asyncio.to_thread(client.initialize)
            await asyncio.to_thread(client.request, "resources/subscribe", {"uri": UPTIME})
            await asyncio.sleep(0.3)
            proxy.blackhole()
            while transport.connected.is_set():
                await asyncio.sleep(0.05)
            proxy.restore()
            await asyncio.wait_for(transport.connected.wait(), 20)
            drops = transport.link_health()["drops"]
        finally:
            await asyncio.to_thread(client.close)
            await agent.stop()
            proxy.close()
        print(f"\nlan, dead link: {drops.get('qos0_unconfirmed')} QoS 0 updates counted as unconfirmed")
        assert drops.get("qos0_unconfirmed", 0) >= 20, drops  # ~3 s at 20 updates/s went into the void

    asyncio.run(go())


def test_waiting_rows_take_turns_by_topic_and_keep_each_topics_order():
    """Rows waiting for the in-flight window: round-robin by topic (one client's backlog of
    answers does not hold up another's), oldest first within a topic (issue 12 item 7)."""
    from dataclasses import dataclass

    from edge_agent.mqtt.outbox import WaitingRows

    @dataclass
    class Row:
        id: int
        topic: str

    flood, quiet, cap = "$mcp-rpc/flood/s/d/x", "$mcp-rpc/quiet/s/d/x", "$mcp-server/capability/s/d/x"
    waiting = WaitingRows()
    for i in range(1, 6):
        waiting.add(Row(i, flood))  # type: ignore[arg-type]
    waiting.add(Row(6, quiet))  # type: ignore[arg-type]
    waiting.add(Row(7, cap))  # type: ignore[arg-type]
    waiting.add(Row(8, quiet))  # type: ignore[arg-type]
    assert waiting.rpc("flood") == 5 and waiting.rpc("quiet") == 2 and len(waiting) == 8
    assert waiting.discard(3) is not None and waiting.discard(3) is None and 3 not in waiting
    order = [waiting.pop_next().id for _ in range(len(waiting))]
    assert order == [1, 6, 7, 2, 8, 4, 5], order  # turns: flood, quiet, capability, flood, quiet, ...
    assert waiting.rpc("flood") == 0 and len(waiting) == 0
