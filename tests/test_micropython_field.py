"""The board in the field (issue 16 items 3, 4, 5, 7), under the MicroPython WebAssembly port
against a real Mosquitto: what a greenhouse does to it.

The board's surroundings are test doubles of hardware that cannot exist here, faithful to the
ESP32 firmware's APIs (micropython/host/: ``network.WLAN`` with the ESP32's status codes,
``socket.getaddrinfo`` from a DNS table, ``ntptime`` setting a clock that starts in 2000 like a
cold RTC, ``ssl.SSLContext`` backed by Node's TLS with verification on). The test describes
them in a "world" file that board.mjs reads at every use, and changes it while the board runs.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import anyio
import mcp
import pytest
import trustme

from edge_agent import acl
from edge_agent.cloud import connect, mqtt_client
from edge_agent.testing.broker import LocalBroker, free_port
from tests.faults import CuttableProxy
from tests.test_micropython_board import HOST, NAME, SID, Board, RawClient, node_binary

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


def site(mosquitto, **extra) -> str:
    """site_config.py for a board on ``mosquitto`` (its port; ``extra`` overrides, e.g. the host)."""
    config = {"broker": "127.0.0.1", "port": mosquitto.port, "server_name": NAME, "server_id": SID, **extra}
    return f"config = {json.dumps(config)}\n"


def world(path: Path, **state) -> str:
    path.write_text(json.dumps(state))
    return str(path)


def reading(session_result) -> dict:
    return json.loads(session_result.contents[0].text)


# --------------------------------------------------------------------------- item 7: server/discover


async def test_server_discover_is_refused_at_once_so_clients_fall_back(broker, tmp_path):
    with Board(tmp_path, site(broker)) as b:
        b.wait_log(f"online as {NAME}")
        raw = RawClient(broker, "raw-discover")
        try:
            discover = {"jsonrpc": "2.0", "id": "d1", "method": "server/discover", "params": {
                "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}}
            t0 = time.monotonic()
            raw.send(raw.control, discover)  # sessionless: on the control topic
            err = raw.answer("d1", timeout=3)["error"]
            assert err["code"] == -32601 and "server/discover" in err["message"] and "2025-11-25" in err["message"]
            raw.send(raw.rpc, {**discover, "id": "d2"})  # or on its RPC topic, before any initialize
            assert raw.answer("d2", timeout=3)["error"]["code"] == -32601
            assert time.monotonic() - t0 < 3
        finally:
            raw.close()
        # the official SDK's recommended client (mode="auto" probes server/discover first)
        t0 = time.monotonic()
        async with mcp.Client(mqtt_client(broker.url, NAME)) as client:
            elapsed = time.monotonic() - t0
            assert client.protocol_version == "2025-11-25"
            assert "vent_set_angle" in {t.name for t in (await client.list_tools()).tools}
        assert elapsed < 3, f"connect took {elapsed:.1f} s: the discover probe waited for its timeout"


async def test_a_retained_request_on_the_control_topic_is_never_served(broker, tmp_path):
    planted = RawClient(broker, "raw-planted")
    try:
        init = {"jsonrpc": "2.0", "id": "planted", "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "x", "version": "0"}}}
        planted.c.publish(planted.control, json.dumps(init), qos=1, retain=True,
                          properties=planted.props).wait_for_publish(5)
        with Board(tmp_path, site(broker)) as b:
            b.wait_log(f"online as {NAME}")
            with pytest.raises(AssertionError):
                planted.answer("planted", timeout=1.0)
            async with connect(broker.url, NAME) as session:
                health = reading(await session.read_resource("device://health"))["value"]
                assert health["sessions"] == 1  # only this one: the retained initialize opened none
    finally:
        planted.c.publish(planted.control, b"", qos=1, retain=True).wait_for_publish(5)
        planted.close()


# --------------------------------------------------------------------------- item 3: persistent session


async def test_a_request_sent_while_the_board_is_offline_is_answered_when_it_returns(broker, tmp_path):
    proxy = CuttableProxy(broker.port)
    up = broker.port
    try:
        with Board(tmp_path, site(broker, port=proxy.port, session_expiry=600)) as b:
            b.wait_log(f"online as {NAME}")
            raw = RawClient(broker, "raw-offline")
            try:
                raw.initialize()
                proxy.target_port = free_port()  # nothing listens there: the board cannot come back
                proxy.cut()
                b.wait_log("mqtt: ", timeout=5)
                raw.send(raw.rpc, {"jsonrpc": "2.0", "id": "while-away", "method": "tools/call",
                                   "params": {"name": "pump_set", "arguments": {"on": True}}})
                stale = time.time() + 0.5  # this one's client gives up after 0.5 s
                raw.send(raw.rpc, {"jsonrpc": "2.0", "id": "too-late", "method": "tools/call",
                                   "params": {"name": "fan_set", "arguments": {"duty": 1},
                                              "_meta": {"dev.edge-agent/deadline": stale}}})
                with pytest.raises(AssertionError):
                    raw.answer("while-away", timeout=1.0)  # queued at the broker, not answered
                await anyio.sleep(max(0.0, stale + 2.5 - time.time()))  # past it by more than the 2 s skew
                proxy.target_port = up
                b.wait_log(f"online as {NAME}", count=2, timeout=40)
                answer = raw.answer("while-away", timeout=10)
                assert answer["result"]["isError"] is False and answer["result"]["structuredContent"] == {"on": True}
                late = raw.answer("too-late", timeout=10)["result"]
                assert late["isError"] is True and "fan_set refused: the command arrived" in late["content"][0]["text"]
            finally:
                raw.close()
    finally:
        proxy.close()


async def test_a_short_outage_keeps_the_presence_and_a_long_one_clears_it_after_the_will_delay(broker, tmp_path):
    """Will Delay Interval: the broker holds the board's will (the empty retained presence)
    while the board comes back within ``will_delay``; when it does not, the will follows."""
    proxy = CuttableProxy(broker.port)
    presence = f"$mcp-server/presence/{SID}/{NAME}"
    try:
        with Board(tmp_path, site(broker, port=proxy.port, session_expiry=600, will_delay=3)) as b:
            b.wait_log(f"online as {NAME}")
            raw = RawClient(broker, "raw-will")
            try:
                proxy.cut()  # the broker sees the link drop at once; the board is back in ~1 s
                b.wait_log(f"online as {NAME}", count=2, timeout=20)
                time.sleep(3.5)  # past the will delay: a will sent at the cut would have arrived
                with raw.lock:
                    assert [m for m in raw.messages if m.topic == presence and not m.payload] == []
                b.stop(signal.SIGKILL)  # power cut: this time it does not come back
                proxy.cut()  # (the proxy does not pass an EOF on: the broker sees the link end here)
                cut = time.monotonic()
                while not any(m.topic == presence and not m.payload for m in list(raw.messages)):
                    assert time.monotonic() < cut + 15, "no empty will after the board died"
                    await anyio.sleep(0.05)
                assert time.monotonic() - cut > 2.5  # held for the will delay (3 s)
            finally:
                raw.close()
    finally:
        proxy.close()


COUNTER_MAIN = """
from edgemcp import Device

