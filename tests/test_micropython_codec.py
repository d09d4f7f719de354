"""The board's MQTT 5 codec (``micropython/edgemcp/mqtt5.py``), run under CPython.

- Round trips of varints, property blocks and PUBLISH packets (hypothesis).
- Byte for byte against paho-mqtt: a fake broker on ``localhost:0`` records what paho sends
  for CONNECT (user properties, retained will with properties, clean start), SUBSCRIBE (No
  Local), PUBLISH QoS 0/1 (user properties), UNSUBSCRIBE, PINGREQ and DISCONNECT, and our
  encoder must produce the same bytes; our decoder reads what paho produced.
- The end-to-end tests (tests/test_micropython_board.py) prove Mosquitto accepts it.
"""

from __future__ import annotations

import importlib.util
import socket
import sys
import threading
import types
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

ROOT = Path(__file__).resolve().parents[1]


def load_codec():
    """Import micropython/edgemcp/mqtt5.py under CPython (``micropython.const`` is identity)."""
    sys.modules.setdefault("micropython", types.SimpleNamespace(const=lambda x: x))
    spec = importlib.util.spec_from_file_location("edgemcp_mqtt5", ROOT / "micropython" / "edgemcp" / "mqtt5.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_connect():
    """micropython/edgemcp/connect.py (the CONNECT builder: code that runs once per connection,
    so not in the codec the board keeps) under CPython, in the package as ``_codec_edgemcp``."""
    sys.modules.setdefault("micropython", types.SimpleNamespace(const=lambda x: x))
    edgemcp = ROOT / "micropython" / "edgemcp"
    spec = importlib.util.spec_from_file_location("_codec_edgemcp", edgemcp / "__init__.py",
                                                  submodule_search_locations=[str(edgemcp)])
    package = importlib.util.module_from_spec(spec)
    sys.modules["_codec_edgemcp"] = package
    spec.loader.exec_module(package)
    importlib.import_module("_codec_edgemcp.mqtt5")  # (the package's __getattr__ imports by the board's name)
    return importlib.import_module("_codec_edgemcp.connect")


m = load_codec()
cm = load_connect()
USER = [("MCP-COMPONENT-TYPE", "mcp-server"), ("MCP-MQTT-CLIENT-ID", "esp32-1")]


# --------------------------------------------------------------------------- pure round trips


@given(st.integers(min_value=0, max_value=268_435_455))
def test_varint_round_trip_and_length(n):
    encoded = bytes(m.varint(n))
    assert m.dec_varint(encoded, 0) == (n, len(encoded))
    assert len(encoded) == (1 if n < 128 else 2 if n < 16_384 else 3 if n < 2_097_152 else 4)


def test_varint_limits():
    assert bytes(m.varint(127)) == b"\x7f" and bytes(m.varint(128)) == b"\x80\x01"
    assert bytes(m.varint(268_435_455)) == b"\xff\xff\xff\x7f"
    for bad in (-1, 268_435_456):
        with pytest.raises(m.MQTTError):
            m.varint(bad)
    with pytest.raises(m.MQTTError):
        m.dec_varint(b"\xff\xff\xff\xff\x01", 0)


text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@given(st.lists(st.tuples(text, text), max_size=5), st.text(min_size=1, max_size=60),
       st.binary(max_size=300), st.integers(0, 1), st.booleans(), st.integers(1, 65535))
def test_publish_round_trip(user, topic, payload, qos, retain, pid):
    packet = bytes(m.publish_header(topic, len(payload), qos, retain, pid, m.properties(user))) + payload
    first = packet[0]
    assert first >> 4 == m.PUBLISH
    n, i = m.dec_varint(packet, 1)
    body = packet[i:]
    assert len(body) == n
    got_topic, got_qos, got_retain, got_pid, props, start = m.dec_publish(first & 15, body)
    assert (got_topic, got_qos, got_retain, body[start:]) == (topic, qos, retain, payload)
    assert got_pid == (pid if qos else 0)
    for name, _ in user:  # the last value of each name wins
        assert m.prop(props, m.USER_PROPERTY, name) == [v for k, v in user if k == name][-1]


def test_property_block_of_every_type_is_walked():
    """A CONNACK with the properties Mosquitto and EMQX send: each is skipped or read by type."""
    block = bytearray()
    block += b"\x21\x00\x14"  # Receive Maximum 20
    block += b"\x22\x00\x0a"  # Topic Alias Maximum 10
    block += b"\x13\x00\x3c"  # Server Keep Alive 60
    block += b"\x27\x00\x10\x00\x00"  # Maximum Packet Size 1 MiB
    block += b"\x25\x01\x2a\x00"  # Retain Available, Shared Subscription Available 0
    block += b"\x12\x00\x03abc"  # Assigned Client Identifier
    block += b"\x0b\x81\x01"  # Subscription Identifier 129 (varint)
    block += b"\x09\x00\x02\x00\xff"  # Correlation Data (binary)
    block += b"\x26\x00\x0fMCP-SERVER-NAME\x00\x0edevices/x/esp1"
    body = b"\x00\x00" + bytes(m.varint(len(block))) + bytes(block)
    present, rc, props = m.dec_connack(body)
    assert (present, rc) == (False, 0)
    assert m.prop(props, m.SERVER_KEEPALIVE) == 60
    assert m.prop(props, 0x27) == 1 << 20 and m.prop(props, 0x12) == "abc" and m.prop(props, 0x0B) == 129
    assert m.prop(props, 0x09) == b"\x00\xff"
    assert m.prop(props, m.USER_PROPERTY, "MCP-SERVER-NAME") == "devices/x/esp1"
    assert m.prop(props, m.USER_PROPERTY, "nope") is None and m.prop(props, 0x02) is None
    with pytest.raises(m.MQTTError):
        m.prop(b"\x05\x00", 0x13)  # 0x05 is not a property


def test_publish_pid_reads_the_packet_id_from_the_start_of_a_body():
    """What a skipped PUBLISH (too long, or no room for it) is acknowledged with: its packet id
    from the first bytes of its body, 0 at QoS 0 or when those bytes do not hold it."""
    head = bytes(m.publish_header("$mcp-rpc/c1/s1/x", 3000, 1, False, 0x1234, m.properties([("a", "b")])))
    _, i = m.dec_varint(head, 1)  # after the fixed header: the body
    body = head[i:]
    assert m.publish_pid(head[0] & 15, body) == 0x1234
    assert m.publish_pid(0, body) == 0  # QoS 0: no packet id
    assert m.publish_pid(head[0] & 15, body[:5]) == 0  # cut inside the topic
    assert m.publish_pid(head[0] & 15, body[:1]) == 0


def test_acks_decode():
    assert m.dec_ack(m.PUBACK, b"\x12\x34") == (0x1234, b"\x00")  # reason omitted: Success
    assert m.dec_ack(m.PUBACK, b"\x12\x34\x10\x00") == (0x1234, b"\x10")  # no matching subscribers
    assert m.dec_ack(m.SUBACK, b"\x00\x07\x00\x01\x01\x87") == (7, b"\x01\x01\x87")
    assert m.dec_ack(m.UNSUBACK, b"\x00\x08\x03\x1f\x00\x00\x00") == (8, b"\x00")
    assert bytes(m.puback(0x1234)) == b"\x40\x02\x12\x34"
    assert m.PINGREQ_PACKET == b"\xc0\x00" and m.DISCONNECT_PACKET == b"\xe0\x00"


# --------------------------------------------------------------------------- against paho


class FakeBroker:
    """Accepts one client on localhost:0, answers CONNECT/SUBSCRIBE/UNSUBSCRIBE/QoS 1
    PUBLISH/PINGREQ, and records every packet the client sent, whole, in order."""

    def __init__(self):
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(1)
        self.port = self.server.getsockname()[1]
        self.packets: list[bytes] = []
        self.got = threading.Condition()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _read(self, conn, n):
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def _run(self):
        conn, _ = self.server.accept()
        try:
            while True:
                head = self._read(conn, 1)
                length = b""
                while True:
                    b = self._read(conn, 1)
                    length += b
                    if b[0] < 0x80:
                        break
                n, _ = m.dec_varint(length, 0)
                body = self._read(conn, n)
                packet = head + length + body
                with self.got:
                    self.packets.append(packet)
                    self.got.notify_all()
                kind = head[0] >> 4
                if kind == 1:
                    conn.sendall(b"\x20\x03\x00\x00\x00")
                elif kind == 8:
                    conn.sendall(b"\x90\x04" + body[:2] + b"\x00\x01")
                elif kind == 10:
                    conn.sendall(b"\xb0\x04" + body[:2] + b"\x00\x00")
                elif kind == 3 and head[0] & 6:
                    topic_len = int.from_bytes(body[:2], "big")
                    conn.sendall(b"\x40\x02" + body[2 + topic_len:4 + topic_len])
                elif kind == 12:
                    conn.sendall(b"\xd0\x00")
                elif kind == 14:
                    return
        except (EOFError, OSError):
            return
        finally:
            conn.close()

    def wait(self, count, timeout=5.0):
        with self.got:
            assert self.got.wait_for(lambda: len(self.packets) >= count, timeout), self.packets
            return self.packets[count - 1]

    def close(self):
        self.server.close()


@pytest.fixture
def paho_session():
    """A paho client connected to a FakeBroker the way an MCP server connects (as the board)."""
    fb = FakeBroker()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="esp32-1", protocol=mqtt.MQTTv5)
    will = Properties(PacketTypes.WILLMESSAGE)
    will.UserProperty = USER
    c.will_set("$mcp-server/presence/esp32-1/devices/x/esp1", b"", qos=1, retain=True, properties=will)
    props = Properties(PacketTypes.CONNECT)
    props.UserProperty = [("MCP-COMPONENT-TYPE", "mcp-server"), ("MCP-META", '{"version":"0.1.0"}')]
    c.connect("127.0.0.1", fb.port, keepalive=30, clean_start=True, properties=props)
    c.loop_start()
    try:
        yield c, fb
    finally:
        c.disconnect()
        c.loop_stop()
        fb.close()


