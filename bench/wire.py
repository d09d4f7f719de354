"""Bytes on the wire: typical MCP messages in JSON and in CBOR, measured as they crossed the broker.

    python bench/wire.py [--broker URL]

1. Starts a throw-away local Mosquitto (unless ``--broker`` is given) and the demo agent as a
   child process (``python -m edge_agent run --demo``: ``devices/greenhouse/gh3-pi``, link
   profile ``lan``), and waits for its presence.
2. A raw paho subscriber on ``$mcp-rpc/#`` and ``$mcp-server/#`` records every PUBLISH the
   broker forwards, both directions (client requests, agent answers, notifications).
3. Two bare MCP clients (``tests/raw_client.py`` ``RawMcpClient``), one in JSON (compact, as
   the agent writes it) and one with ``cbor=True`` (MQTT 5 Content Type ``application/cbor``;
   the agent answers a CBOR session in CBOR), each run the same conversation: ``initialize``,
   ``tools/list``, ``tools/call pump_relay_set {"state": true}``, ``resources/read
   sensor://soil_temp/temperature``, and ``resources/subscribe sensor://pump_relay/state``
   followed by ``pump_relay_set {"state": false}`` to provoke a ``notifications/resources/updated``.
4. Prints a markdown table: per message the MQTT PUBLISH payload (bytes) and the whole PUBLISH
   packet as the broker delivered it (fixed header, topic, packet id, properties, payload) in
   JSON and in CBOR, and the saving. Exits 0; 1 with ``bench: FAILED: <step>: <why>``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import table  # noqa: E402

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

try:
    import cbor2
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    from paho.mqtt.subscribeoptions import SubscribeOptions

    from tests.raw_client import RawMcpClient
except ImportError as exc:  # pragma: no cover
    sys.exit(f"bench: needs the dev install (make setup, then run it with .venv/bin/python; or pip install -e '.[dev]' in a venv): {exc}")

SERVER_NAME = "devices/greenhouse/gh3-pi"
SERVER_ID = "gh3-pi-demo"
TOOL = "pump_relay_set"
SENSOR_URI = "sensor://soil_temp/temperature"
STATE_URI = "sensor://pump_relay/state"
UPDATED = "notifications/resources/updated"
TIMEOUT_S = 20.0
CBOR = "application/cbor"


class BenchError(Exception):
    """A step failed; the message says which and why."""


# ---------------------------------------------------------------------------------------------
# MQTT 5 PUBLISH size (MQTT 5.0 §3.3: fixed header, topic name, packet identifier if QoS > 0,
# properties with their variable-byte-integer length, payload)
# ---------------------------------------------------------------------------------------------

def varint_len(n: int) -> int:
    return 1 if n < 128 else 2 if n < 16_384 else 3 if n < 2_097_152 else 4


def publish_size(topic: str, qos: int, props: Properties | None, payload_len: int) -> int:
    packed = props.pack() if props is not None else b"\x00"  # pack() includes its own length prefix
    remaining = 2 + len(topic.encode()) + (2 if qos else 0) + len(packed) + payload_len
    return 1 + varint_len(remaining) + remaining


@dataclass
class Sniffed:
    topic: str
    payload: bytes
    qos: int
    props: Properties | None
    content_type: str | None
    message: Any

    @property
    def packet(self) -> int:
        return publish_size(self.topic, self.qos, self.props, len(self.payload))


class Sniffer:
    """A plain paho MQTT 5 client recording every PUBLISH on ``$mcp-rpc/#`` and ``$mcp-server/#``."""

    def __init__(self, host: str, port: int):
        self.seen: list[Sniffed] = []
        self.lock = threading.Lock()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-wire-sniffer-{os.getpid()}",
                        protocol=mqtt.MQTTv5)
        c.on_message = self._on_message
        done = threading.Event()
        c.on_subscribe = lambda *a: done.set()
        c.connect(host, port, keepalive=30)
        c.loop_start()
        c.subscribe([("$mcp-rpc/#", SubscribeOptions(qos=1)), ("$mcp-server/#", SubscribeOptions(qos=1))])
        if not done.wait(5):
            raise BenchError("the sniffer got no SUBACK")
        self.client = c

    def _on_message(self, client, userdata, m) -> None:
        ct = getattr(m.properties, "ContentType", None)
        try:
            msg = (cbor2.loads(m.payload) if ct == CBOR else json.loads(m.payload)) if m.payload else None
        except ValueError:
            msg = None
        with self.lock:
            self.seen.append(Sniffed(m.topic, bytes(m.payload), m.qos, m.properties, ct, msg))

    def mark(self) -> int:
        with self.lock:
            return len(self.seen)

    def find(self, topic: str, pred: Any, start: int = 0, timeout: float = TIMEOUT_S) -> Sniffed:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for s in self.seen[start:]:
                    if s.topic == topic and isinstance(s.message, dict) and pred(s.message):
                        return s
            time.sleep(0.01)
        raise BenchError(f"no matching message on {topic} within {timeout:g} s")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class CompactJsonClient(RawMcpClient):
    """``RawMcpClient`` writing compact JSON (no spaces after ``,`` and ``:``), as the agent and
    any size-conscious client do; the stock one uses ``json.dumps`` defaults."""

    def publish(self, topic: str, message: dict, *, expiry: int | None = None) -> None:
        if self.cbor:
            return super().publish(topic, message, expiry=expiry)
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("MCP-COMPONENT-TYPE", "mcp-client"), ("MCP-MQTT-CLIENT-ID", self.cid)]
        if expiry is not None:
            props.MessageExpiryInterval = expiry
        self.client.publish(topic, json.dumps(message, separators=(",", ":")).encode(), qos=1, properties=props)


