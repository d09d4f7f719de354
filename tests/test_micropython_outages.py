"""The board's MQTT client under link outages, with MicroPython's real stream semantics: on
MicroPython ``StreamWriter.close()`` does nothing and only ``await wait_closed()`` closes the
socket (``extmod/asyncio/stream.py``). The host shim (micropython/host/hostio.py) behaves the
same way and board.mjs counts the TCP sockets the board still holds (``host.sockets_open()``),
so a client that forgets ``wait_closed`` leaks one socket per outage here as on an ESP32,
where lwIP has only a handful."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from tests.faults import CuttableProxy
from tests.test_micropython_board import node_binary

ROOT = Path(__file__).resolve().parents[1]
BOARD = ROOT / "micropython" / "host" / "board.mjs"


CODE = """
import asyncio, host
from edgemcp.mqtt import MQTTClient

c = MQTTClient("outage-test", "127.0.0.1", %(port)d, keepalive=30, min_delay=20, max_delay=100,
               log=lambda *a: None)

async def main():
    asyncio.create_task(c.run())
    while c.connects < %(outages)d + 1:
        await asyncio.sleep_ms(20)
    print("connects", c.connects, "open", host.sockets_open())
    await c.disconnect()
    await asyncio.sleep_ms(300)
    print("after disconnect open", host.sockets_open())

asyncio.run(main())
"""


@pytest.mark.timeout(180)
def test_twenty_outages_leave_at_most_one_socket_open(broker):
    node = node_binary()
    proxy = CuttableProxy(broker.port, hold=0.3)  # every link cut 0.3 s after it opened
    outages = 20
    try:
        done = subprocess.run([node, str(BOARD), "--esp32", "1", "--exec",
                               CODE % {"port": proxy.port, "outages": outages}], capture_output=True, text=True,
                              timeout=150)
    finally:
        proxy.close()
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout.splitlines()
    during = next(line.split() for line in out if line.startswith("connects "))
    after = next(line.split() for line in out if line.startswith("after disconnect "))
    assert int(during[1]) >= outages + 1 and proxy.accepted >= outages + 1, done.stdout
    assert int(during[3]) <= 1, f"sockets still open after {outages} outages: {done.stdout}"
    assert int(after[3]) == 0, f"the socket outlived a clean DISCONNECT: {done.stdout}"


BLACKHOLE = """
import asyncio, os, sys
from edgemcp.mqtt import MQTTClient

def fds():
    return len(os.listdir("/proc/self/fd"))

logs = []
c = MQTTClient("blackhole-test", "127.0.0.1", %(port)d, timeout=1, min_delay=20, max_delay=40, log=logs.append)

async def main():
    f0 = fds()
    asyncio.create_task(c.run())
    while len(logs) < %(attempts)d:
        await asyncio.sleep_ms(20)
    print("attempts", len(logs), "fds", f0, fds(), "last", logs[-1])

asyncio.run(main())
"""


def unix32() -> Path:
    """The stock 32-bit unix MicroPython 1.27 (real extmod asyncio, real sockets, a socket with no
    finaliser: what is not closed stays open) beside EDGEMCP_UNIX32."""
    binary = os.environ.get("EDGEMCP_UNIX32")
    if not binary:
        pytest.skip("EDGEMCP_UNIX32 not set: no 32-bit unix MicroPython on this machine")
    stock = Path(binary).parent.parent / "build-stock" / "micropython"
    return stock if stock.exists() else Path(binary)


def blackhole() -> tuple[socket.socket, list[socket.socket]]:
    """A listener whose accept queue is full: further SYNs go unanswered (a host that is off)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    fill = []
    for _ in range(3):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(srv.getsockname())
        except BlockingIOError:
            pass
        fill.append(s)
    return srv, fill