def test_connect_matches_paho(paho_session):
    _, fb = paho_session
    theirs = fb.wait(1)
    ours = cm.connect("esp32-1", 30, user=[("MCP-COMPONENT-TYPE", "mcp-server"), ("MCP-META", '{"version":"0.1.0"}')],
                     will_topic="$mcp-server/presence/esp32-1/devices/x/esp1", will_payload=b"", will_retain=True,
                     will_qos=1, will_user=USER)
    assert bytes(ours) == theirs
    _, i = m.dec_varint(theirs, 1)
    assert theirs[i:i + 7] == b"\x00\x04MQTT\x05"
    assert theirs[i + 7] == 0x2E  # connect flags: will retain, will QoS 1, will flag, clean start


def test_will_delay_interval_matches_paho():
    """The will's Will Delay Interval (3.1.3.2.2), as paho writes it: before the user properties."""
    fb = FakeBroker()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="esp32-1", protocol=mqtt.MQTTv5)
    will = Properties(PacketTypes.WILLMESSAGE)
    will.WillDelayInterval = 5
    will.UserProperty = USER
    c.will_set("$mcp-server/presence/esp32-1/devices/x/esp1", b"", qos=1, retain=True, properties=will)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 600
    c.connect("127.0.0.1", fb.port, keepalive=30, clean_start=False, properties=props)
    c.loop_start()
    try:
        theirs = fb.wait(1)
    finally:
        c.disconnect()
        c.loop_stop()
        fb.close()
    ours = cm.connect("esp32-1", 30, clean=False, expiry=600, will_topic="$mcp-server/presence/esp32-1/devices/x/esp1",
                     will_payload=b"", will_retain=True, will_qos=1, will_user=USER, will_delay=5)
    assert bytes(ours) == theirs
    assert b"\x18\x00\x00\x00\x05" in theirs