# ---------------------------------------------------------------------------------------------
# one conversation
# ---------------------------------------------------------------------------------------------

ROWS = [
    ("initialize request", "initialize", "request"),
    ("initialize result", "initialize", "response"),
    ("tools/list request", "tools/list", "request"),
    ("tools/list result (demo device)", "tools/list", "response"),
    (f'tools/call request {TOOL} {{"state": true}}', "tools/call", "request"),
    ("tools/call result (structured + text)", "tools/call", "response"),
    (f"resources/read request {SENSOR_URI}", "resources/read", "request"),
    ("resources/read result", "resources/read", "response"),
    (f"{UPDATED} ({STATE_URI})", UPDATED, "notification"),
]


def conversation(url: str, sniffer: Sniffer, encoding: str) -> tuple[dict[str, Sniffed], dict[str, Any]]:
    """Run the conversation as client ``wire-<encoding>``; returns the sniffed PUBLISH of each
    row and a few facts about the answers."""
    cid = f"wire-{encoding}"
    rpc = f"$mcp-rpc/{cid}/{SERVER_ID}/{SERVER_NAME}"
    control = f"$mcp-server/{SERVER_ID}/{SERVER_NAME}"
    capability = f"$mcp-server/capability/{SERVER_ID}/{SERVER_NAME}"
    start = sniffer.mark()  # the control topic is shared: only look at this conversation's messages
    c = CompactJsonClient(url, cid, SERVER_ID, SERVER_NAME, cbor=encoding == "cbor")
    facts: dict[str, Any] = {}
    ids: dict[str, Any] = {}
    try:
        init = c.initialize()
        if "result" not in init:
            raise BenchError(f"initialize failed: {init}")
        ids["initialize"] = init["id"]
        tools = c.request("tools/list", {})
        ids["tools/list"] = tools["id"]
        facts["tools"] = len(tools["result"]["tools"])
        facts["next_cursor"] = "nextCursor" in tools["result"]
        call = c.request("tools/call", {"name": TOOL, "arguments": {"state": True}})
        ids["tools/call"] = call["id"]
        if call["result"].get("isError") or call["result"].get("structuredContent") != {"state": True}:
            raise BenchError(f"tools/call {TOOL} answered {call['result']}")
        read = c.request("resources/read", {"uri": SENSOR_URI})
        ids["resources/read"] = read["id"]
        if not read["result"]["contents"][0].get("text"):
            raise BenchError(f"resources/read {SENSOR_URI} answered {read['result']}")
        before = sniffer.mark()
        c.request("resources/subscribe", {"uri": STATE_URI})
        c.request("tools/call", {"name": TOOL, "arguments": {"state": False}})
        got: dict[str, Sniffed] = {}
        for label, method, kind in ROWS:
            if kind == "notification":
                deadline = time.monotonic() + TIMEOUT_S
                while label not in got:
                    with sniffer.lock:
                        hit = next((s for s in sniffer.seen[before:] if s.topic == capability
                                    and isinstance(s.message, dict) and s.message.get("method") == UPDATED
                                    and s.message.get("params", {}).get("uri") == STATE_URI), None)
                    if hit:
                        got[label] = hit
                    elif time.monotonic() > deadline:
                        raise BenchError(f"no {UPDATED} for {STATE_URI} within {TIMEOUT_S:g} s")
                    else:
                        time.sleep(0.01)
                continue
            msg_id = ids[method]
            topic = control if (method == "initialize" and kind == "request") else rpc
            if kind == "request":
                got[label] = sniffer.find(topic, lambda m, i=msg_id, me=method: m.get("id") == i and m.get("method") == me,
                                          start)
            else:
                got[label] = sniffer.find(topic, lambda m, i=msg_id: m.get("id") == i and "result" in m, start)
        want = CBOR if encoding == "cbor" else None
        wrong = [label for label, s in got.items() if s.topic != capability and s.content_type != want]
        if wrong:
            raise BenchError(f"{encoding} session: unexpected Content Type on {wrong}")
        return got, facts
    finally:
        c.close()


