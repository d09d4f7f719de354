"""The board's MQTT client under link outages, with MicroPython's real stream semantics: on
MicroPython ``StreamWriter.close()`` does nothing and only ``await wait_closed()`` closes the
socket (``extmod/asyncio/stream.py``). The host shim (micropython/host/hostio.py) behaves the
same way and board.mjs counts the TCP sockets the board still holds (``host.sockets_open()``),
so a client that forgets ``wait_closed`` leaks one socket per outage here as on an ESP32,
where lwIP has only a handful."""

from __future__ import annotations

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
        done = subprocess.run([node, str(BOARD), "--exec", CODE % {"port": proxy.port, "outages": outages}],
                              capture_output=True, text=True, timeout=150)
    finally:
        proxy.close()
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout.splitlines()
    during = next(line.split() for line in out if line.startswith("connects "))
    after = next(line.split() for line in out if line.startswith("after disconnect "))
    assert int(during[1]) >= outages + 1 and proxy.accepted >= outages + 1, done.stdout
    assert int(during[3]) <= 1, f"sockets still open after {outages} outages: {done.stdout}"
    assert int(after[3]) == 0, f"the socket outlived a clean DISCONNECT: {done.stdout}"
