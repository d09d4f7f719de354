"""The adapter's cheaper properties class for the packets paho decodes
(``edge_agent.mqtt.loop.DecodedProperties``, installed through
``edge_agent.mqtt.paho_private.use_properties_class``): paho's own decoders give the same
attributes and the same errors with it as with paho's ``Properties``. Fails when a paho upgrade
moves the name its decoders look up (then the adapter would silently lose the speed-up)."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from paho.mqtt import _packet
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.exception import MalformedPacket, MQTTException
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties, VariableByteIntegers

from edge_agent.mqtt import paho_private
from edge_agent.mqtt.loop import DecodedProperties, LoopDriver

V5 = MQTTProtocolVersion.MQTTv5


@pytest.fixture
def restore() -> Iterator[None]:
    before = _packet.Properties
    yield
    paho_private.use_properties_class(before)


def publish_packet(props: bytes, topic: bytes = b"$mcp-rpc/c1/s1/a/b", payload: bytes = b'{"id":1}') -> bytes:
    return struct.pack("!H", len(topic)) + topic + struct.pack("!H", 7) + props + payload


def raw_props(*items: bytes) -> bytes:
    body = b"".join(items)
    return VariableByteIntegers.encode(len(body)) + body


def utf(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def decode(cls: type, header: int, packet: bytes, decoder: Any = None) -> Any:
    assert paho_private.use_properties_class(cls)
    return (decoder or _packet.decode_publish)(header, packet, V5)


def outcome(cls: type, header: int, packet: bytes, decoder: Any = None) -> Any:
    try:
        p = decode(cls, header, packet, decoder)
    except (MalformedPacket, MQTTException, KeyError) as exc:
        return type(exc).__name__, str(exc)
    return p.properties.json(), str(p.properties), p.properties.isEmpty(), \
        {k: v for k, v in p._asdict().items() if k != "properties"}


def test_the_loop_driver_installs_it(restore):
    async def build() -> None:
        LoopDriver(asyncio.get_running_loop()).close()

    paho_private.use_properties_class(Properties)
    asyncio.run(build())
    assert _packet.Properties is DecodedProperties


def test_every_publish_property_decodes_as_with_paho(restore):
    p = Properties(PacketTypes.PUBLISH)
    p.PayloadFormatIndicator = 1
    p.MessageExpiryInterval = 30
    p.ContentType = "application/cbor"
    p.ResponseTopic = "re/ply"
    p.CorrelationData = b"\x00\x01"
    p.SubscriptionIdentifier = [7]
    p.TopicAlias = 3
    p.UserProperty = [("MCP-COMPONENT-TYPE", "mcp-client"), ("MCP-MQTT-CLIENT-ID", "c1"), ("k", "é")]
    packet = publish_packet(p.pack())
    fast, slow = outcome(DecodedProperties, 0x32, packet), outcome(Properties, 0x32, packet)
    assert fast == slow
    assert fast[0]["UserProperty"] == [("MCP-COMPONENT-TYPE", "mcp-client"), ("MCP-MQTT-CLIENT-ID", "c1"), ("k", "é")]
    assert decode(DecodedProperties, 0x32, packet).properties.ContentType == "application/cbor"
    empty = publish_packet(b"\x00")
    assert outcome(DecodedProperties, 0x32, empty) == outcome(Properties, 0x32, empty)


@pytest.mark.parametrize("props", [
    raw_props(b"\x03" + utf("a"), b"\x03" + utf("b")),  # Content Type twice
    raw_props(b"\x11" + struct.pack("!L", 5)),  # Session Expiry Interval: not a PUBLISH property
    raw_props(b"\x23" + struct.pack("!H", 0)),  # Topic Alias 0
    raw_props(b"\x01\x02"),  # Payload Format Indicator 2
    raw_props(b"\x7f\x00"),  # no such property
    raw_props(b"\x26" + utf("k") + struct.pack("!H", 40) + b"v"),  # user property value too long
    raw_props(b"\x03" + utf("a\x00b")),  # null in a string
    raw_props(b"\x26" + utf("k") + utf("\ufeffv")),  # U+FEFF in a user property value
    raw_props(b"\x03" + utf("a\ufeffb\x00")),  # U+FEFF before a null: paho names the first
    raw_props(b"\x03" + utf("a\x00b\ufeff")),  # and the other way round
    raw_props(b"\x03" + struct.pack("!H", 3) + b"\xed\xa0\x80"),  # an encoded surrogate
    raw_props(b"\x03" + struct.pack("!H", 2) + b"\xff\xfe"),  # not UTF-8
    raw_props(b"\x03\x00"),  # truncated string length
], ids=["twice", "wrong-packet", "alias-0", "pfi-2", "unknown", "too-long", "null", "bom", "bom-then-null",
        "null-then-bom", "surrogate", "not-utf8", "truncated"])
def test_bad_properties_are_marked_where_paho_fails(restore, props):
    """paho raises (and would close the connection); a PUBLISH decoded with ours is marked
    ``malformed`` with paho's error text, and the rest of the packet is read as usual (the
    adapter then drops it: tests/test_poison.py)."""
    packet = publish_packet(props)
    slow = outcome(Properties, 0x32, packet)
    assert isinstance(slow[0], str)  # paho: an error, not a decoded packet
    fast = decode(DecodedProperties, 0x32, packet)
    assert fast.properties.malformed and slow[1] in fast.properties.malformed
    assert fast.payload == b'{"id":1}' and fast.mid == 7 and fast.topic == b"$mcp-rpc/c1/s1/a/b"
    assert decode(DecodedProperties, 0x32, publish_packet(raw_props(b"\x03" + utf("a")))).properties.malformed is None


def test_puback_with_reason_and_user_property_decodes_as_with_paho(restore):
    q = Properties(PacketTypes.PUBACK)
    q.ReasonString = "no subscribers"
    q.UserProperty = ("a", "b")
    packet = struct.pack("!H", 9) + b"\x10" + q.pack()
    fast = outcome(DecodedProperties, 0x40, packet, _packet.decode_puback)
    assert fast == outcome(Properties, 0x40, packet, _packet.decode_puback)
    assert fast[0] == {"ReasonString": "no subscribers", "UserProperty": [("a", "b")]}


def test_a_reused_instance_starts_empty():
    props = DecodedProperties(PacketTypes.PUBLISH)
    props.unpack(raw_props(b"\x03" + utf("a"), b"\x26" + utf("k") + utf("v")))
    props.unpack(raw_props(b"\x26" + utf("x") + utf("y")))
    assert props.json() == {"UserProperty": [("x", "y")]}