def pct(json_n: int, cbor_n: int) -> str:
    return f"{(1 - cbor_n / json_n) * 100:.0f} %"


def report(url: str, local: bool, js: dict[str, Sniffed], cb: dict[str, Sniffed], facts: dict[str, Any]) -> str:
    rows, notes = [], []
    tot = [0, 0, 0, 0]
    for label, method, kind in ROWS:
        j, c = js[label], cb[label]
        mark = ""
        c_payload, c_packet = len(c.payload), c.packet
        if kind == "notification":
            # The capability topic is shared by every client, so it is always JSON: what CBOR
            # would make of it is computed (cbor2, same properties plus the Content Type).
            mark = " *"
            c_payload = len(cbor2.dumps(j.message))
            props = Properties(PacketTypes.PUBLISH)
            for name in ("UserProperty", "MessageExpiryInterval"):
                if hasattr(j.props, name):
                    setattr(props, name, getattr(j.props, name))
            props.ContentType = CBOR
            c_packet = publish_size(j.topic, j.qos, props, c_payload)
        vals = [len(j.payload), c_payload, j.packet, c_packet]
        tot = [a + b for a, b in zip(tot, vals)]
        rows.append([label + mark, str(vals[0]), str(vals[1]) + mark, pct(vals[0], vals[1]),
                     str(vals[2]), str(vals[3]) + mark, pct(vals[2], vals[3])])
    rows.append(["all of the above", str(tot[0]), str(tot[1]), pct(tot[0], tot[1]), str(tot[2]), str(tot[3]),
                 pct(tot[2], tot[3])])
    up = js[ROWS[8][0]]
    props = {k: v for k, v in (up.props.json() if up.props else {}).items()}
    notes.append(f"* {UPDATED} goes to the server capability topic, shared by all clients, so the agent always "
                 "sends it in JSON; the CBOR figures are what cbor2 makes of the same message (computed, not sent).")
    notes.append(f"tools/list: {facts['tools']} tools in one page"
                 + (" (more pages follow: nextCursor)" if facts["next_cursor"] else " (no nextCursor)"))
    rpc_req = js[ROWS[4][0]]
    overhead = rpc_req.packet - len(rpc_req.payload)
    notes.append(f"packet overhead of a request on the RPC topic (topic {len(rpc_req.topic)} B, packet id, user "
                 f"properties MCP-COMPONENT-TYPE and MCP-MQTT-CLIENT-ID, fixed header): {overhead} B in JSON; "
                 f"CBOR sessions add a Content Type property ({len(CBOR) + 3} B) to every message")
    notes.append(f"{UPDATED} properties as delivered: {json.dumps(props)}; QoS {up.qos} (lan profile telemetry)")
    out = ["# edge-agent bytes on the wire: JSON vs CBOR", "",
           f"broker: {url} ({'local Mosquitto started by the bench' if local else 'given with --broker'})",
           f"agent: `python -m edge_agent run --demo` ({SERVER_NAME}, simulated hardware, link profile lan)",
           "clients: tests/raw_client.py RawMcpClient, compact JSON / CBOR (Content Type application/cbor); "
           "sizes are of the PUBLISH packets a raw subscriber on $mcp-rpc/# and $mcp-server/# received", "",
           "payload = MQTT PUBLISH payload; packet = the whole PUBLISH as delivered (fixed header, topic, packet id "
           "if QoS 1, properties, payload); saving = 1 - CBOR / JSON", "",
           table(["message", "JSON payload B", "CBOR payload B", "payload saving", "JSON packet B", "CBOR packet B",
                  "packet saving"], rows), ""]
    return "\n".join(out + notes)


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------

