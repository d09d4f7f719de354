"""The busy lane (issue 12 item 7, edge_agent/mqtt/lanes.py), against a real Mosquitto.

A client that pipelines moves to a second MQTT session of the server, so its flood queues at
the broker apart from the other clients' requests; it moves back when calm, and at once when
the lane's connection dies. Nothing it sent is left unanswered by any of these moves.
(Latency figures: ``python bench/durability.py --scenarios fairness``.)
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time

from edge_agent.device import config as cfg
from edge_agent.device.runtime import Agent

from .raw_client import RawMcpClient

NAME, SID = "devices/lab/lane", "lane-1"


def _agent(broker, tmp_path, **link):
    data = {"device": {"server_name": NAME, "server_id": SID, "simulate": True, "state_dir": str(tmp_path / "s")},
            "link": {"busy_lane_after": 8, **link},
            "drivers": [{"kind": "relay", "name": "pump_relay", "pin": 17}]}
    return Agent(cfg.from_dict(data), broker_url=broker.url)


async def _until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.02)


def _answered(client: RawMcpClient, prefix: str) -> set[str]:
    with client.lock:
        return {r.message["id"] for r in client.received
                if r.message and "method" not in r.message and str(r.message.get("id", "")).startswith(prefix)}


def test_a_pipelining_client_moves_to_the_lane_and_back_and_everything_is_answered(broker, tmp_path):
    async def go():
        agent = _agent(broker, tmp_path, busy_lane_calm=2.0)
        await agent.start(connect_timeout=20)
        transport = agent.endpoint.transport
        flooder = await asyncio.to_thread(RawMcpClient, broker.url, "flooder", SID, NAME)
        quiet = await asyncio.to_thread(RawMcpClient, broker.url, "quiet", SID, NAME)
        try:
            await asyncio.to_thread(flooder.initialize)
            await asyncio.to_thread(quiet.initialize)
            await _until(lambda: transport.lane is not None and transport.lane.up, 10, "the lane (standby) is up")
            assert transport.lane.client_id == f"{SID}-busy"
            # below Mosquitto's max_queued_messages (1,000) per session: with a bigger flood on a
            # loaded machine the broker may drop what overflows a queue (the lane's requests, or
            # the answers queued for this flooder, whose paho thread shares this process with the
            # agent), unanswered (docs/unreliable-links.md); every request the agent gets is answered
            n = 900
            for i in range(n):  # pipelined, nothing awaited
                flooder.send("ping", id=f"f{i}")
            quiet_answers = [await asyncio.to_thread(quiet.request, "ping", None, 10) for _ in range(20)]
            assert all(a.get("result") == {} for a in quiet_answers), quiet_answers[:3]
            await _until(lambda: len(_answered(flooder, "f")) >= n, 60, "every flood request answered")
            link = transport.link_health()["busy_lane"]
            # (on a loaded machine a pause in the flood longer than busy_lane_calm may move it back
            # and forth once more: at least one move, and it is on the lane now)
            assert link["moves"] >= 1 and link["clients"] == 1, link
            assert link["received"] > 0, link  # the flood came on the lane once it moved
            assert link["late"] < n, link  # ... and stopped coming on the main connection
            with flooder.lock:  # once each: a copy that reached both sessions during the move is dropped
                counts = collections.Counter(r.message["id"] for r in flooder.received if r.message
                                             and "method" not in r.message and str(r.message.get("id")).startswith("f"))
            assert max(counts.values()) == 1, [k for k, v in counts.items() if v > 1][:5]
            errors = {r.message["error"]["code"] for r in flooder.received
                      if r.message and "error" in r.message and str(r.message.get("id")).startswith("f")}
            assert errors <= {-32004}, errors
            # calm for busy_lane_calm: back on the main connection, and still served there
            moves = transport.link_health()["busy_lane"]["moves"]
            await _until(lambda: transport.link_health()["busy_lane"]["returns"] == moves, 20, "the client moves back")
            assert "flooder" not in transport.lanes.on_lane
            received = transport.lane.received
            reply = await asyncio.to_thread(flooder.request, "ping", None, 10)
            assert reply.get("result") == {}, reply
            assert transport.lane.received == received, "served on the lane after it moved back"
        finally:
            await asyncio.to_thread(flooder.close)
            await asyncio.to_thread(quiet.close)
            await agent.stop()

    asyncio.run(go())


@contextlib.asynccontextmanager
async def _flooder(broker, tmp_path, client_id: str, **link):
    """An agent (``_agent``) and one initialized raw client; both closed at the end."""
    agent = _agent(broker, tmp_path, **link)
    await agent.start(connect_timeout=20)
    client = await asyncio.to_thread(RawMcpClient, broker.url, client_id, SID, NAME)
    try:
        await asyncio.to_thread(client.initialize)
        yield agent.endpoint.transport, client
    finally:
        await asyncio.to_thread(client.close)
        await agent.stop()


def test_when_the_lane_dies_its_clients_are_served_on_the_main_connection(broker, tmp_path):
    async def go():
        async with _flooder(broker, tmp_path, "flooder2", busy_lane_calm=600.0) as (transport, flooder):
            await _until(lambda: transport.lane is not None and transport.lane.up, 10, "the lane is up")
            for i in range(200):
                flooder.send("ping", id=f"g{i}")
            await _until(lambda: "flooder2" in transport.lanes.on_lane, 20, "the flooder moves to the lane")
            await _until(lambda: len(_answered(flooder, "g")) >= 200, 30, "the flood answered")
            transport.driver.drop(transport.lane.client)  # the lane's TCP connection dies
            await _until(lambda: "flooder2" not in transport.lanes.on_lane, 10, "its clients leave the lane")
            reply = await asyncio.to_thread(flooder.request, "ping", None, 10)
            assert reply.get("result") == {}, reply
            await _until(lambda: transport.lane.up, 20, "the lane reconnects")
            assert not transport.lanes.on_lane

    asyncio.run(go())


def test_busy_lane_after_zero_keeps_one_broker_session(broker, tmp_path):
    async def go():
        async with _flooder(broker, tmp_path, "flooder3", busy_lane_after=0) as (transport, flooder):
            for i in range(300):
                flooder.send("ping", id=f"h{i}")
            await _until(lambda: len(_answered(flooder, "h")) >= 300, 30, "the flood answered")
            assert transport.lane is None and transport.link_health()["busy_lane"]["moves"] == 0

    asyncio.run(go())


def test_requests_queued_on_the_lane_while_the_agent_was_killed_are_answered_after_the_restart(broker, tmp_path):
    """``unreliable`` (persistent sessions): SIGKILL while a client is on the lane; what it sends
    meanwhile waits in the lane's broker session and is answered once the agent is back."""
    import json
    import signal

    from .agent_process import AgentProcess, write_config

    sid, name = "lane-kill", "devices/lab/lanekill"
    config = write_config(tmp_path / "a.toml", server_name=name, server_id=sid, state_dir=tmp_path / "state",
                          drivers='[[drivers]]\nkind = "relay"\nname = "pump_relay"\npin = 17\n'
                                  '[link]\nprofile = "unreliable"\nbusy_lane_after = 8\nbusy_lane_calm = 600\n')
    agent = AgentProcess(config, broker.url, sid, name).start()
    client = RawMcpClient(broker.url, "kill-flooder", sid, name, persistent=True)
    try:
        client.initialize()
        for i in range(300):
            client.send("ping", id=f"k{i}")
        deadline = time.monotonic() + 60
        while len(_answered(client, "k")) < 300:
            assert time.monotonic() < deadline, f"{300 - len(_answered(client, 'k'))} of the flood unanswered"
            time.sleep(0.05)
        link = json.loads(client.request("resources/read", {"uri": "device://link"})["result"]["contents"][0]["text"])
        assert link["busy_lane"]["clients"] == 1, link["busy_lane"]
        agent.signal(signal.SIGKILL)
        agent.wait()
        for i in range(5):  # the agent is down: these wait in the lane's session at the broker
            client.send("ping", id=f"q{i}")
        time.sleep(0.5)
        agent.start()
        for i in range(5):
            assert client.wait_response(f"q{i}", timeout=30).get("result") == {}
    finally:
        client.close()
        agent.stop()