def against_blackhole(command, env=None) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run ``command(port)`` (a BLACKHOLE program) against :func:`blackhole`: the finished process
    and its ``attempts N fds BEFORE AFTER ...`` line, split."""
    srv, fill = blackhole()
    try:
        done = subprocess.run(command(srv.getsockname()[1]), env=env, capture_output=True, text=True, timeout=100)
    finally:
        for s in fill + [srv]:
            s.close()
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    return done, next(line.split() for line in done.stdout.splitlines() if line.startswith("attempts "))


@pytest.mark.timeout(120)
def test_connects_that_time_out_leave_no_socket_open():
    """A broker host that never answers the SYN (a listener whose backlog is full): each attempt
    times out in ``open_connection`` while it waits for the connection. MicroPython's own
    ``open_connection`` leaves that socket open (4 -> 11 fds in 6 attempts); the board's closes it."""
    done, line = against_blackhole(lambda port: [str(unix32()), "-c", BLACKHOLE % {"port": port, "attempts": 6}],
                                   env={**os.environ, "MICROPYPATH": f"{ROOT / 'micropython'}:.frozen"})
    assert "Timeout" in done.stdout, done.stdout  # the attempts did time out while connecting
    before, after = int(line[3]), int(line[4])
    assert after <= before + 1, f"sockets left open by timed-out connects: {done.stdout}"


@pytest.mark.timeout(120)
def test_the_host_harness_counts_a_socket_from_its_connect_and_closes_a_timed_out_one():
    """The harness (board.mjs) counts a socket from the start of its connect, as lwIP holds it
    from socket() on; its stand-in for ``connect.open_connection`` closes one that timed out."""
    code = BLACKHOLE.replace("import asyncio, os, sys", "import asyncio, host").replace(
        'len(os.listdir("/proc/self/fd"))', "host.sockets_open()")
    done, line = against_blackhole(lambda port: [node_binary(), str(BOARD), "--exec",
                                                 code % {"port": port, "attempts": 4}])
    assert "Timeout" in done.stdout and int(line[4]) <= int(line[3]) + 1, done.stdout


STALLED_SERIAL = """
import asyncio
from edgemcp import mcp
from edgemcp.stdio import SerialLink

class Stalled:
    # a native-USB console with no host reading: drain never completes, bytes pile up
    out_buf = b""

    def write(self, b):
        self.out_buf += bytes(b)

    async def drain(self):
        await asyncio.Event().wait()

async def main():
    w = Stalled()
    link = SerialLink(mcp.Server("t", "1"), None, w)
    link.timeout = 300
    t = asyncio.create_task(link.send("serial", {"jsonrpc": "2.0", "method": "x"}))
    await asyncio.sleep_ms(1500)
    print("done", t.done(), "locked", link._lock.locked(), "buffered", len(w.out_buf))
    try:
        await t
    except asyncio.TimeoutError:
        pass

asyncio.run(main())
"""


