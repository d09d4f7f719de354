"""Issue 12's benchmarks, run by ``bench/recovery.py --scenarios fairness,inflightkill,sdwrites``
(or alone: ``python bench/durability.py [--scenarios ...] [--flood N] [--kills N]``).

- ``fairness``: 32 raw MQTT 5 clients on one agent (``lan`` and ``unreliable``): one, in a process of its own,
  floods ``--flood`` pings (20,000) without waiting, 31 send a ping every 100 ms and wait for
  each answer. Rows: the agent with one broker session, with the busy lane on demand and in
  standby (the default; edge_agent/mqtt/lanes.py), ``--repeat`` runs each. Table: each run's
  p99, then the median run's p50/max of the quiet clients' pings during the flood, how the
  flood was answered (results, -32004 "too many requests in flight"), how long it took, and
  how many flood messages still came on the main connection after the move. ``--broker-conf "max_queued_messages 100"``
  (lines for mosquitto.conf): the same under other broker limits.
- ``inflightkill``: tests/test_exactly_once.py's scenario as a measurement: a stream of
  destructive calls to a ledger relay while the agent (``unreliable``) is SIGKILLed ``--kills``
  times at random points; calls, kills, answers per call, relay moves per call, interrupted.
- ``sdwrites``: ``/proc/<pid>/io`` write_bytes of the agent per link profile under issue 12's
  load (tests/sd_load.py: a sensor subscribed at 5 Hz, a relay call every 0.5 s): bytes per
  hour, per message; and the sensor alone.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402
from paho.mqtt.subscribeoptions import SubscribeOptions  # noqa: E402

SCENARIOS = ("fairness", "inflightkill", "sdwrites")


class PingClient:
    """A raw MCP-over-MQTT client that times its requests to the microsecond (event per answer)."""

    def __init__(self, port: int, cid: str, sid: str, name: str):
        self.cid, self.rpc = cid, f"$mcp-rpc/{cid}/{sid}/{name}"
        self.control = f"$mcp-server/{sid}/{name}"
        self.lock = threading.Lock()
        self.waiting: dict[Any, threading.Event] = {}
        self.answers: dict[Any, dict[str, Any]] = {}
        self.count = 0
        self.refused = 0
        self.all_done = threading.Event()
        self.expect = 0
        c = self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
        c.max_inflight_messages_set(0)
        c.max_queued_messages_set(0)
        c.on_message = self._on_message
        up, sub = threading.Event(), threading.Event()
        c.on_connect = lambda *a: up.set()
        c.on_subscribe = lambda *a: sub.set()
        props = Properties(PacketTypes.CONNECT)
        props.UserProperty = [("MCP-COMPONENT-TYPE", "mcp-client"), ("MCP-META", "{}")]
        c.connect("127.0.0.1", port, properties=props)
        c.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle: a ping is one packet
        c.loop_start()
        assert up.wait(10)
        c.subscribe([(self.rpc, SubscribeOptions(qos=1, noLocal=True))])
        assert sub.wait(10)
        self.props = Properties(PacketTypes.PUBLISH)
        self.props.UserProperty = [("MCP-COMPONENT-TYPE", "mcp-client"), ("MCP-MQTT-CLIENT-ID", cid)]
        self.call("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                 "clientInfo": {"name": "bench", "version": "0"}}, topic=self.control)
        self.publish(self.rpc, {"jsonrpc": "2.0", "method": "notifications/initialized"})

    def _on_message(self, client: Any, userdata: Any, m: Any) -> None:
        msg = json.loads(m.payload)
        with self.lock:
            self.count += 1
            if "error" in msg and msg["error"].get("code") == -32004:
                self.refused += 1
            ev = self.waiting.pop(msg.get("id"), None)
            if ev is not None:
                self.answers[msg.get("id")] = msg
            if self.expect and self.count >= self.expect:
                self.all_done.set()
        if ev is not None:
            ev.set()

    def publish(self, topic: str, msg: dict[str, Any]) -> None:
        self.c.publish(topic, json.dumps(msg).encode(), qos=1, properties=self.props)

    def call(self, method: str, params: dict[str, Any] | None = None, *, topic: str | None = None,
             msg_id: Any = None, timeout: float = 30.0) -> float:
        """Send a request and wait for its answer; returns the round trip in seconds."""
        msg_id = msg_id if msg_id is not None else f"{self.cid}-{time.monotonic_ns()}"
        ev = threading.Event()
        with self.lock:
            self.waiting[msg_id] = ev
        t0 = time.perf_counter()
        self.publish(topic or self.rpc, {"jsonrpc": "2.0", "id": msg_id, "method": method, **(
            {"params": params} if params is not None else {})})
        if not ev.wait(timeout):
            raise TimeoutError(f"{method} {msg_id}: no answer in {timeout} s")
        return time.perf_counter() - t0

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def _flood(port: int, sid: str, name: str, flood: int, ready: Any, go: Any, report: Any) -> None:
    """The flooding client, in a process of its own: ``flood`` pings without waiting; reports
    (seconds until the answers stopped coming, answers, of which -32004)."""
    flooder = PingClient(port, "flooder", sid, name)
    flooder.expect = flooder.count + flood
    ready.set()
    go.wait(60)
    t0 = time.monotonic()
    for i in range(flood):
        flooder.publish(flooder.rpc, {"jsonrpc": "2.0", "id": i, "method": "ping"})
    last, last_change = -1, time.monotonic()
    while not flooder.all_done.wait(0.2) and time.monotonic() - last_change < 3.0:
        if flooder.count != last:  # (the broker may drop what exceeds its max_queued_messages)
            last, last_change = flooder.count, time.monotonic()
    took = (last_change if not flooder.all_done.is_set() else time.monotonic()) - t0
    report.put((took, flooder.count - 1, flooder.refused))
    flooder.close()


def fairness(flood: int = 20000, quiet: int = 31, broker_conf: str = "", link: str = "") -> dict[str, Any]:
    from edge_agent.testing.broker import LocalBroker
    from tests.agent_process import AgentProcess, write_config

    work = Path(tempfile.mkdtemp(prefix="edge-agent-fair-"))
    broker = LocalBroker(extra_conf=broker_conf.replace(";", "\n")).start()
    sid, name = "fair-1", "devices/lab/fair"
    config = write_config(work / "a.toml", server_name=name, server_id=sid, state_dir=work / "state",
                          drivers='[[drivers]]\nkind = "relay"\nname = "pump_relay"\npin = 17\n'
                          + ("[link]\n" + link.replace(";", "\n") + "\n" if link else ""))
    agent = AgentProcess(config, broker.url, sid, name).start()
    clients: list[PingClient] = []
    try:
        ready, go, report = mp.Event(), mp.Event(), mp.Queue()
        flooding = mp.Process(target=_flood, args=(broker.port, sid, name, flood, ready, go, report), daemon=True)
        flooding.start()  # another process: the flooder is another machine, not a thread beside the quiet clients
        clients = [PingClient(broker.port, f"quiet-{i}", sid, name) for i in range(quiet)]
        idle = [c.call("ping") for c in clients for _ in range(5)]
        stop = threading.Event()
        lat: list[float] = []
        lat_lock = threading.Lock()

        lost = [0]
        when: list[tuple[float, float]] = []  # (round trip, sent at s after the flood began)

        def pinger(c: PingClient) -> None:
            while not stop.is_set():
                sent = time.monotonic() - t0
                try:
                    rt = c.call("ping", timeout=10)
                except TimeoutError:  # (the broker drops what exceeds its max_queued_messages)
                    with lat_lock:
                        lost[0] += 1
                    continue
                with lat_lock:
                    lat.append(rt)
                    when.append((rt, sent))
                stop.wait(0.1)

        threads = [threading.Thread(target=pinger, args=(c,), daemon=True) for c in clients]
        assert ready.wait(30), "the flooder did not initialize"
        t0 = time.monotonic()
        for th in threads:
            th.start()
        go.set()
        took, answered, refused = report.get(timeout=600)
        stop.set()
        for th in threads:
            th.join(30)
        flooding.join(10)
        clients[0].call("resources/read", {"uri": "device://link"}, msg_id="link")
        link = json.loads(clients[0].answers["link"]["result"]["contents"][0]["text"])
        return {"clients": quiet + 1, "flood": flood, "flood_s": took, "flood_answered": answered,
                "agent_cpu_s": _cpu(agent.proc.pid) if agent.proc else float("nan"),
                "lane": link.get("busy_lane"), "busy_lane": [line.split("] ", 1)[-1][:160] for line in agent.log().splitlines() if "busy lane" in line],
                "flood_refused": refused, "quiet_pings": len(lat), "quiet_lost": lost[0],
                "broker_conf": broker_conf, "link": link, "p50_ms": 1000 * _pct(lat, 0.5), "p99_ms": 1000 * _pct(lat, 0.99), "max_ms": 1000 * max(lat),
                "idle_p50_ms": 1000 * _pct(idle, 0.5), "idle_p99_ms": 1000 * _pct(idle, 0.99),
                "slowest": [(round(1000 * rt), round(at, 3)) for rt, at in sorted(when, reverse=True)[:12]]}
    finally:
        for c in clients:
            c.close()
        agent.stop()
        broker.close()


def inflight_kill(kills: int = 50) -> dict[str, Any]:
    """tests/test_exactly_once.py's scenario, measured (run through pytest for its fixtures)."""
    import subprocess

    env = dict(os.environ, EXACTLY_ONCE_KILLS=str(kills))
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                           "tests/test_exactly_once.py::test_sigkill_at_random_points_every_call_answered_once_and_moved_once"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    line = next((x for x in done.stdout.splitlines() if "destructive calls" in x), done.stdout[-500:])
    return {"ok": done.returncode == 0, "summary": line.strip(), "wall_s": time.monotonic() - t0}


