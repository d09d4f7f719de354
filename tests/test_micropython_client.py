"""The board's MQTT client (``edgemcp/mqtt.py``) and Wi-Fi helper (``edgemcp/net.py``) under
MicroPython (the WebAssembly port), on an injected stream that plays a broker badly:

- a bounded inbound queue drops the oldest message and counts it; a packet larger than the
  input buffer is skipped and counted, and the stream stays in step;
- a broker that stops answering PINGREQ is a lost link (1.5 x keepalive): the client
  reconnects, bringing the network up again first;
- a refused connection is retried with growing backoff;
- a PUBLISH whose PUBACK never comes is sent again with DUP after the reconnect.

Wi-Fi (``edgemcp/net.py``) is tested in tests/test_micropython_field.py.
"""

from __future__ import annotations

import json
import subprocess

from .test_micropython_board import HOST, node_binary

FAKE = '''
import asyncio, json, time, sys
from edgemcp.mqtt import MQTTClient
from edgemcp import mqtt5 as m


class Fake:
    """A broker on a stream: CONNACK for CONNECT, PINGRESP and PUBACK if told to."""

    def __init__(self, ping=True, puback=True):
        self.inbox = bytearray()
        self.ev = asyncio.Event()
        self.written = []
        self.closed = False
        self.ping = ping
        self.puback = puback

    def feed(self, b):
        self.inbox += b
        self.ev.set()

    async def readinto(self, buf):
        while not self.inbox:
            if self.closed:
                return 0
            self.ev.clear()
            await self.ev.wait()
        k = min(len(buf), len(self.inbox))
        buf[:k] = self.inbox[:k]
        self.inbox = self.inbox[k:]
        return k

    def write(self, b):
        b = bytes(b)
        self.written.append(b)
        if b[0] == 0x10:
            self.feed(b"\\x20\\x03\\x00\\x00\\x00")
        elif b == m.PINGREQ_PACKET and self.ping:
            self.feed(b"\\xd0\\x00")
        elif b[0] == 0x82:
            self.feed(bytes((0x90, 4, b[2], b[3], 0, 1)))
        elif b[0] >> 4 == 3 and b[0] & 6 and self.puback:
            _, i = m.dec_varint(b, 1)
            tl = (b[i] << 8) | b[i + 1]
            self.feed(bytes((0x40, 2, b[i + 2 + tl], b[i + 3 + tl])))

    async def drain(self):
        pass

    def close(self):
        self.closed = True
        self.ev.set()


async def until(cond, ms=8000):
    t = time.ticks_ms()
    while not cond():
        if time.ticks_diff(time.ticks_ms(), t) > ms:
            raise AssertionError("timeout")
        await asyncio.sleep_ms(10)

logs = []


async def started(fake, **options):
    # an MQTTClient on the in-memory stream ``fake``, connected
    async def opener(h, p):
        return fake, fake

    c = MQTTClient("t", "h", opener=opener, log=logs.append, **options)
    asyncio.create_task(c.run())
    await until(lambda: c.up)
    return c


async def unacknowledging_first():
    # a connected MQTTClient (timeout 1 s) whose first broker connection never acknowledges a
    # PUBLISH; every later one does: (the client, the Fake of each connection)
    fakes = []

    async def opener(h, p):
        f = Fake(puback=len(fakes) > 0)
        fakes.append(f)
        return f, f

    c = MQTTClient("t", "h", opener=opener, timeout=1, log=logs.append)
    asyncio.create_task(c.run())
    await until(lambda: c.up)
    return c, fakes
'''


def run_micropython(code: str, timeout: float = 30) -> dict:
    """Run ``code`` (after FAKE) in the MicroPython WebAssembly port; the JSON it prints last."""
    done = subprocess.run([node_binary(), str(HOST / "board.mjs"), "--exec", FAKE + code], capture_output=True,
                          text=True, timeout=timeout, cwd=HOST)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0 and lines, done.stdout + done.stderr
    return json.loads(lines[-1])


