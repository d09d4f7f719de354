"""The agent's memory through a storm of bad input (issue 13 item 4): one line, RSS before and after.

    python bench/bad_input.py                 # local Mosquitto, default storm (~20 s)
    python bench/bad_input.py --scale 0.2     # a short storm (tests/test_trust_bounds.py)
    python bench/bad_input.py --json

It starts a throw-away Mosquitto and the real agent (``python -m edge_agent run``, the one-LED
simulated device of ``bench/rawmqtt.py``), waits for its presence, notes its VmRSS, then, from
raw paho clients (no MCP code), in this order:

| step | what |
|---|---|
| huge | 10 PUBLISHes of 5 MB on the device's control topic (an ``initialize`` padded) |
| spoofed | 2,000 ``initialize`` with fresh random MCP-MQTT-CLIENT-IDs (sessions nobody uses) |
| malformed | 2,000 payloads: not JSON, JSON nested 10,000 deep, not JSON-RPC, on control and RPC topics |
| poison | 500 PUBLISHes with U+FEFF in a user property (paho would close the connection over them) |
| flood | 20,000 ``tools/list`` requests from one initialized client, not waiting for answers |

then checks the agent still answers a ``tools/call`` and notes VmRSS after (and VmHWM, the peak
through the whole storm). The line: ``bad input: RSS before X MB, after Y MB, peak Z MB (limit 80
MB) ...``. Exit code 1 if the agent died, stopped answering, or its peak reached 80 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rawmqtt import (  # noqa: E402
    MINIMAL_NAME,
    RawError,
    _connect,
    _status_kb,
    mcp_requester,
    minimal_config,
)

from edge_agent.core import topics  # noqa: E402
from edge_agent.testing.broker import LocalBroker  # noqa: E402

LIMIT_MB = 80.0
INIT = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "storm", "version": "0"}}}


def _props(client_id: str):
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    p = Properties(PacketTypes.PUBLISH)
    p.UserProperty = [("MCP-COMPONENT-TYPE", "mcp-client"), ("MCP-MQTT-CLIENT-ID", client_id)]
    return p


def _poison_publish(port: int, topic: str, n: int) -> None:
    """``n`` QoS 0 PUBLISHes with U+FEFF in a user property, written on a raw socket (paho
    refuses to build them)."""
    def utf8(s: str) -> bytes:
        b = s.encode()
        return struct.pack("!H", len(b)) + b

    def varint(n: int) -> bytes:
        out = b""
        while True:
            n, digit = n >> 7, n & 0x7F
            out += bytes([digit | (0x80 if n else 0)])
            if not n:
                return out

    cid = f"storm-poison-{uuid.uuid4().hex[:6]}"
    connect_vh = utf8("MQTT") + bytes([5, 0x02]) + struct.pack("!H", 30) + varint(0)
    body = connect_vh + utf8(cid)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(bytes([0x10]) + varint(len(body)) + body)
        s.recv(64)  # CONNACK
        prop = bytes([0x26]) + utf8("MCP-MQTT-CLIENT-ID") + utf8("poison\ufeff")
        payload = json.dumps(INIT).encode()
        vh = utf8(topic) + varint(len(prop)) + prop
        packet = bytes([0x30]) + varint(len(vh) + len(payload)) + vh + payload
        s.sendall(packet * n)
        s.sendall(b"\xe0\x00")  # DISCONNECT


STEPS = ("huge", "spoofed", "malformed", "poison", "flood")


def storm(url: str, port: int, server_id: str, name: str, scale: float = 1.0,
          steps: tuple[str, ...] = STEPS) -> dict[str, int]:
    """Send the storm of the module docstring (counts times ``scale``; only ``steps``); returns
    the counts."""
    sizes = {"huge": 10, "spoofed": 2000, "malformed": 2000, "poison": 500, "flood": 20000}
    n = lambda step: max(1, int(sizes[step] * scale)) if step in steps else 0  # noqa: E731
    control = topics.server_control(server_id, name)
    counts = {}
    c = _connect(url, f"storm-{uuid.uuid4().hex[:8]}", component="mcp-client")
    big = json.dumps({**INIT, "params": {**INIT["params"], "pad": "x" * 5_000_000}}).encode()
    for _ in range(n("huge")):
        c.publish(control, big, qos=1, properties=_props("storm-huge")).wait_for_publish(30)
    counts["huge"] = n("huge")
    payload = json.dumps(INIT).encode()
    for i in range(n("spoofed")):
        c.publish(control, payload, qos=0, properties=_props(f"spoof-{uuid.uuid4().hex[:16]}"))
    counts["spoofed"] = n("spoofed")
    bad = [b"{not json", b"[" * 10_000 + b"]" * 10_000, b'{"jsonrpc":"1.0"}', b"\xff\xfe", b'{"id":1}']
    for i in range(n("malformed")):
        body = bad[i % len(bad)]
        c.publish(control if i % 2 else topics.rpc("storm-bad", server_id, name), body, qos=0,
                  properties=_props("storm-bad"))
    counts["malformed"] = n("malformed")
    c.publish(control, b"{}", qos=1).wait_for_publish(30)
    if n("poison"):
        _poison_publish(port, control, n("poison"))
    counts["poison"] = n("poison")
    r = mcp_requester(url, server_id, name, "led_toggle")
    rpc = r.rpc_topic  # type: ignore[attr-defined]
    req = b'{"jsonrpc":"2.0","id":%d,"method":"tools/list"}'
    for i in range(n("flood")):
        r.client.publish(rpc, req % (i + 1), qos=0, properties=r.props)
    counts["flood"] = n("flood")
    r.close()
    c.disconnect()
    c.loop_stop()
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every count of the storm (default 1)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--steps", default=",".join(STEPS), help=f"which steps, comma-separated (default all: {','.join(STEPS)})")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="edge-agent-bad-input-"))
    with LocalBroker(workdir=work / "broker") as broker:
        sid = f"bench-bad-{uuid.uuid4().hex[:8]}"
        config = minimal_config(work / "agent.toml", broker.url, sid, work / "state")
        log_path = work / "agent.log"
        watcher = _connect(broker.url, f"bench-watch-{uuid.uuid4().hex[:8]}", component=None)
        online: list[bytes] = []
        watcher.on_message = lambda c, u, m: online.append(m.payload) if m.payload else None
        watcher.subscribe(topics.server_presence(sid, MINIMAL_NAME), qos=1)
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "edge_agent", "run", "--config", str(config),
                                     "--log-level", "warning"], stdout=subprocess.DEVNULL, stderr=log,
                                    env=dict(os.environ, PYTHONUNBUFFERED="1"))
        try:
            deadline = time.monotonic() + 30
            while not online:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RawError(f"agent not online; log:\n{log_path.read_text()[-2000:]}")
                time.sleep(0.05)
            time.sleep(1.0)  # settle
            before = _status_kb(proc.pid, "VmRSS") / 1024
            t0 = time.monotonic()
            counts = storm(broker.url, broker.port, sid, MINIMAL_NAME, args.scale, tuple(args.steps.split(",")))
            probe = mcp_requester(broker.url, sid, MINIMAL_NAME, "led_toggle")
            answer = probe.timed(1, timeout=120)  # answered after the flood drained
            probe.close()
            storm_s = time.monotonic() - t0
            time.sleep(2.0)  # let the agent settle
            alive = proc.poll() is None
            after = _status_kb(proc.pid, "VmRSS") / 1024 if alive else float("nan")
            peak = _status_kb(proc.pid, "VmHWM") / 1024 if alive else float("nan")
        finally:
            watcher.loop_stop()
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
    ok = alive and bool(answer) and peak < LIMIT_MB
    figures = {"rss_before_mb": round(before, 1), "rss_after_mb": round(after, 1), "rss_peak_mb": round(peak, 1),
               "limit_mb": LIMIT_MB, "storm_s": round(storm_s, 1), "answered_after": bool(answer), **counts}
    if args.json:
        print(json.dumps(figures))
    else:
        print(f"bad input: RSS before {before:.1f} MB, after {after:.1f} MB, peak {peak:.1f} MB (limit {LIMIT_MB:g} MB); "
              f"storm {storm_s:.1f} s: {counts['huge']} x 5 MB, {counts['spoofed']} spoofed initialize, "
              f"{counts['malformed']} malformed, {counts['poison']} poisoned, {counts['flood']} flood requests; "
              f"still answering: {'yes' if answer else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