def sd_writes(seconds: float = 30.0) -> list[dict[str, Any]]:
    from edge_agent.testing.broker import LocalBroker
    from tests.sd_load import measure

    rows = []
    broker = LocalBroker().start()
    try:
        with tempfile.TemporaryDirectory(prefix=".sd-bench-", dir=REPO) as folder:
            for profile, calls in (("unreliable", True), ("unreliable", False), ("lan", True)):
                r = measure(broker.url, Path(folder) / f"{profile}-{calls}", profile, seconds, calls=calls)
                rows.append({"profile": profile, "load": "sensor 5 Hz + relay call 2/s" if calls else "sensor 5 Hz",
                             **r})
    finally:
        broker.close()
    return rows


def report(results: dict[str, Any]) -> str:
    out = []
    if "fairness" in results:
        rows = results["fairness"]
        conf = rows[0][1][0].get("broker_conf") if rows and rows[0][1] else ""
        out += [f"### Fairness: one client floods {rows[0][1][0]['flood'] if rows else 0} pings (another process), "
                "31 ping every 100 ms" + (f", broker: {conf}" if conf else ""), "",
                "Per row: each run's quiet-ping p99 (ms), then the median run's figures.", "",
                "| agent | p99 ms, each run | quiet pings (lost) | p50 ms | max ms | flood answered (-32004) | in "
                "| late on the main connection | idle p50/p99 ms |", "|---|---|---|---|---|---|---|---|---|"]
        for label, runs in rows:
            f = sorted(runs, key=lambda r: r["p99_ms"])[len(runs) // 2]
            lane = f.get("lane") or {}
            each = ", ".join(f"{r['p99_ms']:.0f}" for r in runs)
            out.append(f"| {label} | {each} | {f['quiet_pings']} "
                       f"({f['quiet_lost']}) | {f['p50_ms']:.1f} | {f['max_ms']:.0f} | {f['flood_answered']} "
                       f"({f['flood_refused']}) | {f['flood_s']:.1f} s | {lane.get('late', '-')} "
                       f"| {f['idle_p50_ms']:.1f} / {f['idle_p99_ms']:.1f} |")
        out += ["", "Slowest quiet pings of each row's worst run (ms @ s after the flood began; a stall of all "
                "quiet clients at one instant is the machine, one at ~0.1 s the move):", ""]
        for label, runs in rows:
            worst = max(runs, key=lambda r: r["p99_ms"])
            out.append(f"- {label}: " + ", ".join(f"{ms} @ {at:.2f}" for ms, at in worst["slowest"][:6])
                       + f" (busy lane: {worst.get('lane')})")
        out.append("")
    if "inflightkill" in results:
        k = results["inflightkill"]
        out += ["### In-flight kill: SIGKILL at random points of a stream of destructive calls (unreliable)", "",
                f"{'ok' if k['ok'] else 'FAILED'}: {k['summary']} (wall {k['wall_s']:.0f} s)", ""]
    if "sdwrites" in results:
        out += ["### Bytes written to the SD card (/proc/<pid>/io write_bytes, while connected)", "",
                "| profile | load | messages/s | MiB per hour | bytes per message |", "|---|---|---|---|---|"]
        for r in results["sdwrites"]:
            out.append(f"| {r['profile']} | {r['load']} | {r['messages'] / r['seconds']:.1f} | "
                       f"{r['mib_per_hour']:.1f} | {r['bytes_per_message']:.0f} |")
        out.append("")
    return "\n".join(out)


FAIRNESS_ROWS = (("lan, one broker session (busy_lane_after = 0)", "busy_lane_after = 0"),
                 ("lan, busy lane on demand (busy_lane_standby = false)", "busy_lane_standby = false"),
                 ("lan, busy lane in standby (the default)", ""),
                 ("unreliable, one broker session (busy_lane_after = 0)", 'profile = "unreliable"\nbusy_lane_after = 0'),
                 ("unreliable, busy lane in standby (the default)", 'profile = "unreliable"'))


def run(scenarios: list[str], *, flood: int = 20000, kills: int = 50, seconds: float = 30.0,
        broker_conf: str = "", repeat: int = 3) -> str:
    results: dict[str, Any] = {}
    if "fairness" in scenarios:
        results["fairness"] = []
        for label, link in FAIRNESS_ROWS:
            runs = []
            for i in range(repeat):
                print(f"bench: fairness, {label}, run {i + 1}/{repeat}", file=sys.stderr, flush=True)
                runs.append(fairness(flood, broker_conf=broker_conf, link=link))
            results["fairness"].append((label, runs))
    if "inflightkill" in scenarios:
        print("bench: inflightkill", file=sys.stderr, flush=True)
        results["inflightkill"] = inflight_kill(kills)
    if "sdwrites" in scenarios:
        print("bench: sdwrites", file=sys.stderr, flush=True)
        results["sdwrites"] = sd_writes(seconds)
    return report(results)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--flood", type=int, default=20000, help="requests the flooding client sends (default 20000)")
    p.add_argument("--kills", type=int, default=50, help="SIGKILLs in the in-flight-kill scenario (default 50)")
    p.add_argument("--seconds", type=float, default=30.0, help="measuring window of sdwrites (default 30 s)")
    p.add_argument("--broker-conf", default="", help="fairness: mosquitto.conf lines, ';'-separated")
    p.add_argument("--repeat", type=int, default=3, help="fairness: runs per row (default 3)")
    args = p.parse_args(argv)
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if set(scenarios) - set(SCENARIOS):
        p.error(f"--scenarios: choose from {', '.join(SCENARIOS)}")
    print(run(scenarios, flood=args.flood, kills=args.kills, seconds=args.seconds, broker_conf=args.broker_conf,
              repeat=args.repeat))
    return 0


if __name__ == "__main__":
    sys.exit(main())
