"""The server transport against a real Mosquitto, and the pure topic helpers."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.core import topics
from edge_agent.errors import TransportError
from edge_agent.mqtt.broker_url import parse_broker_url
from edge_agent.mqtt.server import MqttServerTransport

from .agent_process import RawSubscriber


def test_topic_round_trip():
    assert topics.rpc("c1", "s1", "devices/a/b") == "$mcp-rpc/c1/s1/devices/a/b"
    assert topics.parse("$mcp-rpc/c1/s1/devices/a/b") == topics.Topic("rpc", "s1", "devices/a/b", "c1")
    assert topics.parse("$mcp-server/s1/devices/a") == topics.Topic("control", "s1", "devices/a")
    assert topics.parse("$mcp-server/presence/s1/devices/a").kind == "server-presence"
    assert topics.parse("$mcp-server/capability/s1/devices/a").kind == "server-capability"
    assert topics.parse("$mcp-client/presence/c9") == topics.Topic("client-presence", client_id="c9")
    assert topics.parse("$mcp-client/capability/c9").kind == "client-capability"
    for junk in ("", "devices/a", "$mcp-rpc/c1/s1", "$mcp-client/presence", "$mcp-client/other/x", "$mcp-server"):
        assert topics.parse(junk) is None


@pytest.mark.parametrize("name", ["flat", "/lead", "trail/", "a/+/b", "a/#", "a//b", ""])
def test_bad_server_names(name):
    with pytest.raises(ValueError):
        topics.check_server_name(name)


@pytest.mark.parametrize("ident", ["", "a/b", "a+", "#"])
def test_bad_ids(ident):
    with pytest.raises(ValueError):
        topics.check_id(ident)


def test_broker_urls():
    u = parse_broker_url("mqtts://user:p%40ss@broker.example")
    assert (u.host, u.port, u.tls, u.username, u.password) == ("broker.example", 8883, True, "user", "p@ss")
    assert "p@ss" not in str(u)
    assert parse_broker_url("localhost:1884").port == 1884
    for bad in ("http://x", "mqtt://", "mqtt://h:70000"):
        with pytest.raises(ValueError):
            parse_broker_url(bad)


def make_transport(broker_url: str, loop, **kw) -> MqttServerTransport:
    return MqttServerTransport(server_id="t-1", server_name="devices/t/one", description="d", meta={},
                               broker=parse_broker_url(broker_url), loop=loop, on_control=lambda *a: None,
                               on_rpc=lambda *a: None, on_client_gone=lambda *a: None, **kw)


def test_nodelay_and_presence(broker):
    async def go():
        t = make_transport(broker.url, asyncio.get_running_loop())
        await t.start(5)
        sock = t.client.socket()
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        sub = RawSubscriber(broker.url, ["$mcp-server/presence/+/#"])
        try:
            msg = await asyncio.to_thread(sub.wait_for, lambda m: m.retain and m.payload)
            assert msg.topic == "$mcp-server/presence/t-1/devices/t/one"
            await t.stop()
            cleared = await asyncio.to_thread(sub.wait_for, lambda m: m.payload == b"")
            assert cleared.topic == msg.topic
        finally:
            sub.close()
    asyncio.run(go())


def test_broker_assigned_server_name_is_used(broker):
    """Spec: a server MUST use the MCP-SERVER-NAME the broker puts in CONNACK. Mosquitto cannot
    send CONNACK user properties, so the CONNACK handler is fed the property directly while the
    rest (subscriptions, retained presence) goes through the real broker."""

    async def go():
        loop = asyncio.get_running_loop()
        t = make_transport(broker.url, loop)
        sub = RawSubscriber(broker.url, ["$mcp-server/presence/+/#"])
        try:
            await t.start(5)
            props = Properties(PacketTypes.CONNACK)
            props.UserProperty = [("MCP-SERVER-NAME", "fleet/site-9/t-1")]
            t._connected(None, props)
            assert t.server_name == "fleet/site-9/t-1"
            assert t.control_topic == "$mcp-server/t-1/fleet/site-9/t-1"
            msg = await asyncio.to_thread(sub.wait_for, lambda m: m.topic.endswith("fleet/site-9/t-1") and m.payload)
            assert json.loads(msg.payload)["params"]["server_name"] == "fleet/site-9/t-1"
            bad = Properties(PacketTypes.CONNACK)
            bad.UserProperty = [("MCP-SERVER-NAME", "no-slash")]
            t._connected(None, bad)
            assert t.server_name == "fleet/site-9/t-1"  # an invalid suggestion is ignored with a warning
        finally:
            sub.close()
            await t.stop()
    asyncio.run(go())


def test_unreachable_broker_times_out_clearly():
    async def go():
        from edge_agent.testing.broker import free_port

        t = make_transport(f"mqtt://127.0.0.1:{free_port()}", asyncio.get_running_loop())
        with pytest.raises(TransportError, match="did not accept a connection within 1"):
            await t.start(1)
        await t.stop()
    asyncio.run(go())