def test_subscribe_with_no_local_matches_paho(paho_session):
    c, fb = paho_session
    fb.wait(1)
    rc, mid = c.subscribe([("$mcp-server/esp32-1/devices/x/esp1", SubscribeOptions(qos=1)),
                           ("$mcp-rpc/c1/esp32-1/devices/x/esp1", SubscribeOptions(qos=1, noLocal=True))])
    theirs = fb.wait(2)
    ours = m.subscribe(mid, [("$mcp-server/esp32-1/devices/x/esp1", 1),
                             ("$mcp-rpc/c1/esp32-1/devices/x/esp1", 1 | m.NO_LOCAL)])
    assert bytes(ours) == theirs
    assert theirs[-1] == 0x05  # QoS 1 + No Local


def test_unsubscribe_matches_paho(paho_session):
    c, fb = paho_session
    fb.wait(1)
    _, mid = c.unsubscribe(["$mcp-client/presence/c1", "$mcp-client/capability/c1"])
    assert bytes(m.unsubscribe(mid, ["$mcp-client/presence/c1", "$mcp-client/capability/c1"])) == fb.wait(2)


@pytest.mark.parametrize("qos,retain", [(0, False), (1, False), (1, True)])
def test_publish_matches_paho_and_decodes(paho_session, qos, retain):
    c, fb = paho_session
    fb.wait(1)
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = USER
    payload = '{"jsonrpc":"2.0","id":1,"result":{"unit":"°C"}}'.encode()
    info = c.publish("$mcp-rpc/c1/esp32-1/devices/x/esp1", payload, qos=qos, retain=retain, properties=props)
    theirs = fb.wait(2)
    ours = m.publish_header("$mcp-rpc/c1/esp32-1/devices/x/esp1", len(payload), qos, retain, info.mid if qos else 0,
                            m.properties(USER)) + payload
    assert bytes(ours) == theirs
    n, i = m.dec_varint(theirs, 1)
    topic, got_qos, got_retain, pid, block, start = m.dec_publish(theirs[0] & 15, theirs[i:])
    assert (topic, got_qos, got_retain, theirs[i + start:]) == ("$mcp-rpc/c1/esp32-1/devices/x/esp1", qos, retain, payload)
    assert m.prop(block, m.USER_PROPERTY, "MCP-MQTT-CLIENT-ID") == "esp32-1"
    if qos:
        assert pid == info.mid
        info.wait_for_publish(2)  # paho accepted the fake broker's PUBACK in our format's shape


