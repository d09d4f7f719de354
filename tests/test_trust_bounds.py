"""Issue 13 item 4: bounded memory. The device announces an MQTT Maximum Packet Size (so the
broker never hands it a 5 MB message), log lines are cut, the unit bounds memory and tasks,
and the agent's peak RSS stays under 80 MB through a storm of bad input (bench/bad_input.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.device import config as cfg
from edge_agent.device.runtime import Agent
from edge_agent.device.service import TruncatingFilter
from edge_agent.mqtt import paho_private
from edge_agent.mqtt.loop import LoopDriver
from tests.raw_client import RawMcpClient

ROOT = Path(__file__).resolve().parent.parent
NAME = "devices/bounds/pi-1"
SID = "bounds-pi-1"

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


def _config(tmp_path, **link):
    return cfg.from_dict({
        "device": {"server_name": NAME, "server_id": SID, "simulate": True, "state_dir": str(tmp_path / "s")},
        "link": {"reconnect_min": 0.1, "reconnect_max": 0.3, **link},
        "drivers": [{"kind": "led", "name": "status_led", "pin": 17}],
    })


async def _until(predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


INIT = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "big", "version": "0"}}


@pytest.mark.parametrize("limit,delivered", [(None, False), (0, True)])
async def test_a_huge_message_never_reaches_the_device(broker, tmp_path, limit, delivered):
    """Default (256 KiB announced in CONNECT): the broker drops a 1 MB initialize for the device;
    with ``max_packet_size = 0`` (no limit) the same message opens a session (the test can fail)."""
    agent = Agent(_config(tmp_path, **({} if limit is None else {"max_packet_size": limit})), broker_url=broker.url)
    await agent.start(connect_timeout=10)
    raw = RawMcpClient(broker.url, "big-1", SID, NAME)
    try:
        raw.send("initialize", {**INIT, "clientInfo": {"name": "x" * 1_000_000, "version": "0"}})
        raw.cid = "small-1"  # then a small one from the same connection: delivered after it, in order
        raw.send("initialize", INIT)
        await _until(lambda: "small-1" in agent.server.sessions)
        assert ("big-1" in agent.server.sessions) is delivered
    finally:
        raw.close(goodbye=False)
        await agent.stop()


def test_log_lines_are_cut(caplog):
    logger = logging.getLogger("edge_agent.test_trust_bounds")
    handler = logging.Handler()
    seen: list[str] = []
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    handler.addFilter(TruncatingFilter(100))
    logger.addHandler(handler)
    try:
        logger.warning("client %s said %s", "c" * 10, "x" * 100_000)
        logger.warning("short")
    finally:
        logger.removeHandler(handler)
    assert len(seen[0]) < 150 and seen[0].endswith("(100023 characters)")
    assert seen[1] == "short"


def test_unit_bounds_memory_and_tasks():
    unit = (ROOT / "systemd" / "edge-agent.service").read_text()
    lines = {line.split("=", 1)[0]: line.split("=", 1)[1] for line in unit.splitlines() if "=" in line and line[0] != "#"}
    assert lines["MemoryMax"] == "128M" and lines["TasksMax"] == "64" and lines["MemorySwapMax"] == "0"


def test_rss_stays_under_80_mb_through_bad_input():
    """bench/bad_input.py, a third of its storm (5 MB messages, spoofed initializes, malformed
    and deeply nested JSON, poisoned properties): peak VmRSS < 80 MB and the agent still answers.
    (The 20,000-request flood: the next test.)"""
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "bad_input.py"), "--scale", "0.3", "--json",
                          "--steps", "huge,spoofed,malformed,poison"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["answered_after"] and figures["rss_peak_mb"] < 80, figures


def test_rss_stays_under_80_mb_through_a_request_flood():
    """bench/bad_input.py's flood: one client sends 20,000 ``tools/list`` without waiting. An
    answer still queued for the broker counts against the client's in-flight bound, so the
    excess is refused at once (-32004, at QoS 0) instead of ~20,000 answers piling up in paho's
    queue (peak 74 MB, +40 MB, before; 94 MB after the whole storm)."""
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "bad_input.py"), "--json", "--steps", "flood"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"\n20,000-request flood: {figures}")
    assert figures["flood"] == 20000 and figures["answered_after"], figures
    assert figures["rss_peak_mb"] < 80, figures
    assert figures["rss_peak_mb"] - figures["rss_before_mb"] < 15, figures  # was +40 MB


class StalledUplink:
    """A TCP proxy to the broker whose client-to-broker direction can be stalled (the proxy stops
    reading it, with a small receive buffer, as a broker that reads slower than we write)."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.flowing = threading.Event()
        self.flowing.set()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # inherited by the accepted socket
        self.port = self.server.getsockname()[1]
        self.socks: list[socket.socket] = [self.server]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        conn, _ = self.server.accept()
        up = socket.create_connection(("127.0.0.1", self.target_port))
        self.socks += [conn, up]
        threading.Thread(target=self._pipe, args=(conn, up, True), daemon=True).start()
        threading.Thread(target=self._pipe, args=(up, conn, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, stallable: bool) -> None:
        try:
            while True:
                if stallable:
                    self.flowing.wait()
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self.flowing.set()
        for sock in self.socks:
            sock.close()


async def test_a_link_stops_reading_while_the_broker_does_not_take_its_writes(broker):
    """Backpressure in the MQTT adapter (every link): while paho holds more than MAX_UNWRITTEN
    packets the socket did not take, the driver stops reading, so what the broker has for us
    stays there instead of becoming more answers in our heap; reading resumes once they drain."""
    proxy = StalledUplink(broker.port)
    driver = LoopDriver(asyncio.get_running_loop(), misc_interval=0.1)
    driver.MAX_UNWRITTEN = 50
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="stalled-uplink", protocol=mqtt.MQTTv5)
    handled = [0]
    subscribed = asyncio.Event()

    def on_message(c, u, m):  # an "answer" of 1 KB per message read
        handled[0] += 1
        driver.publish(client, "stalled/answers", b"x" * 1024, qos=0)

    client.on_connect = lambda c, u, f, rc, p: c.subscribe("stalled/requests", qos=0)
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_message = on_message
    driver.attach(client)
    flooder = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="stalled-flooder", protocol=mqtt.MQTTv5)
    try:
        await driver.connect(client, "127.0.0.1", proxy.port, keepalive=60)
        client.socket().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        await asyncio.wait_for(subscribed.wait(), 10)
        proxy.flowing.clear()  # the broker takes nothing more from us
        flooder.connect("127.0.0.1", broker.port)
        flooder.loop_start()
        for _ in range(3000):
            flooder.publish("stalled/requests", b"r" * 64, qos=0)
        await _until(lambda: driver.paused >= 1, timeout=15)
        seen = handled[0]
        await asyncio.sleep(0.5)
        assert handled[0] == seen, "read on while paused"
        assert paho_private.unwritten_packets(client) > 25
        proxy.flowing.set()  # the broker reads again: the backlog drains, reading resumes
        await _until(lambda: handled[0] > seen and paho_private.unwritten_packets(client) <= 25, timeout=15)
        print(f"\npaused {driver.paused} time(s) after {seen} messages; {handled[0]} handled after resuming")
    finally:
        flooder.loop_stop()
        flooder.disconnect()
        driver.close()
        client.socket() and client.socket().close()
        proxy.close()