app = Device(server_name=%r, description="counter")
runs = [0]


@app.tool("bump", "Count one more (changes the board: never run twice for one request)", destructive=True)
def bump():
    runs[0] += 1
    return {"runs": runs[0]}


app.run()
""" % NAME


class PubackLosingProxy(CuttableProxy):
    """A CuttableProxy that, once ``armed``, swallows the next PUBACK the board sends and cuts
    every link: a request the board took (and acknowledged) whose PUBACK the broker never got."""

    armed = False

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self.server.accept()
            except OSError:
                return
            try:
                up = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                down.close()
                continue
            self.socks += [down, up]
            threading.Thread(target=self._board_to_broker, args=(down, up), daemon=True).start()
            threading.Thread(target=self._pipe, args=(up, down), daemon=True).start()

    def _board_to_broker(self, src: socket.socket, dst: socket.socket) -> None:
        buf = b""
        try:
            while data := src.recv(65536):
                buf += data
                while len(buf) >= 2:  # whole MQTT packets: fixed header, remaining length (2.1.4)
                    n, i, shift = 0, 1, 0
                    while i < len(buf) and buf[i] & 0x80:
                        n |= (buf[i] & 0x7F) << shift
                        i, shift = i + 1, shift + 7
                    if i >= len(buf) or len(buf) < i + 1 + (n | (buf[i] & 0x7F) << shift):
                        break
                    end = i + 1 + (n | (buf[i] & 0x7F) << shift)
                    packet, buf = buf[:end], buf[end:]
                    if self.armed and packet[0] >> 4 == 4:  # PUBACK
                        self.armed = False
                        self.cut()
                        return
                    dst.sendall(packet)
        except OSError:
            pass


async def test_a_request_whose_puback_was_lost_is_answered_again_not_run_again(broker, tmp_path):
    """The board acknowledges a QoS 1 request when it takes it; if that PUBACK is lost with the
    link, the broker sends the request again (DUP) after the reconnect. A tool that changes
    something is not run twice: the redelivery gets the kept answer."""
    proxy = PubackLosingProxy(broker.port)
    main = tmp_path / "counter_main.py"
    main.write_text(COUNTER_MAIN)
    try:
        with Board(tmp_path, site(broker, port=proxy.port, session_expiry=600), main=main) as b:
            b.wait_log(f"online as {NAME}")
            raw = RawClient(broker, "raw-dup")
            try:
                raw.initialize()
                proxy.armed = True
                raw.send(raw.rpc, {"jsonrpc": "2.0", "id": "once", "method": "tools/call",
                                   "params": {"name": "bump", "arguments": {}}})
                assert raw.answer("once", timeout=30)["result"]["structuredContent"] == {"runs": 1}
                b.wait_log("already answered", timeout=30)  # the redelivery came, and was not run
                assert raw.answer("once", timeout=10)["result"]["structuredContent"] == {"runs": 1}
                assert not proxy.armed and "mqtt: " in b.log  # the link was cut once
                raw.send(raw.rpc, {"jsonrpc": "2.0", "id": "twice", "method": "tools/call",
                                   "params": {"name": "bump", "arguments": {}}})
                assert raw.answer("twice")["result"]["structuredContent"] == {"runs": 2}
            finally:
                raw.close()
    finally:
        proxy.close()


# --------------------------------------------------------------------------- item 5: Wi-Fi, DNS


def wifi_site(broker, **extra) -> str:
    return site(broker, wifi_ssid="greenhouse-iot", wifi_password="hunter2", **extra)


async def test_wifi_wrong_password_and_missing_ap_fail_fast_with_their_cause(broker, tmp_path):
    w = tmp_path / "world.json"
    # a wrong WPA2 password on IDF 5: reason 15, which MicroPython 1.27's status() shows as
    # STAT_CONNECTING for as long as the station retries by itself (by default: forever)
    world(w, wlan={"ssid": "greenhouse-iot", "password": "other", "delay_ms": 800})
    with Board(tmp_path, wifi_site(broker), extra=("--world", str(w))) as b:
        t0 = time.monotonic()
        b.wait_log("wifi: greenhouse-iot: 4-way handshake timeout (wrong password?) (status 15)", timeout=8)
        assert time.monotonic() - t0 < 5  # two attempts of 0.8 s, not the 20 s wifi_timeout
        world(w, wlan={"ssid": "elsewhere", "password": "hunter2"})
        b.wait_log("wifi: greenhouse-iot: no ap found (status 201)", timeout=10)
        world(w, wlan={"ssid": "greenhouse-iot", "password": "hunter2", "delay_ms": 300})
        b.wait_log(f"online as {NAME}", timeout=40)  # (the station retried by itself meanwhile, as an ESP32's does)
        assert "wifi: connecting to greenhouse-iot" in b.log


async def test_losing_wifi_while_online_is_a_lost_link_at_once(broker, tmp_path):
    """As mqtt_as does: the station is checked every 2 s, so the board does not wait 1.5 x
    keepalive (45 s) to notice that the access point is gone."""
    w = tmp_path / "world.json"
    ap = {"ssid": "greenhouse-iot", "password": "hunter2", "delay_ms": 100}
    world(w, wlan=ap)
    with Board(tmp_path, wifi_site(broker), extra=("--world", str(w))) as b:
        b.wait_log(f"online as {NAME}")
        world(w, wlan={**ap, "up": False})
        t0 = time.monotonic()
        b.wait_log("mqtt: network down", timeout=5)
        assert time.monotonic() - t0 < 4
        b.wait_log("wifi: greenhouse-iot: no ap found (status 201)", timeout=10)
        world(w, wlan=ap)
        b.wait_log(f"online as {NAME}", count=2, timeout=40)


def test_the_usb_console_turns_ctrl_c_off():
    """``"serial": "usb"``: a 0x03 byte in the JSON-RPC stream must not raise KeyboardInterrupt
    (``micropython.kbd_intr(-1)``, called before the console becomes the stream)."""
    code = """
