"""The board's configuration is checked at start (``Device(...)``, edgemcp/config.py), under the
MicroPython WebAssembly port: a key of the wrong type or out of its range, or a serial line that
is neither ``"usb"`` nor a UART dict, is a ValueError naming the key, not a TypeError or
KeyError later inside the MQTT client or at ``run()``. (A malformed ``auth``:
tests/test_micropython_tokens.py.)"""

from __future__ import annotations

import subprocess

from tests.test_micropython_board import HOST, node_binary

NAME = "devices/test/esp32-cfg"


def start(options: list[dict]) -> list[str]:
    """``Device(server_name=NAME, broker=..., **options)`` for each of ``options`` under
    MicroPython: "OK" or "ValueError: <message>" for each."""
    code = "from edgemcp import Device\n"
    for o in options:
        code += f"""
try:
    Device(server_name={NAME!r}, **{dict({"broker": "127.0.0.1", "ntp": None, "log": False}, **o)!r})
    print("OK")
except ValueError as e:
    print("ValueError:", e)
"""
    done = subprocess.run([node_binary(), str(HOST / "board.mjs"), "--exec", code], cwd=HOST,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == len(options), done.stdout
    return lines


def test_numbers_of_the_wrong_type_or_range_are_refused_at_start_naming_the_key():
    bad = {"port": "1883", "keepalive": -1, "qos": 2, "queue_len": 0, "max_packet": 64, "session_expiry": 1.5,
           "will_delay": True, "wifi_timeout": 0, "ntp_every": "daily", "dns_ttl": None, "max_sessions": 0}
    lines = start([{k: v} for k, v in bad.items()])
    for (key, value), line in zip(bad.items(), lines):
        assert line.startswith(f"ValueError: {key} must be a "), line
        assert line.endswith(f", not {value!r}"), line
    assert lines[0] == "ValueError: port must be a whole number from 1 to 65535, not '1883'"
    assert lines[7] == "ValueError: wifi_timeout must be a number (s) from 1, not 0"


def test_a_serial_line_must_be_usb_or_a_uart():
    lines = start([{"serial": "uart1"}, {"serial": {"tx": 17, "rx": 16}}, {"serial": {"uart": "1"}}])
    assert all(line.startswith('ValueError: serial must be "usb" or {"uart": 1, ') for line in lines), lines


def test_good_settings_pass():
    assert start([{}, {"port": 8883, "qos": 0, "queue_len": 1, "session_expiry": 0, "wifi_timeout": 2.5,
                       "dns_ttl": 0, "max_packet": 4096, "max_sessions": 1}]) == ["OK", "OK"]


def test_tls_needs_ntp_and_ntp_every_fits_asyncio_sleep():
    """A cold board's clock says 2000-01-01: without NTP mbedTLS never finds the broker's
    certificate valid, so ``ca_file`` with ``ntp`` None is refused at start. ``ntp_every``
    beyond 2**29 ms would make ``asyncio.sleep`` raise OverflowError (ticks) and end the NTP task."""
    lines = start([{"ca_file": "/ca.pem"}, {"ntp_every": 604800}, {"ntp_every": 536870, "ntp": "pool.ntp.org"},
                   {"ca_file": "/ca.pem", "ntp": "pool.ntp.org"}])
    assert lines[0].startswith("ValueError: ca_file needs ntp"), lines
    assert lines[1] == "ValueError: ntp_every must be a whole number from 1 to 536870, not 604800", lines
    assert lines[2:] == ["OK", "OK"], lines
