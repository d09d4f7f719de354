"""Issue 13 proof: a hypothesis property. Any bytes in any MQTT string field (content type,
response topic, user property key and value, MCP-MQTT-CLIENT-ID, the topic's last level) of
any inbound PUBLISH, on the device's control topic or a client's RPC topic, with any payload,
never disconnect the agent: it keeps its one connection and still answers. Against a real
Mosquitto, the hostile client on a raw socket (tests/test_poison.py's ``Hostile``)."""

from __future__ import annotations

import asyncio
import json
import threading

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.device import config as cfg
from edge_agent.device.runtime import Agent

from .test_poison import NAME, SID, Hostile, _props, _str

FIELDS = {"content_type": 0x03, "response_topic": 0x08}
CID = "prop-client"

any_bytes = st.binary(max_size=48) | st.sampled_from(
    [b"\xef\xbb\xbf", b"\x00", b"\xff\xfe", b"\xed\xa0\x80", b"\xc0\x80", "\ufeff".encode() * 3, b"+/#"])
messages = st.fixed_dictionaries({
    "field": st.sampled_from(["content_type", "response_topic", "user_key", "user_value", "client_id", "topic"]),
    "value": any_bytes,
    "where": st.sampled_from(["control", "rpc"]),
    "payload": any_bytes | st.sampled_from([b'{"jsonrpc":"2.0","id":1,"method":"ping"}', b""]),
})


class AgentThread:
    """The agent on its own event loop in a thread (hypothesis drives the test synchronously)."""

    def __init__(self, broker_url: str, tmp_path):
        config = cfg.from_dict({
            "device": {"server_name": NAME, "server_id": SID, "simulate": True, "state_dir": str(tmp_path / "s")},
            "link": {"reconnect_min": 0.1, "reconnect_max": 0.3},
            "drivers": [{"kind": "led", "name": "status_led", "pin": 27}]})
        self.loop = asyncio.new_event_loop()
        self.agent = Agent(config, broker_url=broker_url)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(self.agent.start(connect_timeout=10))

    def call(self, coro, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stats(self) -> dict:
        async def get():
            return self.agent.endpoint.transport.link_health()
        return self.call(get())

    def stop(self) -> None:
        self.call(self.agent.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def _packet(msg: dict) -> tuple[bytes, bytes]:
    field, value = msg["field"], msg["value"]
    extra, cid = b"", CID.encode()
    if field in FIELDS:
        extra = bytes([FIELDS[field]]) + _str(value)
    elif field == "user_key":
        extra = b"\x26" + _str(value) + _str(b"v")
    elif field == "user_value":
        extra = b"\x26" + _str(b"k") + _str(value)
    elif field == "client_id":
        cid = value
    props = _props(b"\x26" + _str(b"MCP-COMPONENT-TYPE") + _str(b"mcp-client"),
                   b"\x26" + _str(b"MCP-MQTT-CLIENT-ID") + _str(cid), extra)
    topic = f"$mcp-server/{SID}/{NAME}".encode() if msg["where"] == "control" else f"$mcp-rpc/{CID}/{SID}/{NAME}".encode()
    if field == "topic":
        topic = topic.rsplit(b"/", 1)[0] + b"/" + value
    return topic, props


def test_no_bytes_in_any_string_field_disconnect_the_agent(broker, tmp_path):
    agent = AgentThread(broker.url, tmp_path)
    hostile = [Hostile(broker.url, "prop-hostile")]
    hostile[0].initialize(CID)
    before = agent.stats()
    sent = [0, 0]  # messages published, refused by Mosquitto itself
    try:
        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(batch=st.lists(messages, min_size=1, max_size=8))
        def storm(batch):
            for msg in batch:
                topic, props = _packet(msg)
                sent[0] += 1
                if not hostile[0].publish(topic, props, msg["payload"]):  # Mosquitto refused it: reconnect
                    sent[1] += 1
                    hostile[0].close()
                    hostile[0] = Hostile(broker.url, "prop-hostile")
                    hostile[0].subscribe(f"$mcp-rpc/{CID}/{SID}/{NAME}")
            link = agent.stats()
            assert link["connected"] and link["connects"] == before["connects"], link

        storm()
        assert sent[0] >= 150 and sent[1] < sent[0], sent  # most of them reached the agent
        # still answering on the same connection: a ping from a fresh, well-formed client
        h = hostile[0]
        h.received.clear()
        h.initialize("prop-after")
        after = agent.stats()
        assert after["connects"] == before["connects"] and after["reconnects"] == before["reconnects"]
    finally:
        for h in hostile:
            h.close()
        agent.stop()
    assert json.dumps(after)  # the figures are JSON (device://link)