import sys
calls = []
class Recorder:
    def kbd_intr(self, c):
        calls.append(c)
real = sys.modules.get("micropython")
sys.modules["micropython"] = Recorder()
from edgemcp.stdio import usb
try:
    usb()
except Exception:
    pass
print("KBD", calls)
"""
    done = subprocess.run([node_binary(), str(HOST / "board.mjs"), "--exec", code], capture_output=True, text=True,
                          timeout=60, cwd=HOST)
    assert "KBD [-1]" in done.stdout, done.stdout + done.stderr


async def test_dns_answer_is_cached_and_used_while_dns_is_down(broker, tmp_path):
    proxy = CuttableProxy(broker.port)
    w = tmp_path / "world.json"
    world(w, dns={"mqtt.test": "127.0.0.1"})
    try:
        with Board(tmp_path, site(broker, broker="mqtt.test", port=proxy.port, dns_ttl=4),
                   extra=("--world", str(w))) as b:
            b.wait_log(f"online as {NAME}")
            t_resolved = time.monotonic()
            world(w, dns=None)  # DNS down from now on
            proxy.cut()
            b.wait_log(f"online as {NAME}", count=2, timeout=20)
            if time.monotonic() - t_resolved < 4:  # within the TTL: the cached address, no query
                assert "dns: " not in b.log
            await anyio.sleep(max(0.0, 4.5 - (time.monotonic() - t_resolved)))
            proxy.cut()  # TTL over and DNS down: the last address, said in the log
            b.wait_log(f"online as {NAME}", count=3, timeout=20)
            assert "dns: mqtt.test: OSError(-202,); using 127.0.0.1" in b.log
    finally:
        proxy.close()


DNS_DOWN = """
import asyncio, hostworld
from edgemcp import net
logs = []
op = net.opener(ttl=1, log=logs.append)