class AgentChild:
    def __init__(self, url: str, workdir: Path):
        self.log_path = workdir / "agent.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edge_agent", "run", "--demo", "--broker", url,
                 "--state-dir", str(workdir / "state"), "--log-level", "warning"],
                stdout=subprocess.DEVNULL, stderr=log, cwd=REPO, env=dict(os.environ, PYTHONUNBUFFERED="1"))

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:]) or "(empty)"
        return "(no log)"

    def check_alive(self, step: str) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"{step}: the agent exited with code {self.proc.returncode}; its log:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_presence(sniffer: Sniffer, agent: AgentChild | None, timeout: float = TIMEOUT_S) -> None:
    topic = f"$mcp-server/presence/{SERVER_ID}/{SERVER_NAME}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if agent is not None:
            agent.check_alive("waiting for the agent's presence")
        with sniffer.lock:
            if any(s.topic == topic and s.payload for s in sniffer.seen):
                return
        time.sleep(0.05)
    raise BenchError(f"the agent did not come online within {timeout:g} s"
                     + (f"; its log:\n{agent.log_tail()}" if agent else ""))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--broker", help="MQTT broker URL (default: start a throw-away local Mosquitto)")
    args = p.parse_args(argv)

    def on_sigterm(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    from edge_agent.mqtt.broker_url import parse_broker_url
    from edge_agent.testing.broker import BrokerUnavailable, LocalBroker

    broker = agent = sniffer = None
    workdir = Path(tempfile.mkdtemp(prefix="edge-agent-wire-"))
    step = "start"
    try:
        url = args.broker
        if url is None:
            step = "starting a local Mosquitto"
            try:
                broker = LocalBroker().start()
            except (BrokerUnavailable, RuntimeError) as exc:
                raise BenchError(f"could not start a local Mosquitto: {exc}") from None
            url = broker.url
        parsed = parse_broker_url(url)
        if parsed.tls or parsed.username:
            raise BenchError("the sniffer speaks plain, anonymous MQTT: give a mqtt:// broker without credentials")
        step = "connecting the sniffer"
        try:
            sniffer = Sniffer(parsed.host, parsed.port)
        except OSError as exc:
            raise BenchError(f"broker {url} unreachable: {exc}") from None
        if args.broker:
            time.sleep(0.5)  # a retained presence would be here by now
            with sniffer.lock:
                if any(s.topic.startswith(f"$mcp-server/presence/{SERVER_ID}/") and s.payload for s in sniffer.seen):
                    raise BenchError(f"{SERVER_NAME} is already online at {url}; stop it first, the bench starts its own")
        step = "starting the agent"
        agent = AgentChild(url, workdir)
        wait_presence(sniffer, agent)
        step = "JSON conversation"
        js, facts = conversation(url, sniffer, "json")
        step = "CBOR conversation"
        agent.check_alive(step)
        cb, _ = conversation(url, sniffer, "cbor")
        agent.check_alive("end of the run")
        print(report(url, broker is not None, js, cb, facts))
        return 0
    except BenchError as exc:
        print(f"bench: FAILED: {step}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001 - a bug here, not in the agent: say so, with the traceback
        import traceback

        traceback.print_exc()
        print(f"bench: FAILED: {step}: unexpected error (traceback above)", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if sniffer is not None:
            sniffer.close()
        if agent is not None:
            agent.stop()
        if broker is not None:
            broker.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