def test_a_serial_line_nobody_reads_times_out_and_frees_its_buffer():
    """A native-USB board whose host does not read: each message's drain has a timeout, after
    which the serial lock is free and the unsent bytes are dropped, not kept on the heap."""
    done = subprocess.run([node_binary(), str(BOARD), "--exec", STALLED_SERIAL], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    assert done.stdout.split() == ["done", "True", "locked", "False", "buffered", "0"], done.stdout


OUT_OF_MEMORY = """
from edgemcp.core import jsonrpc
payload = b"[" + b"1," * 5000 + b"1]"  # 10 KB of JSON: a list of 5,001 numbers to build
ballast = []
try:
    while True:  # the heap full but for ~1 KB
        ballast.append(bytearray(512))
except MemoryError:
    pass
ballast.pop()
ballast.pop()
try:
    jsonrpc.loads(payload)
    r = "parsed"
except jsonrpc.RpcError as e:
    r = (e.code, e.message)
ballast = None
print(r)
"""


def test_json_that_does_not_fit_the_heap_is_out_of_memory_not_a_parse_error():
    """The shared core's ``jsonrpc.loads`` on a board whose heap cannot hold the parsed request:
    -32603 "Out of memory" (the board's state, not the client's JSON), on the real MicroPython
    json module in a fixed 64 KB heap."""
    done = subprocess.run([str(unix32()), "-X", "heapsize=64k", "-c", OUT_OF_MEMORY],
                          env={**os.environ, "MICROPYPATH": f"{ROOT / 'micropython'}:.frozen"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    assert done.stdout.strip() == "(-32603, 'Out of memory')", done.stdout


def test_a_deadline_gets_the_pis_two_seconds_of_clock_skew():
    """A request redelivered after an outage carries the client's deadline: the board refuses a
    changing call only 2 s past it, as the Pi does (``McpServer.deadline_skew``), so a board
    clock a second fast does not refuse what the Pi would run."""
    code = """
import time
from edgemcp import mcp
now = time.time()
late = [mcp._late({"_meta": {"dev.edge-agent/deadline": now - d}}, None) for d in (1, 5)]
print(late[0], 2 <= late[1] <= 4)
"""
    done = subprocess.run([node_binary(), str(BOARD), "--exec", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    assert done.stdout.split() == ["0", "True"], done.stdout


SESSIONS_MAIN = '''
from edgemcp import Device

app = Device(server_name="devices/test/esp32-s", description="sessions", max_sessions=2)
app.run()
'''


def test_sessions_are_bounded_and_one_more_client_is_told_why(broker, tmp_path):
    """Each MCP session holds ~1 KB of the board's heap and two broker subscriptions: clients
    that come and go without a will (fresh ids) must not grow them without bound. One more
    initialize than ``max_sessions`` is answered -32004 naming the bound; once a client has
    left, a new one is served."""
    from tests.test_micropython_board import Board, RawClient, mqtt_site

    name, sid = "devices/test/esp32-s", "esp32-sessions-01"
    main = tmp_path / "main.py"
    main.write_text(SESSIONS_MAIN)
    raws = []
    with Board(tmp_path, mqtt_site(broker, name, sid), main=main) as b:
        b.wait_log("online as " + name)
        try:
            for i in range(3):
                raws.append(RawClient(broker, f"session-client-{i}", sid, name))
            assert "result" in raws[0].initialize() and "result" in raws[1].initialize()
            raws[2].send(raws[2].control, {"jsonrpc": "2.0", "id": "init", "method": "initialize", "params": {
                "protocolVersion": "2024-11-05", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}})
            refused = raws[2].answer("init")
            assert refused["error"]["code"] == -32004, refused
            assert refused["error"]["message"].startswith("Too many sessions (2)"), refused
            raws[0].send(raws[0].rpc, {"jsonrpc": "2.0", "method": "notifications/disconnected"})
            for i in range(50):  # once the board has forgotten the session that left, the new one is served
                reply = raws[2].initialize(f"init-again-{i}")
                if "result" in reply:
                    break
            assert "result" in reply, reply
            assert "initialize of session-client-2 refused: 2 sessions" in b.log
        finally:
            for r in raws:
                r.close()


REFUSED = """
import asyncio, host
from edgemcp.mqtt import MQTTClient

logs = []
c = MQTTClient("refused-test", "127.0.0.1", %(port)d, min_delay=10, max_delay=20, log=logs.append)

async def main():
    asyncio.create_task(c.run())
    while len(logs) < 20:
        await asyncio.sleep_ms(10)
    await c.disconnect()
    await asyncio.sleep_ms(100)
    print("open", host.sockets_open(), "last", logs[-2])

asyncio.run(main())
"""


def test_refused_connections_fail_on_the_first_write_and_leave_no_socket_open():
    """On the ESP32 port ``open_connection`` does not wait for the connection: a refused one
    opens, then fails on the first write (ECONNRESET), with its socket allocated. The harness
    in ``--esp32`` mode does the same: after 20 refusals the board holds no socket."""
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    closed = port.getsockname()[1]
    port.close()  # nothing listens there: every connection is refused
    done = subprocess.run([node_binary(), str(BOARD), "--esp32", "1", "--exec", REFUSED % {"port": closed}],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    line = next(x.split(" ", 3) for x in done.stdout.splitlines() if x.startswith("open "))
    assert "OSError(104" in line[3], done.stdout  # reported by the first write, as on a board
    assert int(line[1]) == 0, done.stdout