async def attempts(n):
    for i in range(n):
        try:
            await op("mqtt.test", 1)  # port 1: refused, after the name is resolved
        except Exception:
            pass

async def main():
    await attempts(1)
    hostworld.world = lambda: {"dns": None}  # DNS down from now on
    await asyncio.sleep_ms(1100)  # past the TTL
    await attempts(5)
    first = hostworld.counts().get("dns")
    await asyncio.sleep_ms(1100)  # another TTL
    await attempts(2)
    print("dns", first, hostworld.counts().get("dns"), "log", len(logs))

asyncio.run(main())
"""


def test_dns_down_past_the_ttl_is_asked_again_once_per_ttl_not_on_every_attempt(tmp_path):
    """A failed lookup blocks an ESP32 for lwIP's DNS retries (seconds): with DNS down past the
    TTL, the cached address is used for another TTL, not looked up again on every reconnect."""
    w = world(tmp_path / "world.json", dns={"mqtt.test": "127.0.0.1"})
    done = subprocess.run([node_binary(), str(HOST / "board.mjs"), "--world", w, "--exec", DNS_DOWN],
                          capture_output=True, text=True, timeout=60, cwd=HOST)
    line = next((x.split() for x in done.stdout.splitlines() if x.startswith("dns ")), None)
    assert done.returncode == 0 and line, done.stdout + done.stderr[-2000:]
    assert (int(line[1]), int(line[2])) == (2, 3), done.stdout  # the first, one per TTL after it
    assert int(line[4]) == 2, done.stdout  # each failed query said once in the log


def test_unresolvable_broker_name_is_an_error_naming_it(broker, tmp_path):
    w = tmp_path / "world.json"
    world(w, dns={})
    with Board(tmp_path, site(broker, broker="nowhere.test"), extra=("--world", str(w))) as b:
        b.wait_log("dns: nowhere.test: OSError(-202", timeout=10)


# --------------------------------------------------------------------------- item 4: NTP


ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


async def test_readings_carry_a_timestamp_once_ntp_set_the_clock(broker, tmp_path):
    w = tmp_path / "world.json"
    world(w, clock="cold", ntp=False)
    with Board(tmp_path, site(broker, ntp_every=1), extra=("--world", str(w))) as b:
        b.wait_log(f"online as {NAME}")
        b.wait_log("clock: pool.ntp.org: OSError(110")
        async with connect(broker.url, NAME) as session:
            cold = reading(await session.read_resource("sensor://vent/angle"))
            assert "timestamp" not in cold and cold["unit"] == "°"
            world(w, clock="cold", ntp=True)
            b.wait_log("clock: set by pool.ntp.org", timeout=10)
            warm = reading(await session.read_resource("sensor://vent/angle"))
            health = reading(await session.read_resource("device://health"))["value"]
    assert health["idf_largest_free"] == 21504  # the largest free block of micropython/host/esp32.py's regions
    assert ISO_MS.match(warm["timestamp"]), warm  # the Pi's format (edge_agent/device/sensors.py iso())
    ts = datetime.fromisoformat(warm["timestamp"].replace("Z", "+00:00"))
    assert abs((datetime.now(timezone.utc) - ts).total_seconds()) < 30


def test_ntp_uses_the_boards_dns_cache_so_dns_down_does_not_stop_it(broker, tmp_path):
    """micropython-lib's ntptime looks its host up on every call (a blocking query, seconds
    when DNS is down). The board resolves the NTP host through the same cache as the broker's
    name (net.resolver, dns_ttl): with DNS down the clock is still set, from the cached address."""
    w = tmp_path / "world.json"
    world(w, dns={"mqtt.test": "127.0.0.1"})
    with Board(tmp_path, site(broker, broker="mqtt.test", ntp_every=1), extra=("--world", str(w))) as b:
        b.wait_log(f"online as {NAME}")
        b.wait_log("clock: set by pool.ntp.org")
        world(w, dns=None)  # DNS down from now on
        done = b.log.count("clock: set by pool.ntp.org")
        b.wait_log("clock: set by pool.ntp.org", count=done + 2, timeout=10)
        assert "clock: pool.ntp.org: OSError(-202" not in b.log, b.log


# --------------------------------------------------------------------------- item 3: TLS


def yesterday() -> datetime:
    """A real broker certificate's notBefore (trustme's default, 2000-01-01, is valid even by a
    cold board's clock)."""
    return datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(days=1)


