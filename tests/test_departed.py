"""Departed clients are gone for good (issue 12 item 4): 2,000 clients initialize and leave,
by their will or by ``notifications/disconnected``, some in the middle of ``initialize``;
afterwards no session is left in memory or in SQLite, and a restart restores none. Also the
session bound and its eviction order, and the janitor's ping probe.

The clients are raw paho MQTT 5 clients driven by the project's MQTT adapter (one event loop,
no thread per client) against the real Mosquitto of the ``broker`` fixture; the agent runs in
the same loop with the ``unreliable`` profile (persisted sessions)."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_agent.device import config as cfg
from edge_agent.device.janitor import SessionJanitor
from edge_agent.device.runtime import Agent
from edge_agent.mqtt.loop import LoopDriver

NAME, SID = "devices/lab/departures", "departures-1"
GOODBYE = json.dumps({"jsonrpc": "2.0", "method": "notifications/disconnected"}).encode()


def agent_config(tmp_path, **link):
    data = {"device": {"server_name": NAME, "server_id": SID, "simulate": True, "state_dir": str(tmp_path / "state")},
            "link": {"profile": "unreliable", "reconnect_min": 0.1, "reconnect_max": 0.5, **link},
            "drivers": [{"kind": "relay", "name": "pump_relay", "pin": 17}]}
    return cfg.from_dict(data)


class Client:
    """One raw MCP-over-MQTT client on the shared loop driver."""

    def __init__(self, driver: LoopDriver, cid: str):
        self.driver, self.cid = driver, cid
        self.rpc = f"$mcp-rpc/{cid}/{SID}/{NAME}"
        self.presence = f"$mcp-client/presence/{cid}"
        loop = driver.loop
        self.connected: asyncio.Future = loop.create_future()
        self.subscribed: asyncio.Future = loop.create_future()
        self.answered: asyncio.Future = loop.create_future()
        c = self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
        c.will_set(self.presence, GOODBYE, qos=1)
        c.on_connect = lambda *a: self.connected.done() or self.connected.set_result(True)
        c.on_subscribe = lambda *a: self.subscribed.done() or self.subscribed.set_result(True)
        c.on_message = self._on_message
        self.props = Properties(PacketTypes.PUBLISH)
        self.props.UserProperty = [("MCP-COMPONENT-TYPE", "mcp-client"), ("MCP-MQTT-CLIENT-ID", cid)]
        driver.attach(c)

    def _on_message(self, client, userdata, m) -> None:
        msg = json.loads(m.payload) if m.payload else None
        if isinstance(msg, dict) and msg.get("id") == 1 and not self.answered.done():
            self.answered.set_result(msg)

    def publish(self, topic: str, msg: dict | bytes) -> None:
        payload = msg if isinstance(msg, bytes) else json.dumps(msg).encode()
        self.driver.publish(self.c, topic, payload, qos=1, properties=self.props)

    async def connect(self, port: int) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.UserProperty = [("MCP-COMPONENT-TYPE", "mcp-client"), ("MCP-META", "{}")]
        await self.driver.connect(self.c, "127.0.0.1", port, keepalive=60, properties=props)
        await asyncio.wait_for(self.connected, 20)
        self.c.subscribe([(self.rpc, SubscribeOptions(qos=1, noLocal=True))])
        await asyncio.wait_for(self.subscribed, 20)

    def initialize(self) -> None:
        self.publish(f"$mcp-server/{SID}/{NAME}", {
            "jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "d", "version": "0"}}})

    def leave(self, how: str) -> None:
        if how == "will":
            self.driver.drop(self.c)  # socket closed without DISCONNECT: the broker publishes the will
        else:
            self.publish(self.presence if how == "presence" else self.rpc, GOODBYE)
            self.driver.flush(self.c)
            self.c.disconnect()
            self.driver.flush(self.c)

    def close(self) -> None:
        self.driver.detach(self.c)
        sock = self.c.socket()
        if sock is not None:
            sock.close()


def stored_sessions(tmp_path) -> int:
    db = sqlite3.connect(str(tmp_path / "state" / "state.sqlite3"))
    try:
        return db.execute("SELECT COUNT(*) FROM sessions").fetchone()[0]
    finally:
        db.close()


def test_two_thousand_departed_clients_leave_no_session(broker, tmp_path):
    n = 2000
    ways = ["will", "presence", "rpc"]

    async def go():
        config = agent_config(tmp_path, session_init_grace=2, session_probe_idle=2, session_probe_timeout=2)
        agent = Agent(config, broker_url=broker.url)
        await agent.start(connect_timeout=20)
        driver = LoopDriver(misc_interval=1.0)
        gate = asyncio.Semaphore(100)
        rng = random.Random(12)
        left = {"mid-initialize": 0, "after-initialized": 0}
        clients: list[Client] = []

        async def one(i: int) -> None:
            async with gate:
                c = Client(driver, f"departing-{i}")
                clients.append(c)
                await c.connect(broker.port)
                c.initialize()
                how = ways[i % 3]
                if rng.random() < 0.25:  # gone before the answer: its will may beat our subscription
                    await asyncio.sleep(rng.random() * 0.005)
                    left["mid-initialize"] += 1
                else:
                    await asyncio.wait_for(c.answered, 30)
                    c.publish(c.rpc, {"jsonrpc": "2.0", "method": "notifications/initialized"})
                    left["after-initialized"] += 1  # and at once gone: the race of issue 12
                c.leave(how)

        started = time.monotonic()
        try:
            await asyncio.gather(*(one(i) for i in range(n)))
            churn = time.monotonic() - started
            sessions = agent.server.sessions
            deadline = time.monotonic() + 40
            while sessions and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert not sessions, f"{len(sessions)} sessions of departed clients still in memory"
            assert not agent.endpoint.transport.clients, "topics of departed clients still served"
            link = agent.endpoint.transport.link_health()
            print(f"\n{n} clients in {churn:.1f} s ({left}); all sessions gone "
                  f"{time.monotonic() - started - churn:.1f} s later; janitor: {link['sessions']}")
        finally:
            for c in clients:
                c.close()
            driver.close()
            await agent.stop()
        assert stored_sessions(tmp_path) == 0, "sessions of departed clients stored in SQLite"
        again = Agent(config, broker_url=broker.url)
        await again.start(connect_timeout=20)
        try:
            assert again.server.sessions == {}, "a restart restored sessions of departed clients"
        finally:
            await again.stop()

    asyncio.run(go())


# ---------------------------------------------------------------------------- the bound, the janitor
class _S:
    def __init__(self, state="ready", subject=None):
        self.state, self.subject = state, subject


def test_session_bound_evicts_least_recently_used_unauthenticated_first():
    live: dict[str, _S] = {}
    closed: list[tuple[str, str]] = []

    def close(cid, why):
        closed.append((cid, why))
        live.pop(cid)

    j = SessionJanitor(sessions=lambda: live, close=close, send=lambda c, m: None, max_sessions=3)
    for cid, subject in (("a", "alice"), ("b", None), ("c", None)):
        j.admit(cid)
        live[cid] = _S(subject=subject)
        j.seen(cid)
        time.sleep(0.001)
    j.seen("b")  # b is now more recent than c
    j.admit("d")
    live["d"] = _S()
    assert closed == [("c", "evicted")]
    j.seen("b")
    j.seen("d")
    j.admit("e")  # b and d are unauthenticated: the older of them goes before alice
    assert closed[-1] == ("b", "evicted") and j.counters.evicted == 2
    j.admit("d")  # a re-initialize of a live session evicts nothing
    assert j.counters.evicted == 2


def test_janitor_probes_silent_clients_and_reaps_the_gone():
    live = {"quiet": _S(), "away": _S(), "half": _S(state="initializing")}
    sent: list[tuple[str, dict]] = []
    closed: list[tuple[str, str]] = []

    def close(cid, why):
        closed.append((cid, why))
        live.pop(cid)

    j = SessionJanitor(sessions=lambda: live, close=close, send=lambda c, m: sent.append((c, m)),
                       init_grace=5, probe_idle=10, probe_timeout=3)
    t = 1000.0
    for cid in live:
        j.last_seen[cid] = t
    j.sweep(t + 6)
    assert closed == [("half", "never_initialized")]
    j.sweep(t + 11)
    assert sorted(c for c, _ in sent) == ["away", "quiet"] and all(m["method"] == "ping" for _, m in sent)
    assert j.is_probe_answer({"jsonrpc": "2.0", "id": sent[0][1]["id"], "result": {}})
    j.seen("quiet")  # it answered
    j.sweep(t + 15)
    assert closed[-1] == ("away", "presence_gone") and "quiet" in live
    assert j.counters.reaped == {"never_initialized": 1, "presence_gone": 1}


@pytest.mark.anyio
async def test_probe_is_answered_by_a_live_client(broker, tmp_path):
    """A real ping goes out to a silent client and its answer keeps the session."""
    from .raw_client import RawMcpClient

    agent = Agent(agent_config(tmp_path, session_probe_idle=0.3, session_probe_timeout=5), broker_url=broker.url)
    await agent.start(connect_timeout=20)
    client = await asyncio.to_thread(RawMcpClient, broker.url, "probed-1", SID, NAME)
    try:
        await asyncio.to_thread(client.initialize)
        deadline = time.monotonic() + 10
        while True:
            pings = [r.message for r in client.received if r.message and r.message.get("method") == "ping"]
            if pings or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert pings, "no probe"
        client.publish(client.rpc, {"jsonrpc": "2.0", "id": pings[0]["id"], "result": {}})
        await asyncio.sleep(1.0)
        assert "probed-1" in agent.server.sessions
        assert agent.endpoint.transport.link_health()["sessions"]["probes"] >= 1
    finally:
        await asyncio.to_thread(client.close)
        await agent.stop()


@pytest.fixture
def anyio_backend():
    return "asyncio"