def test_ping_and_disconnect_match_paho(paho_session):
    c, fb = paho_session
    fb.wait(1)
    c._send_pingreq()
    assert fb.wait(2) == m.PINGREQ_PACKET
    c.disconnect()
    assert fb.wait(3) == m.DISCONNECT_PACKET


def test_persistent_session_connect_decodes_with_paho():
    """Clean Start 0 + Session Expiry Interval + Receive Maximum + Maximum Packet Size, as the
    board connects (issue 16): paho reads the property block as we mean it."""
    ours = bytes(cm.connect("esp32-1", 30, user=[("MCP-COMPONENT-TYPE", "mcp-server")], clean=False, expiry=3600,
                           receive_max=8, max_packet=2048))
    _, i = m.dec_varint(ours, 1)
    assert ours[i + 7] & 0x02 == 0  # Clean Start 0
    props = Properties(PacketTypes.CONNECT)
    props.unpack(ours[i + 10:])
    assert (props.SessionExpiryInterval, props.ReceiveMaximum, props.MaximumPacketSize) == (3600, 8, 2048)
    assert props.UserProperty == [("MCP-COMPONENT-TYPE", "mcp-server")]


def test_subscribe_with_retain_handling_2_matches_paho(paho_session):
    c, fb = paho_session
    fb.wait(1)
    rc, mid = c.subscribe([("$mcp-rpc/+/esp32-1/devices/x/esp1",
                            SubscribeOptions(qos=1, noLocal=True, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND))])
    theirs = fb.wait(2)
    assert bytes(m.subscribe(mid, [("$mcp-rpc/+/esp32-1/devices/x/esp1", 1 | m.NO_LOCAL | m.NO_RETAINED)])) == theirs
