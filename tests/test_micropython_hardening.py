"""The board library under hostile input and a tight heap, run by the real MicroPython
interpreter (the WebAssembly port, micropython/host/board.mjs) against a real Mosquitto
(issue 16, "What to build" 2 and 5):

- an ``initialize`` whose MCP-MQTT-CLIENT-ID is ``+``, ``#``, holds a ``/`` or is empty is
  dropped (no session, no subscription): another client's 300 pings get exactly 300 answers;
- at most ``max_inflight`` (4) requests of a session are in flight; one more is answered at
  once with -32004;
- JSON nested deeper than 32 levels is -32700 without ``json.loads``;
- a MemoryError while encoding an answer costs that answer (a short -32603 instead), not the
  link, in a fixed heap (``board.mjs --heap N --fixed-heap 1``);
- CONNECT carries Maximum Packet Size (the input buffer), so the broker never sends more;
- a write that cannot drain fails the link after ``timeout`` instead of holding the lock.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.test_micropython_board import HOST, Board, RawClient, mqtt_site, node_binary
from tests.test_micropython_client import FAKE, run_micropython

NAME = "devices/test/esp32-h"
SID = "esp32-hard-01"

MAIN = '''
import asyncio
from edgemcp import Device

app = Device(server_name="%(name)s", description="hardening")
BIG = "x" * %(big)d


@app.tool("slow", "Sleeps n ms", params={"n": ("integer", 0, 5000)})
async def slow(n):
    await asyncio.sleep_ms(n)
    return n


@app.tool("big", "An answer too large for the heap")
def big():
    return BIG


app.run()
'''


class HeapBoard(Board):
    """A :class:`Board` with a fixed heap of ``heap`` bytes (None: the port's growing heap)."""

    def __init__(self, *args, heap: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.heap = heap

    def start(self) -> "HeapBoard":
        args = [node_binary(), str(HOST / "board.mjs"), "--main", str(self.main), "--site", str(self.site_path)]
        if self.heap is not None:
            args += ["--heap", str(self.heap), "--fixed-heap", "1"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=HOST)
        return self


def start(tmp_path: Path, broker, big: int = 10, heap: int | None = None) -> Board:
    main = tmp_path / "main.py"
    main.write_text(MAIN % {"name": NAME, "big": big})
    return HeapBoard(tmp_path, mqtt_site(broker, NAME, SID), main=main, heap=heap)


def request(mid, method, params=None) -> dict:
    msg = {"jsonrpc": "2.0", "id": mid, "method": method}
    if params is not None:
        msg["params"] = params
    return msg


def answers(raw: RawClient) -> list[dict]:
    with raw.lock:
        return [json.loads(m.payload) for m in raw.messages if m.topic == raw.rpc and m.payload]


def test_initialize_with_a_wildcard_slash_or_empty_client_id_is_dropped(broker, tmp_path):
    with start(tmp_path, broker) as b:
        b.wait_log("online as " + NAME)
        raw = RawClient(broker, "good-client", SID, NAME)
        bad = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="hostile", protocol=mqtt.MQTTv5)
        bad.connect("127.0.0.1", broker.port)
        bad.loop_start()
        try:
            init = json.dumps(request("x", "initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                                          "clientInfo": {"name": "h", "version": "0"}}))
            for cid in ("+", "#", "a/b", "", "+/#"):
                props = Properties(PacketTypes.PUBLISH)
                props.UserProperty = [("MCP-COMPONENT-TYPE", "mcp-client"), ("MCP-MQTT-CLIENT-ID", cid)]
                bad.publish(raw.control, init, qos=1, properties=props).wait_for_publish(5)
            b.wait_log("initialize with a bad MCP-MQTT-CLIENT-ID dropped", count=5)
            raw.initialize()
            for i in range(300):
                raw.send(raw.rpc, request(i, "ping"))
                raw.answer(i)  # removes it from raw.messages
            raw.send(raw.rpc, request("last", "ping"))
            raw.answer("last")
            extra = answers(raw)
            assert extra == [], f"{len(extra)} answers too many: {extra[:3]}"
            for cid in ('"+"', '"#"', '"a/b"', '""'):
                assert "dropped: " + cid in b.log
        finally:
            bad.loop_stop()
            bad.disconnect()
            raw.close()


def test_a_fifth_request_in_flight_is_refused_at_once(broker, tmp_path):
    with start(tmp_path, broker) as b:
        b.wait_log("online as " + NAME)
        raw = RawClient(broker, "busy-client", SID, NAME)
        try:
            raw.initialize()
            for i in range(6):
                raw.send(raw.rpc, request(i, "tools/call", {"name": "slow", "arguments": {"n": 1500}}))
            refused = [raw.answer(i, timeout=1.2) for i in (4, 5)]  # long before the slow ones end
            for r in refused:
                assert r["error"]["code"] == -32004 and "in flight (4)" in r["error"]["message"], r
            done = [raw.answer(i) for i in range(4)]
            assert [d["result"]["content"][0]["text"] for d in done] == ["1500"] * 4
            raw.send(raw.rpc, request(9, "ping"))
            assert raw.answer(9)["result"] == {}
        finally:
            raw.close()


def test_json_nested_deeper_than_32_is_a_parse_error_without_parsing(broker, tmp_path):
    with start(tmp_path, broker) as b:
        b.wait_log("online as " + NAME)
        raw = RawClient(broker, "deep-client", SID, NAME)
        try:
            raw.initialize()
            deep = '{"jsonrpc":"2.0","id":1,"method":"ping","params":{"a":%s1%s}}' % ("[" * 400, "]" * 400)  # 0.8 KB: fits the 2 KB packets
            raw.send(raw.rpc, deep)
            err = raw.answer(None)["error"]
            assert err["code"] == -32700 and "nested deeper than 32" in err["message"]
            raw.send(raw.control, deep)  # on the control topic too
            err = raw.answer(None)["error"]
            assert err["code"] == -32700 and "nested deeper than 32" in err["message"]
            ok = request(2, "tools/call", {"name": "slow", "arguments": {"n": 0}, "_meta": {"a": [[[[1]]]]}})
            raw.send(raw.rpc, ok)  # ordinary nesting is fine
            assert raw.answer(2)["result"]["isError"] is False
        finally:
            raw.close()


@pytest.mark.timeout(120)
def test_memory_error_while_encoding_costs_the_answer_not_the_link(broker, tmp_path):
    with start(tmp_path, broker, big=BIG, heap=HEAP) as b:
        b.wait_log("online as " + NAME, timeout=30)
        raw = RawClient(broker, "oom-client", SID, NAME)
        try:
            raw.initialize()
            raw.send(raw.rpc, request(1, "tools/call", {"name": "big"}))
            err = raw.answer(1, timeout=20)["error"]
            assert err == {"code": -32603, "message": "Out of memory"}
            b.wait_log("no memory to answer")
            for i in range(2, 12):
                raw.send(raw.rpc, request(i, "ping"))
                assert raw.answer(i)["result"] == {}
            assert b.log.count("online as ") == 1, "the link was dropped:\n" + b.log
        finally:
            raw.close()


HEAP = 200 * 1024  # the board boots and answers a ping in it
BIG = 60000  # characters of the big answer: it fits, its JSON encoding does not


MPS = """
async def main():
    c = MQTTClient("mps-test", "127.0.0.1", %d, max_packet=1024, log=logs.append)
    asyncio.create_task(c.run())
    await until(lambda: c.up)
    await c.subscribe([("mps/#", False)])
    print("READY")
    await until(lambda: c.received >= 1, 10000)
    await asyncio.sleep_ms(300)  # anything else that came
    topic, payload, props = await c.get()
    print(json.dumps({"topic": topic, "size": len(payload), "too_big": c.too_big, "received": c.received}))
    await c.disconnect()

from edgemcp import connect as cm
raw = cm.connect("x", 30, max_packet=1024)
_, i = m.dec_varint(raw, 1)
print(json.dumps({"connect_mps": m.prop(m._props(raw, i + 10)[0], 0x27),
                  "none": m.prop(m._props(cm.connect("x"), 12)[0], 0x27)}))
asyncio.run(main())
"""


@pytest.mark.timeout(60)
def test_connect_carries_maximum_packet_size_and_the_broker_keeps_to_it(broker):
    proc = subprocess.Popen([node_binary(), str(HOST / "board.mjs"), "--exec", FAKE + MPS % broker.port],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=HOST)
    lines = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("READY"):
                break
        else:
            raise AssertionError("".join(lines))
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="mps-pub", protocol=mqtt.MQTTv5)
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        pub.publish("mps/big", b"B" * 4000, qos=1).wait_for_publish(5)
        pub.publish("mps/small", b"s" * 10, qos=1).wait_for_publish(5)
        pub.loop_stop()
        pub.disconnect()
        rest, _ = proc.communicate(timeout=30)
        lines.append(rest)
    finally:
        if proc.poll() is None:
            proc.kill()
    found = [json.loads(x) for x in "".join(lines).splitlines() if x.startswith("{")]
    assert found and found[0] == {"connect_mps": 1024, "none": None}, lines
    # the 4000-byte message was never sent to the board (it would not fit): only the small one came
    assert found[-1] == {"topic": "mps/small", "size": 10, "too_big": 0, "received": 1}, lines


def test_a_write_that_cannot_drain_fails_the_link_in_time():
    out = run_micropython('''
class Stalling(Fake):
    stall = False
    async def drain(self):
        if self.stall:
            await asyncio.Event().wait()
    async def wait_closed(self):
        self.closed = True
        self.ev.set()

async def main():
    fakes = []
    async def opener(h, p):
        fakes.append(Stalling())
        return fakes[-1], fakes[-1]
    c = MQTTClient("t", "h", opener=opener, timeout=1, min_delay=10, max_delay=20, log=logs.append)
    asyncio.create_task(c.run())
    await until(lambda: c.up)
    fakes[0].stall = True
    t0 = time.ticks_ms()
    ok = await c.publish("a/b", b"x", qos=0)  # stalls, fails the link, is sent again after the reconnect
    took = time.ticks_diff(time.ticks_ms(), t0)
    print(json.dumps({"ok": ok, "took": took, "connects": c.connects, "closed": fakes[0].closed,
                      "logs": logs, "again": [b.hex() for b in fakes[-1].written if b[0] >> 4 == 3]}))

asyncio.run(main())
''')
    assert out["ok"] is True and out["connects"] == 2 and out["closed"] is True, out
    assert 900 <= out["took"] < 5000, out
    assert any("TimeoutError" in line for line in out["logs"]), out
    assert out["again"], out