def test_bounded_queue_drops_oldest_and_skips_oversized_packets():
    out = run_micropython('''
async def main():
    fake = Fake()
    c = await started(fake, queue_len=3, max_packet=64)
    for i in range(5):
        fake.feed(m.publish_header("t/%d" % i, 1, 0) + b"x")
    fake.feed(m.publish_header("big", 100, 0) + b"y" * 100)
    fake.feed(m.publish_header("t/last", 1, 1, False, 9) + b"z")
    await until(lambda: c.received == 6)
    got = []
    for _ in range(3):
        topic, payload, props = await c.get()
        got.append([topic, payload.decode()])
    pubacks = [b.hex() for b in fake.written if b[0] == 0x40]
    print(json.dumps({"got": got, "drops": c.drops, "too_big": c.too_big, "received": c.received, "pubacks": pubacks}))

asyncio.run(main())
''')
    assert out["got"] == [["t/3", "x"], ["t/4", "x"], ["t/last", "z"]]
    assert (out["drops"], out["too_big"], out["received"]) == (3, 1, 6)
    assert out["pubacks"] == ["40020009"]  # the QoS 1 message was acknowledged


def test_a_long_message_gets_a_buffer_of_its_own_and_an_oversized_one_is_acknowledged_and_skipped():
    """The client preallocates HEAD bytes, not max_packet: a PUBLISH longer than that (up to
    max_packet) arrives whole, read into a buffer of its size; a longer one (a broker ignoring
    CONNECT's Maximum Packet Size) is skipped and, being QoS 1, acknowledged, so the broker's
    Receive Maximum window does not shrink by one for the rest of the connection."""
    out = run_micropython('''
from edgemcp import mqtt
async def main():
    fake = Fake()
    c = await started(fake, queue_len=4, max_packet=1024)
    long = bytes(ord("a") + i % 26 for i in range(700))
    fake.feed(m.publish_header("t/long", len(long), 1, False, 5) + long)
    fake.feed(m.publish_header("t/huge", 1500, 1, False, 6) + b"h" * 1500)
    fake.feed(m.publish_header("t/after", 1, 1, False, 7) + b"z")
    await until(lambda: c.received == 2 and c.too_big == 1)
    got = []
    for _ in range(2):
        topic, payload, props = await c.get()
        got.append([topic, len(payload), payload == long if topic == "t/long" else payload.decode()])
    pubacks = [b.hex() for b in fake.written if b[0] == 0x40]
    print(json.dumps({"got": got, "too_big": c.too_big, "drops": c.drops, "pubacks": pubacks,
                      "preallocated": len(c._mv), "head": mqtt.HEAD}))

asyncio.run(main())
''')
    assert out["got"] == [["t/long", 700, True], ["t/after", 1, "z"]]
    assert (out["too_big"], out["drops"]) == (1, 0)
    assert out["pubacks"] == ["40020006", "40020005", "40020007"], out  # the skipped one at once
    assert out["preallocated"] == out["head"] < 1024


def test_a_long_message_there_is_no_room_for_is_acknowledged_and_dropped_not_the_link():
    """When the heap has no room for a long packet's buffer (MemoryError), that message is
    lost (counted in drops, acknowledged so the broker does not resend it into the same
    shortage), the link stays up and the next message arrives."""
    out = run_micropython('''
from edgemcp import mqtt

def no_room(n):  # the module's bytearray: the heap cannot give a long packet its buffer
    if n > mqtt.HEAD:
        raise MemoryError("memory allocation failed")
    return _real(n)

import builtins
_real = builtins.bytearray

async def main():
    fake = Fake()
    c = await started(fake, queue_len=4, max_packet=1024)
    mqtt.bytearray = no_room
    fake.feed(m.publish_header("t/long", 700, 1, False, 5) + b"L" * 700)
    fake.feed(m.publish_header("t/after", 1, 1, False, 6) + b"z")
    await until(lambda: c.received == 1)
    topic, payload, props = await c.get()
    pubacks = [b.hex() for b in fake.written if b[0] == 0x40]
    print(json.dumps({"got": [topic, payload.decode()], "drops": c.drops, "too_big": c.too_big,
                      "connects": c.connects, "up": c.up, "pubacks": pubacks}))

asyncio.run(main())
''')
    assert out["got"] == ["t/after", "z"] and out["drops"] == 1 and out["too_big"] == 0
    assert out["connects"] == 1 and out["up"]
    assert out["pubacks"] == ["40020005", "40020006"], out