@pytest.fixture
def tls_broker(tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("mqtt.test", not_before=yesterday())
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "server.pem"))
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "other-ca.pem"))
    plain = free_port()
    b = LocalBroker(workdir=tmp_path / "broker", listener_conf=(
        f"cafile {tmp_path / 'ca.pem'}\ncertfile {tmp_path / 'server.pem'}\nkeyfile {tmp_path / 'server.key'}"),
        extra_conf=f"listener {plain} 127.0.0.1\nallow_anonymous true\n")
    b.plain_url = f"mqtt://127.0.0.1:{plain}"
    with b:
        yield b


async def test_tls_with_the_broker_verified_against_the_ca_in_flash(tls_broker, tmp_path):
    w = tmp_path / "world.json"
    world(w, dns={"mqtt.test": "127.0.0.1", "wrong-name.test": "127.0.0.1"})
    good = site(tls_broker, broker="mqtt.test", ca_file="/ca.pem")
    put = ("--world", str(w), "--put", f"{tmp_path / 'ca.pem'}=/ca.pem")
    with Board(tmp_path, good, extra=put) as b:
        b.wait_log(f"online as {NAME}", timeout=15)
        async with connect(tls_broker.plain_url, NAME) as session:
            assert not (await session.call_tool("pump_set", {"on": True})).is_error
    # a CA that did not sign the broker's certificate: refused, never online
    other = site(tls_broker, broker="mqtt.test", ca_file="/ca.pem", server_id="esp32-test-02")
    with Board(tmp_path, other, label="wrong-ca",
               extra=("--world", str(w), "--put", f"{tmp_path / 'other-ca.pem'}=/ca.pem")) as b:
        b.wait_log("mqtt: ", timeout=15)
        assert "online as" not in b.log and ("TLS mqtt.test" in b.log), b.log
    # the right CA, but the certificate does not name the host the board dialled
    wrong = site(tls_broker, broker="wrong-name.test", ca_file="/ca.pem", server_id="esp32-test-03")
    with Board(tmp_path, wrong, label="wrong-name", extra=put) as b:
        b.wait_log("mqtt: ", timeout=15)
        assert "online as" not in b.log and "TLS wrong-name.test" in b.log, b.log


