"""Recovery benchmark: what a broker crash, an agent crash and a half-open link cost, per link profile.

    python bench/recovery.py [--runs N] [--outage S] [--keepalive S] [--profiles unreliable,lan]

Every scenario streams ``notifications/resources/updated`` at ~10 Hz (the ``system`` driver's
``sensor://system/uptime`` polled every 0.1 s, deadband 0) to a persistent bare MQTT 5 client
(``tests/raw_client.py``: clean start off, session expiry 600 s, every message recorded with
its ``EDGE-AGENT-SEQ``) subscribed to it, and counts per run what the agent accepted (a ledger
written by the agent itself, see ``AGENT_CHILD``) against what reached the client.

1. Broker restart: a local Mosquitto with persistence (``autosave_on_changes true``,
   ``autosave_interval 1``) is SIGKILLed while the agent (child process) streams, and restarted
   after ``--outage`` s. Time from the broker listening again to the agent's live presence at a
   watcher, to the agent's CONNACK (from its own ``device://link``), to the first notification
   at the client; notifications lost; duplicate deliveries (raw, before de-duplication by seq).
2. Agent SIGKILL with a broker outage in between: broker SIGKILLed, ``--outage`` s of updates
   pile up in the agent's outbox, agent SIGKILLed, broker restarted, agent restarted on the
   same state folder. Notifications lost, duplicates, whether the stream resumed by itself.
3. Half-open link: the agent (in this process, ``edge_agent.device.runtime.Agent``) talks to the
   broker through ``tests/faults.py`` ``BlackholeProxy``, which silently drops every byte.
   Time until the agent declares the link dead (``transport.connected`` cleared), time to
   reconnect after the link returns, notifications lost.

Each profile runs as shipped (``edge_agent/mqtt/profiles.py``) except the keepalive of
the half-open scenario (``--keepalive``, same for both profiles). Prints markdown tables and
exits 0; exits 1 if a step failed or a notification was lost under ``unreliable`` (a bug).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import machine, table  # noqa: E402

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

try:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.subscribeoptions import SubscribeOptions

    from tests.faults import BlackholeProxy
    from tests.raw_client import RawMcpClient
except ImportError as exc:  # pragma: no cover
    sys.exit(f"bench: needs the dev install (make setup, then run it with .venv/bin/python; or pip install -e '.[dev]' in a venv): {exc}")

UPTIME = "sensor://system/uptime"
LINK = "device://link"
UPDATED = "notifications/resources/updated"
PERSISTENT_BROKER = "autosave_on_changes true\nautosave_interval 1\n"
STREAM_S = 0.6      # streaming before the fault
SETTLE_S = 0.5      # streaming after the stream resumed, before unsubscribing
DRAIN_S = 0.3       # after the unsubscribe answer, for stragglers
TIMEOUT_S = 25.0    # any single wait
PROFILES = ("unreliable", "lan")

# The agent child process: ``python -m edge_agent run`` plus one line per
# ``notifications/resources/updated`` the transport accepted (for unreliable: stored in the
# outbox; for lan: handed to paho or its QoS 0 queue), written with os.write to a file opened
# O_APPEND, so the ledger survives a SIGKILL and the restarted agent appends to it.
AGENT_CHILD = r"""
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
from edge_agent.mqtt.server import MqttServerTransport
_send_capability = MqttServerTransport.send_capability
def send_capability(self, message):
    _send_capability(self, message)
    if message.get("method") == "notifications/resources/updated":
        os.write(fd, b"%.6f\n" % time.time())