def test_silent_broker_is_a_lost_link_and_the_network_comes_up_first():
    out = run_micropython('''
async def main():
    opened, nets = [], []

    async def opener(h, p):
        opened.append(time.ticks_ms())
        f = Fake(ping=False)
        return f, f

    async def network():
        nets.append(time.ticks_ms())

    c = MQTTClient("t", "h", opener=opener, keepalive=1, network=network, log=logs.append)
    asyncio.create_task(c.run())
    await until(lambda: c.connects >= 2)
    print(json.dumps({"connects": c.connects, "nets": len(nets), "gap_ms": time.ticks_diff(opened[1], opened[0]),
                      "logs": logs}))

asyncio.run(main())
''')
    assert out["connects"] >= 2 and out["nets"] >= 2
    assert 2000 <= out["gap_ms"] <= 4500, out  # 1.5 s of silence, then 1..1.5 s of backoff
    assert "keepalive" in out["logs"][0]


def test_refused_connections_back_off_longer_each_time():
    out = run_micropython('''
async def main():
    tries = []

    async def opener(h, p):
        tries.append(time.ticks_ms())
        if len(tries) <= 2:
            raise OSError(111)  # ECONNREFUSED
        f = Fake()
        return f, f

    c = MQTTClient("t", "h", opener=opener, log=logs.append)
    asyncio.create_task(c.run())
    await until(lambda: c.up)
    print(json.dumps({"gaps": [time.ticks_diff(b, a) for a, b in zip(tries, tries[1:])], "logs": logs}))

asyncio.run(main())
''')
    first, second = out["gaps"]
    assert 1000 <= first < 2000 and 2000 <= second < 3500 and second > first, out  # 1 s, 2 s (+ jitter)
    assert "111" in out["logs"][0]


def test_unacknowledged_publish_is_resent_with_dup_after_reconnect():
    out = run_micropython('''
async def main():
    c, fakes = await unacknowledging_first()
    ok = await c.publish("a/b", b"hello")
    sent = [[b[0], b.hex()] for f in fakes for b in f.written if b[0] >> 4 == 3]
    print(json.dumps({"ok": ok, "connects": c.connects, "firsts": [s[0] for s in sent], "logs": logs}))

asyncio.run(main())
''')
    assert out["ok"] is True and out["connects"] == 2
    assert out["firsts"] == [0x32, 0x3A], out  # QoS 1, then QoS 1 + DUP on the new link
    assert "acknowledgement" in out["logs"][0]


def test_a_publish_not_waited_for_is_kept_until_its_puback_and_resent_with_dup():
    """``publish(..., wait=False)`` (the board's answers and notifications) returns once the
    message is written; the client keeps it until the PUBACK and sends it again (DUP) on the next
    link when the first never acknowledged it, then forgets it."""
    out = run_micropython('''
async def main():
    c, fakes = await unacknowledging_first()
    ok = await c.publish("a/b", b"answer", wait=False)
    at_once = (c.connects, len(c._acks))
    await until(lambda: c.connects == 2 and c.up and not c._acks and not c._again)
    sent = [b for f in fakes for b in f.written if b[0] >> 4 == 3]
    print(json.dumps({"ok": ok, "at_once": at_once, "firsts": [b[0] for b in sent],
                      "payloads": sum(b == b"answer" for f in fakes for b in f.written)}))  # (written after its header)

asyncio.run(main())
''')
    assert out["ok"] is True and out["at_once"] == [1, 1], out  # returned on the first link, kept
    assert out["firsts"] == [0x32, 0x3A] and out["payloads"] == 2, out