async def test_tls_on_a_cold_board_connects_once_ntp_set_the_clock_after_wifi(tls_broker, tmp_path):
    """mbedTLS checks the broker's certificate dates against the board's clock, which says
    2000-01-01 after a cold boot: TLS fails until NTP has set it. NTP needs the station, so the
    board tries it as soon as Wi-Fi is up (not before, then 10 s later) and, while the clock is
    unset, every 10 s."""
    w = world(tmp_path / "world.json", clock="cold", dns={"mqtt.test": "127.0.0.1"},
              wlan={"ssid": "greenhouse-iot", "password": "hunter2", "delay_ms": 1000})
    cfg = site(tls_broker, broker="mqtt.test", ca_file="/ca.pem", wifi_ssid="greenhouse-iot", wifi_password="hunter2")
    with Board(tmp_path, cfg, extra=("--world", w, "--put", f"{tmp_path / 'ca.pem'}=/ca.pem")) as b:
        t0 = time.monotonic()
        b.wait_log(f"online as {NAME}", timeout=30)
        took = time.monotonic() - t0
        log = b.log
        assert log.index("wifi: 192.168.4.2") < log.index("clock: set by pool.ntp.org") < log.index("online as")
        assert "clock: pool.ntp.org: " not in log, log  # no NTP try before the station was up
        assert took < 9, log  # not the 10 s retry of an NTP try made before Wi-Fi


async def test_board_serves_under_the_generated_acl_over_tls(tmp_path):
    """The fleet ACL ``edge-agent acl`` writes lets the board subscribe its one wildcard RPC
    filter ($mcp-rpc/+/{server-id}/{server-name}) and serve a client, over TLS with a password."""
    ca = trustme.CA()
    cert = ca.issue_cert("mqtt.test")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "server.pem"))
    pwfile = tmp_path / "passwords"
    pwfile.write_text("")
    for user, pw in (("esp1", "esp-secret"), ("ops", "ops-secret")):
        subprocess.run(["mosquitto_passwd", "-b", str(pwfile), user, pw], check=True, capture_output=True)
    fleet = {"devices": [{"username": "esp1", "server_id": SID, "server_name": NAME}],
             "clients": [{"username": "ops", "server_name_filters": ["devices/#"]}]}
    (tmp_path / "acl").write_text(acl.mosquitto_acl(acl.fleet_from_dict(fleet)))
    plain = free_port()
    b = LocalBroker(allow_anonymous=False, workdir=tmp_path / "broker", listener_conf=(
        f"cafile {tmp_path / 'ca.pem'}\ncertfile {tmp_path / 'server.pem'}\nkeyfile {tmp_path / 'server.key'}"),
        extra_conf=f"password_file {pwfile}\nacl_file {tmp_path / 'acl'}\nlistener {plain} 127.0.0.1\n")
    w = tmp_path / "world.json"
    world(w, dns={"mqtt.test": "127.0.0.1"})
    with b:
        config = site(b, broker="mqtt.test", ca_file="/ca.pem", username="esp1", password="esp-secret")
        with Board(tmp_path, config, extra=("--world", str(w), "--put", f"{tmp_path / 'ca.pem'}=/ca.pem")) as board:
            board.wait_log(f"online as {NAME}", timeout=15)
            assert "refused a subscription" not in board.log
            async with connect(f"mqtt://ops:ops-secret@127.0.0.1:{plain}", NAME) as session:
                assert not (await session.call_tool("pump_set", {"on": True})).is_error