MqttServerTransport.send_capability = send_capability
from edge_agent.cli import main
sys.exit(main(sys.argv[2:]))
"""


class BenchError(Exception):
    """A step failed; the message says which and why."""


# ---------------------------------------------------------------------------------------------
# small helpers (machine line and table as in bench/rpc.py)
# ---------------------------------------------------------------------------------------------

def mosquitto_version() -> str:
    from edge_agent.testing.broker import find_mosquitto

    with contextlib.suppress(Exception):
        out = subprocess.run([find_mosquitto(), "-h"], capture_output=True, text=True, timeout=5)
        first = (out.stdout or out.stderr).strip().splitlines()[0]
        return first.replace("mosquitto version", "Mosquitto").strip()
    return "Mosquitto"


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise BenchError(f"{what} (waited {timeout:g} s)")


# ---------------------------------------------------------------------------------------------
# presence watcher: a bare paho client that sees only *live* presence messages
# ---------------------------------------------------------------------------------------------

class PresenceWatch:
    """Connects to 127.0.0.1:``port`` as soon as something listens there (retrying every
    2 ms, so it can be started before the broker), subscribes to ``topic`` with Retain
    Handling 2 (no retained message at subscribe time: a broker restarted with persistence
    still holds the crashed agent's "online" presence) and records, in ``time.monotonic()``,
    when the broker first accepted TCP, when the SUBACK came and when the first non-empty,
    non-retained presence message arrived."""

    def __init__(self, port: int, topic: str):
        self.port, self.topic = port, topic
        self.listening: float | None = None
        self.subscribed: float | None = None
        self.online: float | None = None
        self.offline_seen = False
        self._stop = threading.Event()
        self.client: mqtt.Client | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="presence-watch")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-watch-{time.monotonic_ns()}",
                            protocol=mqtt.MQTTv5)
            c.on_connect = lambda cl, *a: cl.subscribe(self.topic, options=SubscribeOptions(qos=1, retainHandling=2))
            c.on_subscribe = lambda *a: setattr(self, "subscribed", time.monotonic())
            c.on_message = self._on_message
            try:
                c.connect("127.0.0.1", self.port, keepalive=30)
            except OSError:
                self._stop.wait(0.002)
                continue
            self.listening = time.monotonic()
            self.client = c
            c.loop_start()
            return

    def _on_message(self, client, userdata, m) -> None:
        if m.retain:
            return
        if not m.payload:
            self.offline_seen = True
        elif self.online is None:
            self.online = time.monotonic()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        if self.client is not None:
            self.client.loop_stop()
            with contextlib.suppress(Exception):
                self.client.disconnect()


# ---------------------------------------------------------------------------------------------
# the agent: a child process (scenarios 1, 2) or in this process (scenario 3)
# ---------------------------------------------------------------------------------------------

def agent_toml(*, server_name: str, server_id: str, state_dir: Path, profile: str, link: dict[str, Any]) -> str:
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in link.items())
    return f"""
[device]
server_name = "{server_name}"
server_id = "{server_id}"
description = "recovery bench"
simulate = true
state_dir = "{state_dir}"

[broker]
urls = ["mqtt://127.0.0.1:1"]

[link]
profile = "{profile}"
{extra}
[[drivers]]
kind = "system"
name = "system"
poll_interval = 0.1
deadband = 0
"""


class ChildAgent:
    """``python -c AGENT_CHILD <ledger> run --config FILE --broker URL`` (the real CLI)."""

    def __init__(self, workdir: Path, *, server_name: str, server_id: str, url: str, port: int, profile: str,
                 link: dict[str, Any]):
        self.dir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.server_name, self.server_id, self.url, self.port = server_name, server_id, url, port
        self.presence_topic = f"$mcp-server/presence/{server_id}/{server_name}"
        self.config = workdir / "agent.toml"
        self.config.write_text(agent_toml(server_name=server_name, server_id=server_id, state_dir=workdir / "state",
                                          profile=profile, link=link))
        self.state_db = workdir / "state" / "state.sqlite3"
        self.ledger = workdir / "ledger.txt"
        self.ledger.touch()
        self.log_path = workdir / "agent.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> float:
        """Start it and wait for its live presence; returns the seconds that took."""
        watch = PresenceWatch(self.port, self.presence_topic)
        try:
            wait_until(lambda: watch.subscribed, 10, "presence watcher: no SUBACK from the broker")
            t0 = time.monotonic()
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [sys.executable, "-c", AGENT_CHILD, str(self.ledger), "run", "--config", str(self.config),
                     "--broker", self.url, "--log-level", "info"],
                    stdout=subprocess.DEVNULL, stderr=log, cwd=REPO, env=dict(os.environ, PYTHONUNBUFFERED="1"))
            deadline = time.monotonic() + TIMEOUT_S
            while watch.online is None:
                self.check_alive("agent start")
                if time.monotonic() > deadline:
                    raise BenchError(f"the agent did not come online within {TIMEOUT_S:g} s; its log:\n{self.log_tail()}")
                time.sleep(0.01)
            return watch.online - t0
        finally:
            watch.close()

    def ledger_count(self) -> int:
        return self.ledger.read_bytes().count(b"\n")

    def outbox_rows(self) -> int:
        """Telemetry rows in the (stopped) agent's SQLite outbox."""
        with contextlib.closing(sqlite3.connect(f"file:{self.state_db}?mode=ro", uri=True)) as db:
            return int(db.execute("SELECT COUNT(*) FROM outbox WHERE kind = 'telemetry'").fetchone()[0])

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:]) or "(empty)"
        except OSError:
            return "(no log)"

    def check_alive(self, step: str) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise BenchError(f"{step}: the agent exited with code {self.proc.returncode}; its log:\n{self.log_tail()}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class MemoryLog(logging.Handler):
    """Keeps the in-process agent's log lines."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")


class InProcessAgent:
    """``edge_agent.device.runtime.Agent`` on an asyncio loop in a thread of this process, as
    ``tests/test_unreliable.py`` runs it, with its accepted notifications in ``self.ledger``."""

    def __init__(self, config: Any, url: str):
        from edge_agent.device.runtime import Agent
        from edge_agent.mqtt.server import MqttServerTransport

        self.ledger: list[float] = []
        self._orig = MqttServerTransport.send_capability
        orig, ledger = self._orig, self.ledger

        def send_capability(transport: Any, message: dict[str, Any]) -> None:
            orig(transport, message)
            if message.get("method") == UPDATED:
                ledger.append(time.time())

        self.agent = Agent(config, broker_url=url)
        self.started = False
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="agent-loop")
        self.thread.start()
        MqttServerTransport.send_capability = send_capability  # bound by Endpoint.create in start(); undone in stop()

    def _call(self, coro: Any, timeout: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> None:
        self._call(self.agent.start(connect_timeout=TIMEOUT_S), TIMEOUT_S + 5)
        self.started = True

    @property
    def transport(self) -> Any:
        return self.agent.endpoint.transport

    def ledger_count(self) -> int:
        return len(self.ledger)

    def stop(self) -> None:
        from edge_agent.mqtt.server import MqttServerTransport

        try:
            if self.started:
                with contextlib.suppress(Exception):
                    self._call(self.agent.stop(), 15)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            if not self.thread.is_alive():
                self.loop.close()
        finally:
            MqttServerTransport.send_capability = self._orig


# ---------------------------------------------------------------------------------------------
# counting the stream
# ---------------------------------------------------------------------------------------------

@dataclass
class Count:
    """One run's notifications: accepted by the agent, arrived (unique), lost, duplicate
    deliveries, and whether the stream came back by itself."""

    accepted: int
    received: int
    lost: int
    dups: int
    resumed: bool
    missing: list[int] = field(default_factory=list)
    note: str = ""


class Stream:
    """The subscribed persistent client and the bookkeeping of one run."""

    def __init__(self, client: RawMcpClient, agent: Any, server_id: str, server_name: str, profile: str):
        self.c, self.agent = client, agent
        self.expect_seq = profile == "unreliable"  # durable outbox: every message carries EDGE-AGENT-SEQ
        self.client_connects: list[float] = []  # time.monotonic() of every (re)connect of the client
        paho_on_connect = client.client.on_connect

        def on_connect(*a: Any) -> None:
            self.client_connects.append(time.monotonic())
            paho_on_connect(*a)

        client.client.on_connect = on_connect
        self.capability = f"$mcp-server/capability/{server_id}/{server_name}"
        self.idx0 = 0
        self.ledger0 = 0
        self.sub_seq: int | None = None
        self.unsub_seq: int | None = None

    def _seq_of(self, msg_id: int) -> int | None:
        got = self.c.responses(msg_id)
        return got[0].seq if got else None

    def subscribe(self) -> None:
        with self.c.lock:
            self.idx0 = len(self.c.received)
        self.ledger0 = self.agent.ledger_count()
        msg_id = self.c.send("resources/subscribe", {"uri": UPTIME})
        reply = self.c.wait_response(msg_id, TIMEOUT_S)
        if "error" in reply:
            raise BenchError(f"resources/subscribe failed: {reply['error']}")
        self.sub_seq = self._seq_of(msg_id)
        if self.expect_seq and self.sub_seq is None:
            raise BenchError("the resources/subscribe answer carried no EDGE-AGENT-SEQ under the unreliable profile")

    def unsubscribe(self) -> None:
        msg_id = self.c.send("resources/unsubscribe", {"uri": UPTIME})
        self.c.wait_response(msg_id, TIMEOUT_S)
        self.unsub_seq = self._seq_of(msg_id)
        if self.expect_seq and self.unsub_seq is None:
            raise BenchError("the resources/unsubscribe answer carried no EDGE-AGENT-SEQ under the unreliable profile")
        time.sleep(DRAIN_S)

    def telemetry(self, since_wall: float | None = None) -> list[Any]:
        with self.c.lock:
            window = self.c.received[self.idx0:]
        return [r for r in window if r.topic == self.capability and r.message and r.message.get("method") == UPDATED
                and (since_wall is None or r.at > since_wall)]

    def wait_resumed(self, since_wall: float, timeout: float = TIMEOUT_S) -> float | None:
        """Wall time of the first notification that arrived after ``since_wall``, or None."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.telemetry(since_wall)
            if got:
                return got[0].at
            time.sleep(0.01)
        return None

    def count(self, resumed: bool) -> Count:
        accepted = self.agent.ledger_count() - self.ledger0
        tele = self.telemetry()
        if self.sub_seq is not None and self.unsub_seq is not None:
            # Every message the agent sent in [subscribe answer, unsubscribe answer] carries a
            # sequence number and goes to this client (the only one): all must have arrived.
            with self.c.lock:
                seqs = [r.seq for r in self.c.received if r.seq is not None and self.sub_seq <= r.seq <= self.unsub_seq]
            missing = sorted(set(range(self.sub_seq, self.unsub_seq + 1)) - set(seqs))
            unique_tele = len({r.seq for r in tele if r.seq is not None})
            by_ledger = accepted - unique_tele
            note = "" if by_ledger == len(missing) else (
                f"ledger says {by_ledger} lost, sequence numbers say {len(missing)} missing")
            return Count(accepted, unique_tele, max(len(missing), by_ledger), len(seqs) - len(set(seqs)), resumed,
                         missing, note)
        # No sequence numbers (lan: QoS 0 telemetry, no durable outbox): count them.
        received = len(tele)
        dup_seqs = [r.seq for r in tele if r.seq is not None]
        return Count(accepted, received, max(0, accepted - received), len(dup_seqs) - len(set(dup_seqs)), resumed)


def read_link(client: RawMcpClient) -> dict[str, Any]:
    reply = client.request("resources/read", {"uri": LINK}, timeout=TIMEOUT_S)
    if "error" in reply:
        raise BenchError(f"resources/read {LINK} failed: {reply['error']}")
    return json.loads(reply["result"]["contents"][0]["text"])


# ---------------------------------------------------------------------------------------------
# the scenarios
# ---------------------------------------------------------------------------------------------

@dataclass
class Results:
    times: dict[tuple[str, str, str], list[float]] = field(default_factory=dict)  # (fault, what, profile)
    counts: dict[tuple[str, str], list[Count]] = field(default_factory=dict)   # (fault, profile)
    extra: dict[tuple[str, str], list[Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def time(self, fault: str, what: str, profile: str, seconds: float | None) -> None:
        self.times.setdefault((fault, what, profile), []).append(math.nan if seconds is None else seconds)

    def count(self, fault: str, profile: str, c: Count) -> None:
        self.counts.setdefault((fault, profile), []).append(c)


FAULT_BROKER = "broker SIGKILL + restart"
FAULT_AGENT = "agent SIGKILL + restart, broker down meanwhile"
FAULT_HALF = "half-open link"


def scenario_broker_restart(args: argparse.Namespace, profile: str, workdir: Path, res: Results,
                            cleanup: contextlib.ExitStack) -> None:
    from edge_agent.testing.broker import LocalBroker, free_port

    name, sid = "devices/bench/recovery-a", f"bench-a-{profile}"
    broker = LocalBroker(free_port(), persistence=True, workdir=workdir / "broker", extra_conf=PERSISTENT_BROKER)
    broker.start()
    cleanup.callback(broker.close)
    agent = ChildAgent(workdir / "agent", server_name=name, server_id=sid, url=broker.url, port=broker.port,
                       profile=profile, link={})
    cleanup.callback(agent.stop)
    agent.start()
    client = RawMcpClient(broker.url, f"bench-a-{profile}-cloud", sid, name, persistent=True)
    cleanup.callback(client.close, goodbye=False)
    client.initialize()
    s = Stream(client, agent, sid, name, profile)
    for run in range(args.runs):
        step = f"{FAULT_BROKER} ({profile}), run {run + 1}"
        s.subscribe()
        time.sleep(STREAM_S)
        agent.check_alive(step)
        t_kill = time.monotonic()
        broker.kill()
        time.sleep(args.outage)
        watch = PresenceWatch(broker.port, agent.presence_topic)
        try:
            broker.start()
            listening = wait_until(lambda: watch.listening, 10, f"{step}: the watcher could not connect")
            listening_wall = time.time() - (time.monotonic() - listening)
            # The watcher subscribes within a few ms of the broker listening; the agent's first
            # attempt comes after its backoff. Should the agent still be first, the watcher never
            # sees the live presence: that run's presence time is then left out (noted).
            with contextlib.suppress(BenchError):
                wait_until(lambda: watch.online, 10 + args.outage, "")
            raced = watch.online is None
            online = None if raced else watch.online - listening
        finally:
            watch.close()
        first = s.wait_resumed(listening_wall)
        if first is None and profile == "unreliable":
            raise BenchError(f"{step}: the stream did not resume within {TIMEOUT_S:g} s; agent log:\n{agent.log_tail()}")
        time.sleep(SETTLE_S)
        s.unsubscribe()
        link = read_link(client)
        # The agent's own view: its outage started when the broker died (loopback: at once) and
        # lasted last_outage_s, until its CONNACK. CLOCK_MONOTONIC is shared by all processes.
        connack = t_kill + (link.get("last_outage_s") or math.nan) - listening
        if raced:
            res.notes.append(f"{step}: the agent beat the presence watcher's SUBACK; time taken from the "
                             f"agent's device://link instead ({connack:.2f} s)")
            online = connack
        elif abs(online - connack) > 0.1:
            res.notes.append(f"{step}: watcher says online after {online:.2f} s, the agent's device://link says "
                             f"CONNACK after {connack:.2f} s")
        client_back = next((t - listening for t in s.client_connects if t > listening), None)
        res.time(FAULT_BROKER, "broker listening → agent's live presence at a watcher", profile, online)
        res.time(FAULT_BROKER, "broker listening → client reconnected (paho backoff 0.2..1 s)", profile, client_back)
        res.time(FAULT_BROKER, "broker listening → first notification at the client", profile,
                 None if first is None else first - listening_wall)
        c = s.count(resumed=first is not None)
        res.count(FAULT_BROKER, profile, c)
        if c.lost and profile == "lan" and online is not None and client_back is not None:
            res.notes.append(f"{step}: {c.lost} lost; the agent was back {online:.2f} s after the broker, the client "
                             f"{client_back:.2f} s: " + ("what the agent queued (QoS 0, in memory) while offline went "
                                                       "out before the client's session was back, and the broker does "
                                                       "not queue QoS 0 for an offline client" if online < client_back
                                                       else "lost before the agent noticed the broker was gone"))
        if link.get("drops"):
            res.notes.append(f"{step}: agent-side drops (device://link): {json.dumps(link['drops'])}")
        if c.missing:
            res.notes.append(f"{step}: missing sequence numbers: {c.missing[:30]}")
        if c.note:
            res.notes.append(f"{step}: {c.note}")


def scenario_agent_kill(args: argparse.Namespace, profile: str, workdir: Path, res: Results,
                        cleanup: contextlib.ExitStack) -> None:
    from edge_agent.testing.broker import LocalBroker, free_port

    name, sid = "devices/bench/recovery-b", f"bench-b-{profile}"
    broker = LocalBroker(free_port(), persistence=True, workdir=workdir / "broker", extra_conf=PERSISTENT_BROKER)
    broker.start()
    cleanup.callback(broker.close)
    agent = ChildAgent(workdir / "agent", server_name=name, server_id=sid, url=broker.url, port=broker.port,
                       profile=profile, link={})
    cleanup.callback(agent.stop)
    agent.start()
    client = RawMcpClient(broker.url, f"bench-b-{profile}-cloud", sid, name, persistent=True)
    cleanup.callback(client.close, goodbye=False)
    s = Stream(client, agent, sid, name, profile)
    needs_init = True
    for run in range(args.runs):
        step = f"{FAULT_AGENT} ({profile}), run {run + 1}"
        if needs_init:
            client.initialize()
            needs_init = False
        s.subscribe()
        time.sleep(STREAM_S)
        agent.check_alive(step)
        broker.kill()
        time.sleep(args.outage)  # updates pile up in the agent (outbox, or QoS 0 queue in memory)
        agent.kill()
        stored = agent.outbox_rows()
        broker.start()
        restarted_wall = time.time()
        res.time(FAULT_AGENT, "agent process start → live presence", profile, agent.start())
        first = s.wait_resumed(restarted_wall, timeout=TIMEOUT_S if profile == "unreliable" else 3.0)
        if first is None and profile == "unreliable":
            raise BenchError(f"{step}: the stream did not resume after the agent restart; agent log:\n{agent.log_tail()}")
        if first is not None:
            time.sleep(SETTLE_S)
            s.unsubscribe()
            link = read_link(client)
            if profile == "unreliable" and link["outbox"]["messages"] > 1:
                res.notes.append(f"{step}: outbox not drained: {json.dumps(link['outbox'])}")
            if link.get("drops"):
                res.notes.append(f"{step}: agent-side drops (device://link): {json.dumps(link['drops'])}")
        else:
            # lan: the MCP session died with the process (sessions not persisted); the agent no
            # longer serves this client, so the subscription is gone until it initializes again.
            s.unsub_seq = None
            needs_init = True
        c = s.count(resumed=first is not None)
        res.count(FAULT_AGENT, profile, c)
        res.extra.setdefault((FAULT_AGENT, profile), []).append(stored)
        if c.missing:
            res.notes.append(f"{step}: missing sequence numbers: {c.missing[:30]}")
        if c.note:
            res.notes.append(f"{step}: {c.note}")


def scenario_half_open(args: argparse.Namespace, profile: str, workdir: Path, res: Results,
                       cleanup: contextlib.ExitStack) -> None:
    from edge_agent.device import config as cfg
    from edge_agent.testing.broker import LocalBroker

    name, sid = "devices/bench/recovery-c", f"bench-c-{profile}"
    broker = LocalBroker(workdir=workdir / "broker").start()
    cleanup.callback(broker.close)
    proxy = BlackholeProxy(broker.port)
    cleanup.callback(proxy.close)
    config = cfg.from_dict({
        "device": {"server_name": name, "server_id": sid, "simulate": True, "state_dir": str(workdir / "state")},
        "link": {"profile": profile, "keepalive": args.keepalive},
        "drivers": [{"kind": "system", "name": "system", "poll_interval": 0.1, "deadband": 0}]})
    logger = logging.getLogger("edge_agent")  # its warnings ("no PINGRESP ...") go to memory, not stderr
    handler = MemoryLog()
    saved_propagate, saved_level = logger.propagate, logger.level
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)

    def restore_logging() -> None:
        logger.removeHandler(handler)
        logger.propagate = saved_propagate
        logger.setLevel(saved_level)

    cleanup.callback(restore_logging)
    agent = InProcessAgent(config, proxy.url)
    cleanup.callback(agent.stop)
    agent.start()
    transport = agent.transport
    client = RawMcpClient(broker.url, f"bench-c-{profile}-cloud", sid, name, persistent=True)
    cleanup.callback(client.close, goodbye=False)
    client.initialize()
    s = Stream(client, agent, sid, name, profile)
    for run in range(args.runs):
        step = f"{FAULT_HALF} ({profile}), run {run + 1}"
        s.subscribe()
        # paho 2.x sends a PINGREQ every keepalive whatever the traffic; cut the link at a random
        # point of that cycle, or every run would sample the same phase.
        time.sleep(STREAM_S + random.uniform(0, args.keepalive))
        proxy.blackhole()
        cut = time.monotonic()
        wait_until(lambda: not transport.connected.is_set(), 4 * args.keepalive + 5,
                   f"{step}: the half-open link was never noticed", step=0.002)
        detected = time.monotonic() - cut
        proxy.restore()
        restored, restored_wall = time.monotonic(), time.time()
        wait_until(lambda: transport.connected.is_set(), TIMEOUT_S, f"{step}: no reconnect after the link returned",
                   step=0.002)
        back = time.monotonic() - restored
        first = s.wait_resumed(restored_wall)
        if first is None and profile == "unreliable":
            raise BenchError(f"{step}: the stream did not resume after the reconnect")
        time.sleep(SETTLE_S)
        s.unsubscribe()
        res.time(FAULT_HALF, f"blackhole → link declared dead (keepalive {args.keepalive} s)", profile, detected)
        res.time(FAULT_HALF, "link back → reconnected", profile, back)
        c = s.count(resumed=first is not None)
        res.count(FAULT_HALF, profile, c)
        drops = transport.link_health().get("drops")
        if drops:
            res.notes.append(f"{step}: agent-side drops (device://link): {json.dumps(drops)}")
        if not any("no PINGRESP" in line for line in handler.lines):
            res.notes.append(f"{step}: the agent did not log the PINGRESP timeout; log: {handler.lines[-3:]}")
        handler.lines.clear()
        if c.missing:
            res.notes.append(f"{step}: missing sequence numbers: {c.missing[:30]}")
        if c.note:
            res.notes.append(f"{step}: {c.note}")


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------

def _s(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.2f}"


def med_max(values: list[float]) -> tuple[float, float, int]:
    ok = [v for v in values if not math.isnan(v)]
    if not ok:
        return math.nan, math.nan, 0
    return statistics.median(ok), max(ok), len(ok)


def report(args: argparse.Namespace, res: Results, profiles: list[str], loadavg: str, wall: float) -> str:
    from edge_agent.mqtt.profiles import link_settings

    m = machine()
    out = ["# edge-agent recovery benchmark", "",
           f"machine: {m['nproc']} CPUs, {m['cpu']}, {m['memory']} RAM; {m['python']}; Linux {m['kernel']}",
           f"broker: local {mosquitto_version()} per scenario; scenarios 1-2 with persistence "
           "(autosave_on_changes true, autosave_interval 1)",
           "stream: notifications/resources/updated of sensor://system/uptime, polled every 0.1 s (deadband 0), "
           "to one persistent raw MQTT 5 client (clean start off, session expiry 600 s, QoS 1 subscriptions)",
           f"runs: {args.runs} per scenario and profile; outage {args.outage:g} s; load average before: {loadavg}"]
    for p in profiles:
        ls = link_settings(p)
        out.append(f"profile {p}: QoS rpc/notifications/telemetry {ls.qos_rpc}/{ls.qos_notifications}/"
                   f"{ls.qos_telemetry}, clean start {str(ls.clean_start).lower()}, session expiry "
                   f"{ls.session_expiry} s, durable outbox {str(ls.durable_outbox).lower()}, persisted MCP sessions "
                   f"{str(ls.persist_sessions).lower()}, reconnect backoff {ls.reconnect_min:g}..{ls.reconnect_max:g} s "
                   f"(full jitter), keepalive {ls.keepalive} s ({args.keepalive} s in the half-open scenario)")
    out.append("")

    rows = []
    for (fault, what, profile), values in res.times.items():
        med, mx, n = med_max(values)
        rows.append([fault, what, profile, _s(med), _s(mx), str(n)])
    if rows:
        out += [f"## Recovery times (s), median and max over {args.runs} runs", "",
                table(["fault", "measured", "profile", "median s", "max s", "runs"], rows), ""]

    rows = []
    for (fault, profile), counts in res.counts.items():
        lost = [c.lost for c in counts]
        dups = [c.dups for c in counts]
        resumed = sum(c.resumed for c in counts)
        stored = res.extra.get((fault, profile))
        rows.append([fault, profile, f"{statistics.median([c.accepted for c in counts]):g}",
                     f"{statistics.median(lost):g}", str(max(lost)), str(sum(lost)),
                     f"{statistics.median(dups):g}", str(max(dups)),
                     f"{resumed}/{len(counts)}",
                     f"{statistics.median(stored):g}" if stored else "-"])
    if rows:
        out += [f"## Notifications per run: lost and duplicated ({args.runs} runs)", "",
                "accepted: resources/updated the agent's transport took (ledger written by the agent); lost: "
                "accepted but never at the client (under unreliable also: any sequence number missing between the "
                "subscribe and unsubscribe answers); duplicates: raw deliveries of an already received sequence "
                "number, before the client drops them",
                "",
                table(["fault", "profile", "accepted (median)", "lost median", "lost max", "lost total",
                       "duplicates median", "duplicates max", "stream resumed by itself",
                       "telemetry rows in the outbox at the kill (median)"], rows), ""]
    out += res.notes
    out.append(f"bench wall time: {wall:.0f} s")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3, help="repetitions per scenario and profile (default 3)")
    p.add_argument("--outage", type=float, default=2.0, help="seconds the broker stays down (default 2)")
    p.add_argument("--keepalive", type=int, default=2, help="MQTT keepalive in the half-open scenario (default 2 s)")
    p.add_argument("--profiles", default=",".join(PROFILES),
                   help=f"comma-separated link profiles (default {','.join(PROFILES)})")
    p.add_argument("--scenarios", default="broker,agent,halfopen",
                   help="comma-separated subset of broker,agent,halfopen and issue 12's fairness,inflightkill,"
                        "sdwrites (bench/durability.py; default: the first three)")
    p.add_argument("--flood", type=int, default=20000, help="fairness: requests of the flooding client")
    p.add_argument("--kills", type=int, default=50, help="inflightkill: SIGKILLs")
    p.add_argument("--sd-seconds", type=float, default=30.0, help="sdwrites: measuring window (s)")
    args = p.parse_args(argv)
    profiles = [x.strip() for x in args.profiles.split(",") if x.strip()]
    scenarios = [x.strip() for x in args.scenarios.split(",") if x.strip()]
    if args.runs < 1 or args.outage <= 0 or args.keepalive < 2:
        p.error("--runs must be >= 1, --outage > 0, --keepalive >= 2")
    if not profiles or set(profiles) - set(PROFILES):
        p.error(f"--profiles: choose from {', '.join(PROFILES)}")
    import durability  # bench/durability.py (issue 12)

    extra = [s for s in scenarios if s in durability.SCENARIOS]
    scenarios = [s for s in scenarios if s not in durability.SCENARIOS]
    if (not scenarios and not extra) or set(scenarios) - {"broker", "agent", "halfopen"}:
        p.error("--scenarios: choose from broker, agent, halfopen, " + ", ".join(durability.SCENARIOS))

    def on_sigterm(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    from edge_agent.testing.broker import BrokerUnavailable, find_mosquitto

    workdir = Path(tempfile.mkdtemp(prefix="edge-agent-recovery-"))
    res = Results()
    loadavg = "?"
    with contextlib.suppress(OSError):
        loadavg = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    t0 = time.monotonic()
    step = "start"
    try:
        try:
            find_mosquitto()
        except BrokerUnavailable as exc:
            raise BenchError(f"no local broker: {exc}") from None
        per = {"broker": 5.5 + args.outage, "agent": 3 + args.outage, "halfopen": 2 + 1.5 * args.keepalive}
        est = sum((2 + per[s] * args.runs) * len(profiles) for s in scenarios)
        print(f"bench: {len(scenarios)} scenario(s) x {len(profiles)} profile(s) x {args.runs} run(s); ~{est:.0f} s",
              file=sys.stderr, flush=True)
        plan = [("broker", scenario_broker_restart), ("agent", scenario_agent_kill), ("halfopen", scenario_half_open)]
        for key, fn in plan:
            if key not in scenarios:
                continue
            for profile in profiles:
                step = f"{key} ({profile})"
                print(f"bench: {step}", file=sys.stderr, flush=True)
                with contextlib.ExitStack() as cleanup:
                    fn(args, profile, workdir / f"{key}-{profile}", res, cleanup)
        if scenarios:
            print(report(args, res, profiles, loadavg, time.monotonic() - t0))
        if extra:
            step = ",".join(extra)
            print(durability.run(extra, flood=args.flood, kills=args.kills, seconds=args.sd_seconds))
        lost = [(f, pr, c) for (f, pr), cs in res.counts.items() for c in cs if pr == "unreliable" and c.lost]
        if lost:
            print(f"bench: FAILED: {len(lost)} run(s) lost notifications under the unreliable profile: "
                  + "; ".join(f"{f}: {c.lost} lost" for f, _, c in lost), file=sys.stderr)
            return 1
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
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