def test_reads_in_small_pieces_and_a_read_that_returns_none_keep_the_link():
    """On a board a TLS record may arrive in several TCP segments: ``Stream.readinto`` of the
    SSL socket then returns None (mbedTLS's WANT_READ; extmod/asyncio/stream.py hands it back),
    which is not "closed by the broker". Reads here are 1..3 bytes, every 4th returns None."""
    out = run_micropython('''
class Esp(Fake):
    n = 0

    async def readinto(self, buf):  # 1..3 bytes at a time, every 4th read None
        self.n += 1
        if self.n % 4 == 0:
            return None
        return await Fake.readinto(self, buf[:1 + self.n % 3])

async def main():
    fakes = []

    async def opener(h, p):
        fakes.append(Esp())
        return fakes[-1], fakes[-1]

    c = MQTTClient("t", "h", opener=opener, min_delay=10, max_delay=20, queue_len=8, log=logs.append)
    asyncio.create_task(c.run())
    await until(lambda: c.up)
    for i in range(5):
        fakes[-1].feed(m.publish_header("t/%d" % i, 300, 1, False, 10 + i) + b"p" * 300)
    got = []
    for i in range(5):
        topic, payload, props = await asyncio.wait_for_ms(c.get(), 3000)
        got.append([topic, len(payload)])
    print(json.dumps({"got": got, "connects": c.connects, "logs": logs}))

asyncio.run(main())
''')
    assert out["got"] == [[f"t/{i}", 300] for i in range(5)], out
    assert out["connects"] == 1, out


def test_a_memory_error_while_sending_or_decoding_costs_that_message_not_the_link():
    """On a board ``Stream.write`` allocates when the socket does not take the whole packet at
    once (extmod/asyncio/stream.py), the tight-heap case: a MemoryError there, before any byte of
    the packet is out, loses that message (counted in ``drops``, its waiter told), not the link.
    A received PUBLISH whose topic there is no room for is acknowledged and dropped."""
    out = run_micropython('''
class Tight(Fake):
    fail = 0

    def write(self, b):
        if self.fail and bytes(b[:1]) == b"\\x32":
            self.fail -= 1
            raise MemoryError("memory allocation failed, allocating 300 bytes")
        super().write(b)

async def main():
    fake = Tight()

    async def opener(h, p):
        return fake, fake

    c = MQTTClient("t", "h", opener=opener, min_delay=10, max_delay=20, log=logs.append)
    asyncio.create_task(c.run())
    await until(lambda: c.up)
    fake.fail = 1
    lost = await c.publish("answer/1", b"x" * 300, qos=1, wait=True)
    await c.publish("answer/2", b"y", qos=1, wait=False)
    ok = await c.publish("answer/3", b"z", qos=1, wait=True)
    sent = [b[4:4 + b[3]].decode() for b in fake.written if b[0] == 0x32]
    dec = m.dec_publish
    calls = []

    def tight(flags, body):
        calls.append(1)
        if len(calls) == 1:
            raise MemoryError("memory allocation failed, allocating 40 bytes")
        return dec(flags, body)

    m.dec_publish = tight
    fake.feed(m.publish_header("req/1", 1, 1, False, 7) + b"a")
    fake.feed(m.publish_header("req/2", 1, 1, False, 8) + b"b")
    topic, payload, props = await asyncio.wait_for_ms(c.get(), 3000)
    m.dec_publish = dec
    pubacks = [b.hex() for b in fake.written if b[0] == 0x40]
    print(json.dumps({"lost": lost, "ok": ok, "sent": sent, "connects": c.connects, "drops": c.drops,
                      "got": topic, "pubacks": pubacks, "logs": logs}))

asyncio.run(main())
''')
    assert out["connects"] == 1, out  # the link stayed up
    assert out["lost"] is False and out["ok"] is True, out
    assert out["sent"] == ["answer/2", "answer/3"], out
    assert out["got"] == "req/2" and out["drops"] == 2, out
    assert out["pubacks"] == ["40020007", "40020008"], out  # the dropped request acknowledged
