"""RPC benchmark: the real agent, through a real broker, with the official MCP client.

    python bench/rpc.py [--broker URL] [--calls N] [--rss-calls N] [--duration S] [--connects N]
                        [--clients N] [--client-procs N] [--idle S] [--device-runs N] [--targets-only]

1. Starts a throw-away local Mosquitto (unless ``--broker`` is given) and the agent as a child
   process (``python -m edge_agent run --demo``: the simulated greenhouse device
   ``devices/greenhouse/gh3-pi``), and waits for its retained presence.
2. Latency (one session, sequential calls, after a warm-up) of ``ping`` (the bare transport
   round trip), ``tools/call`` (``pump_relay_set``, state alternately true/false),
   ``resources/read`` of a cached sensor (``sensor://soil_temp/temperature``) and of
   ``device://health`` (computed on every read).
2b. Time to connect (``--connects`` each): ``mcp.Client(mqtt_client(...))`` in the SDK's default
   mode (``server/discover``, 2026-07-28) and ``ClientSession.initialize()`` (``connect()``).
3. Throughput: sequential ``tools/call`` for ``--duration`` s from 1 session, then from 8
   sessions at once (each its own MQTT connection, anyio tasks in this one process).
4. The agent's memory (VmRSS, VmHWM from /proc/<pid>/status) after start, and before and after
   ``--rss-calls`` mixed calls, to show there is no leak.
5. The issue-11 targets, with raw paho clients (``bench/rawmqtt.py``, no MCP SDK): the echo
   floor (a raw requester publishing to a topic a second raw client echoes back, same broker,
   QoS 1 as RPC), a raw requester's ``tools/call status_led_toggle`` (no arguments) after
   ``initialize`` on the control topic, its ratio to the floor, ``--clients`` (32) raw requesters
   calling at once for ``--duration`` s, and the minimal device (one simulated LED, ``python -m
   edge_agent run --config``): process start to retained online presence, VmRSS after ``--idle``
   s idle (median of ``--device-runs`` starts, made before the demo agent starts). Each figure
   is printed with its target and whether it is met. ``--targets-only`` skips steps 2-4.
6. Prints markdown tables and exits 0; exits 1 with a message naming the failed step.

Everything runs on one machine: the client (this process), the broker and the agent share
the CPUs, so the CPU-time-per-call columns say where the time goes.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rawmqtt  # noqa: E402
from benchlib import machine, table  # noqa: E402

try:
    import anyio
except ImportError:  # pragma: no cover
    sys.exit("bench: needs the [cloud] extra (make setup, then run it with .venv/bin/python; or pip install -e '.[dev]' in a venv)")

SERVER_NAME = "devices/greenhouse/gh3-pi"
TOOL = "pump_relay_set"
SENSOR_URI = "sensor://soil_temp/temperature"
HEALTH_URI = "device://health"
WARMUP = 100
CONCURRENT_CLIENTS = 8
RAW_TOOL = "status_led_toggle"  # no arguments
RAW_CLIENTS = 32
RAW_BLOCKS = 10  # the floor and the raw tools/call alternate in this many blocks of calls
# issue 11 "Proof"
TARGET_RATIO = 2.0  # agent p50 / echo floor p50
TARGET_CONCURRENT_P50_MS = 10.0
TARGET_RSS_MB = 30.0
TARGET_ONLINE_S = 0.5
ONLINE_TIMEOUT = 30.0
CALL_TIMEOUT = 30.0


class BenchError(Exception):
    """A step failed; the message says which and why."""


# ---------------------------------------------------------------------------------------------
# /proc helpers
# ---------------------------------------------------------------------------------------------

def proc_status_mb(pid: int, key: str) -> float:
    """``VmRSS`` / ``VmHWM`` of ``pid`` in MB (the kernel reports kB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no {key} in /proc/{pid}/status")


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds used so far by ``pid``."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU seconds all CPUs spent busy so far (/proc/stat: user nice system irq softirq steal)."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return (f[0] + f[1] + f[2] + f[5] + f[6] + f[7]) / os.sysconf("SC_CLK_TCK")


def self_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


# ---------------------------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------------------------

def percentile(sorted_ms: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_ms:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_ms)))
    return sorted_ms[rank - 1]


@dataclass
class Latency:
    name: str
    ms: list[float] = field(default_factory=list)

    def row(self) -> list[str]:
        s = sorted(self.ms)
        mean = sum(s) / len(s)
        return [self.name, str(len(s)), f"{percentile(s, 50):.2f}", f"{percentile(s, 90):.2f}",
                f"{percentile(s, 99):.2f}", f"{s[-1]:.2f}", f"{mean:.2f}"]


@dataclass
class CpuSpan:
    """CPU seconds used by the agent, the broker (if local) and this process over a span."""

    agent_pid: int
    broker_pid: int | None
    start: tuple[float, ...] = ()

    def _now(self) -> tuple[float, ...]:
        broker = proc_cpu_s(self.broker_pid) if self.broker_pid else 0.0
        return proc_cpu_s(self.agent_pid), broker, self_cpu_s(), machine_busy_s(), time.monotonic()

    def __enter__(self) -> "CpuSpan":
        self.start = self._now()
        return self

    def __exit__(self, *exc: Any) -> None:
        end = self._now()
        self.used = tuple(e - s for e, s in zip(end, self.start))

    def add_bench(self, cpu_s: float) -> None:
        """Count ``cpu_s`` CPU seconds of client child processes as this process's (after the span)."""
        agent, broker, bench, busy, wall = self.used
        self.used = (agent, broker, bench + cpu_s, busy, wall)

    def per_call_ms(self, calls: int) -> tuple[str, ...]:
        agent, broker, bench, busy, wall = self.used
        ours = [agent, broker if self.broker_pid else math.nan, bench]
        # CPUs kept busy by everything else on the machine (other processes, interrupts), on average.
        others = max(0.0, busy - agent - broker - bench) / wall if wall > 0 else math.nan
        return (*(_fmt(u * 1000 / calls) for u in ours), f"{others:.2f}")


def _fmt(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.2f}"


@dataclass
class Throughput:
    clients: int
    calls: int
    seconds: float
    ms: list[float]
    cpu: tuple[str, ...]

    def row(self) -> list[str]:
        s = sorted(self.ms)
        return [str(self.clients), str(self.calls), f"{self.seconds:.2f}", f"{self.calls / self.seconds:.0f}",
                f"{percentile(s, 50):.2f}", f"{percentile(s, 99):.2f}", f"{s[-1]:.2f}", *self.cpu]


# ---------------------------------------------------------------------------------------------
# the calls
# ---------------------------------------------------------------------------------------------

class Caller:
    """One MCP session and the few calls the benchmark makes, each checked."""

    def __init__(self, session: Any):
        self.session = session
        self.state = False

    async def tool(self) -> None:
        self.state = not self.state
        result = await self.session.call_tool(TOOL, {"state": self.state}, read_timeout_seconds=CALL_TIMEOUT)
        if getattr(result, "is_error", True):
            text = " ".join(getattr(c, "text", "") for c in getattr(result, "content", []))
            raise BenchError(f"tools/call {TOOL} returned an error: {text[:300]}")
        structured = getattr(result, "structured_content", None)
        if structured is not None and structured.get("state") is not self.state:
            raise BenchError(f"tools/call {TOOL} state={self.state} answered {structured}")

    async def toggle(self) -> None:
        result = await self.session.call_tool("status_led_toggle", {}, read_timeout_seconds=CALL_TIMEOUT)
        if getattr(result, "is_error", True):
            raise BenchError(f"tools/call status_led_toggle returned an error: {result}")

    async def ping(self) -> None:
        await self.session.send_ping()

    async def read(self, uri: str) -> None:
        result = await self.session.read_resource(uri)
        contents = getattr(result, "contents", None)
        if not contents or not getattr(contents[0], "text", ""):
            raise BenchError(f"resources/read {uri} returned no text: {result}")

    async def sensor(self) -> None:
        await self.read(SENSOR_URI)

    async def health(self) -> None:
        await self.read(HEALTH_URI)


async def timed(fn: Any, n: int, out: list[float] | None = None) -> list[float]:
    out = [] if out is None else out
    clock = time.perf_counter
    for _ in range(n):
        t0 = clock()
        await fn()
        out.append((clock() - t0) * 1000)
    return out


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------

@dataclass
class Results:
    online_s: float = math.nan
    loadavg: str = "?"
    latency: list[Latency] = field(default_factory=list)
    throughput: list[Throughput] = field(default_factory=list)
    memory: list[list[str]] = field(default_factory=list)
    rss_trend: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    floor: list[float] = field(default_factory=list)
    raw_call: list[float] = field(default_factory=list)
    concurrent: list[float] = field(default_factory=list)
    concurrent_s: float = math.nan
    concurrent_cpu: tuple[str, ...] = ()
    broker_pid: int | None = None
    bare_rss_mb: float = math.nan
    devices: list[rawmqtt.DeviceRun] = field(default_factory=list)
    connect: list[Latency] = field(default_factory=list)


async def time_to_connect(url: str, n: int) -> list[Latency]:
    """Milliseconds from nothing to a usable session (MQTT connect, presence, negotiation), ``n``
    times each: ``mcp.Client(mqtt_client(...))`` in its default mode (``auto``: the
    ``server/discover`` probe, 2026-07-28) and ``ClientSession.initialize()`` (``connect()``)."""
    from mcp import Client

    from edge_agent.cloud import connect, mqtt_client

    auto, handshake = Latency("mcp.Client(mqtt_client(...)) default mode (auto -> 2026-07-28)"), \
        Latency("ClientSession.initialize() (edge_agent.cloud.connect, 2025-11-25)")
    for _ in range(n):
        start = time.perf_counter()
        async with Client(mqtt_client(url, SERVER_NAME)) as client:
            auto.ms.append((time.perf_counter() - start) * 1000)
            if client.session.protocol_version != "2026-07-28":
                raise BenchError(f"time to connect: the default client negotiated {client.session.protocol_version}")
        start = time.perf_counter()
        async with connect(url, SERVER_NAME):
            handshake.ms.append((time.perf_counter() - start) * 1000)
    return [auto, handshake]


class Agent:
    """The agent child process, its stderr in a log file."""

    def __init__(self, broker_url: str, workdir: Path):
        self.log_path = workdir / "agent.log"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.started = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edge_agent", "run", "--demo", "--broker", broker_url,
                 "--log-level", "warning"],
                stdout=subprocess.DEVNULL, stderr=log, env=env)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def check_alive(self, step: str) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"{step}: the agent exited with code {self.proc.returncode}; its log:\n"
                             f"{self.log_tail() or '(empty)'}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def wait_online(url: str, agent: Agent) -> tuple[float, str]:
    """Seconds from the agent's start to its presence seen (polled), and its server-id."""
    from edge_agent.cloud import discover

    deadline = time.monotonic() + ONLINE_TIMEOUT
    while time.monotonic() < deadline:
        agent.check_alive("waiting for the agent's presence")
        found = await discover(url, SERVER_NAME, timeout=0.2)
        for s in found:
            if s.server_name == SERVER_NAME:
                return time.monotonic() - agent.started, s.server_id
    raise BenchError(f"the agent did not come online ({SERVER_NAME} presence not seen at {url} within "
                     f"{ONLINE_TIMEOUT:.0f} s); its log:\n{agent.log_tail() or '(empty)'}")


async def run(args: argparse.Namespace, url: str, agent: Agent, broker_pid: int | None, res: Results) -> None:
    step = "start"
    try:
        from edge_agent.cloud import connect

        step = "waiting for the agent's presence"
        res.online_s, server_id = await wait_online(url, agent)
        rss_start = proc_status_mb(agent.pid, "VmRSS")
        res.memory.append(["VmRSS after start (presence online)", f"{rss_start:.1f}", "MB"])

        # -- raw paho: echo floor, tools/call, concurrent clients ----------------------------------
        step = "raw paho measurements"
        await anyio.to_thread.run_sync(raw_section, args, url, server_id, agent, res)
        if args.targets_only:
            return

        # -- latency -----------------------------------------------------------------------------
        step = "latency"
        async with connect(url, SERVER_NAME) as session:
            c = Caller(session)
            for fn in (c.ping, c.tool, c.sensor, c.health):
                await timed(fn, WARMUP)
            # The client's heap (mcp, pydantic, jsonschema) is big: a full collection of it takes
            # ~60 ms on a server CPU and would show up as the agent's max latency. Freeze what
            # exists now so the client's own GC stays out of the figures (the agent is untouched).
            gc.collect()
            gc.freeze()
            for name, fn in (("ping (transport round trip, no handler)", c.ping), (f"tools/call {TOOL}", c.tool),
                             (f"resources/read {SENSOR_URI} (cached)", c.sensor),
                             (f"resources/read {HEALTH_URI} (computed)", c.health)):
                agent.check_alive(step)
                res.latency.append(Latency(name, await timed(fn, args.calls)))

        # -- time to connect (issue 14: the SDK's default mode used to wait 10 s for its probe) -----
        step = "time to connect"
        res.connect = await time_to_connect(url, args.connects)

        # -- throughput --------------------------------------------------------------------------
        for clients in (1, CONCURRENT_CLIENTS):
            step = f"throughput with {clients} client(s)"
            agent.check_alive(step)
            res.throughput.append(await throughput(url, clients, args.duration, agent.pid, broker_pid))

        # -- memory --------------------------------------------------------------------------------
        step = "memory"
        agent.check_alive(step)
        async with connect(url, SERVER_NAME) as session:
            c = Caller(session)
            mix = (c.tool, c.sensor, c.health, c.toggle)
            await timed(mix[0], 1)
            rss_before = proc_status_mb(agent.pid, "VmRSS")
            res.rss_trend.append(rss_before)
            chunk = max(1, args.rss_calls // 10)
            done = 0
            while done < args.rss_calls:
                n = min(chunk, args.rss_calls - done)
                for i in range(n):
                    await mix[(done + i) % len(mix)]()
                done += n
                res.rss_trend.append(proc_status_mb(agent.pid, "VmRSS"))
            health = json.loads((await session.read_resource(HEALTH_URI)).contents[0].text)
        rss_after = res.rss_trend[-1]
        growth_kb_per_1000 = (rss_after - rss_before) * 1024 * 1000 / args.rss_calls
        res.memory += [
            ["VmRSS before the leak run (after latency + throughput, 10 sessions closed)", f"{rss_before:.1f}", "MB"],
            [f"VmRSS after {args.rss_calls} more mixed calls (tools/call, resources/read)", f"{rss_after:.1f}", "MB"],
            ["VmRSS growth over those calls", f"{rss_after - rss_before:+.2f}", "MB"],
            ["VmRSS growth per 1000 calls", f"{growth_kb_per_1000:+.1f}", "kB"],
            ["VmHWM (peak RSS)", f"{proc_status_mb(agent.pid, 'VmHWM'):.1f}", "MB"],
        ]
        sessions = health.get("sessions")
        res.notes.append(f"sessions the agent holds at the end (this one included): {sessions}"
                         + ("" if sessions == 1 else "  <-- expected 1: closed sessions not released?"))
        link = {k: v for k, v in (health.get("link") or {}).items() if k != "broker"}
        if link:
            res.notes.append(f"agent link at the end (device://health): {json.dumps(link)}")
        agent.check_alive("end of the run")
    except BenchError:
        raise
    except Exception as exc:  # noqa: BLE001 - one clear message per step, then exit 1
        if agent.proc.poll() is not None:
            raise BenchError(f"{step}: the agent exited with code {agent.proc.returncode}; its log:\n"
                             f"{agent.log_tail() or '(empty)'}") from exc
        raise BenchError(f"{step}: {type(exc).__name__}: {exc}") from exc


def raw_section(args: argparse.Namespace, url: str, server_id: str, agent: Agent, res: Results) -> None:
    """The raw-paho rows of the targets table (blocking; run in a worker thread)."""
    probe = rawmqtt.tools_call_payload(1, RAW_TOOL, {})
    try:
        agent.check_alive("raw echo floor and raw tools/call")
        # Floor and agent alternate in blocks, so both see the same load on the shared machine.
        echo, echoer = rawmqtt.echo_requester(url, len(probe))
        try:
            r = rawmqtt.mcp_requester(url, server_id, SERVER_NAME, RAW_TOOL)
            try:
                echo.timed(WARMUP)
                r.timed(WARMUP)
                left = args.calls
                while left > 0:
                    n = min(left, max(1, args.calls // RAW_BLOCKS))
                    res.floor += echo.timed(n)
                    res.raw_call += r.timed(n)
                    left -= n
            finally:
                rawmqtt.mcp_goodbye(r)
        finally:
            echo.close()
            echoer.close()
        agent.check_alive(f"{args.clients} concurrent raw clients")
        span = CpuSpan(agent.pid, res.broker_pid)
        if args.client_procs > 1:
            res.concurrent, res.concurrent_s, children_cpu = rawmqtt.concurrent_calls_procs(
                url, server_id, SERVER_NAME, RAW_TOOL, args.clients, args.duration, 20, args.client_procs,
                span=lambda: span)
            span.add_bench(children_cpu)
        else:
            res.concurrent, res.concurrent_s = rawmqtt.concurrent_calls(
                url, server_id, SERVER_NAME, RAW_TOOL, args.clients, args.duration, 20, span=lambda: span)
        res.concurrent_cpu = span.per_call_ms(len(res.concurrent))
    except rawmqtt.RawError as exc:
        raise BenchError(str(exc)) from None


def targets_table(args: argparse.Namespace, res: Results) -> list[str]:
    """The issue-11 table: figures, targets, met or not."""
    rows: list[list[str]] = []

    def p(ms: list[float], q: float) -> float:
        return percentile(sorted(ms), q)

    def met(ok: bool) -> str:
        return "yes" if ok else "NO"

    floor50 = p(res.floor, 50) if res.floor else math.nan
    if res.floor:
        rows.append([f"echo floor: raw paho -> broker -> raw paho echo -> back, QoS 1, {len(res.floor)} calls",
                     f"{floor50:.3f} ms", f"{p(res.floor, 95):.3f} ms", "(the floor)", ""])
    if res.raw_call:
        call50 = p(res.raw_call, 50)
        ratio = call50 / floor50
        rows.append([f"tools/call {RAW_TOOL} (no args), raw paho requester -> agent, {len(res.raw_call)} calls",
                     f"{call50:.3f} ms", f"{p(res.raw_call, 95):.3f} ms",
                     f"p50 <= {TARGET_RATIO:g}x floor ({TARGET_RATIO * floor50:.3f} ms)", ""])
        rows.append(["  ratio to the floor (p50 / floor p50)", f"{ratio:.2f}x",
                     f"{p(res.raw_call, 95) / p(res.floor, 95):.2f}x", f"<= {TARGET_RATIO:g}x",
                     met(ratio <= TARGET_RATIO)])
    if res.concurrent:
        c50 = p(res.concurrent, 50)
        rate = len(res.concurrent) / res.concurrent_s
        procs = f" in {args.client_procs} processes" if args.client_procs > 1 else ""
        rows.append([f"{args.clients} concurrent raw clients{procs}, tools/call {RAW_TOOL}, {args.duration:g} s "
                     f"({len(res.concurrent)} calls, {rate:.0f}/s)",
                     f"{c50:.2f} ms", f"{p(res.concurrent, 95):.2f} ms", f"p50 <= {TARGET_CONCURRENT_P50_MS:g} ms",
                     met(c50 <= TARGET_CONCURRENT_P50_MS)])
    if res.devices:
        rss = sorted(d.rss_mb for d in res.devices)
        online = sorted(d.online_s for d in res.devices)
        mid = len(rss) // 2
        runs = f"median of {len(rss)} starts"
        rows.append([f"minimal device (1 simulated LED) VmRSS after {args.idle:g} s idle, {runs}",
                     f"{rss[mid]:.1f} MB", f"max {rss[-1]:.1f} MB", f"<= {TARGET_RSS_MB:g} MB",
                     met(rss[mid] <= TARGET_RSS_MB)])
        rows.append([f"minimal device: process start -> retained online presence at the broker, {runs}",
                     f"{online[mid]:.3f} s", f"max {online[-1]:.3f} s", f"<= {TARGET_ONLINE_S:g} s",
                     met(online[mid] <= TARGET_ONLINE_S)])
    if not rows:
        return []
    out = ["## Issue 11 targets (raw paho clients, no MCP SDK)", "",
           table(["measurement", "p50", "p95", "target", "met"], rows), ""]
    if res.concurrent_cpu:
        agent_ms, broker_ms, bench_ms, others = res.concurrent_cpu
        out.append(f"{args.clients} concurrent clients, CPU ms per call: agent {agent_ms}, broker {broker_ms}, "
                   f"bench (all clients) {bench_ms}; other load {others} CPUs")
    if res.devices:
        out.append("minimal device VmHWM (peak RSS) per start: " + " ".join(f"{d.hwm_mb:.1f}" for d in res.devices)
                   + " MB; start -> online per start: " + " ".join(f"{d.online_s:.3f}" for d in res.devices)
                   + f" s; a bare `python -c` on this machine: {res.bare_rss_mb:.1f} MB VmRSS")
    return out + [""]


async def throughput(url: str, clients: int, duration: float, agent_pid: int, broker_pid: int | None) -> Throughput:
    from edge_agent.cloud import connect

    async with contextlib.AsyncExitStack() as stack:
        callers = []
        for _ in range(clients):
            callers.append(Caller(await stack.enter_async_context(connect(url, SERVER_NAME))))
        for c in callers:  # warm each session (tool list cache, first-call paths)
            await timed(c.tool, 20)
        latencies: list[list[float]] = [[] for _ in callers]
        go = anyio.Event()
        ends: list[float] = []

        async def worker(c: Caller, out: list[float], stop_at: list[float]) -> None:
            await go.wait()
            clock = time.perf_counter
            while clock() < stop_at[0]:
                t0 = clock()
                await c.tool()
                out.append((clock() - t0) * 1000)
            ends.append(clock())

        stop_at = [0.0]
        with CpuSpan(agent_pid, broker_pid) as cpu:
            async with anyio.create_task_group() as tg:
                for c, out in zip(callers, latencies):
                    tg.start_soon(worker, c, out, stop_at)
                await anyio.sleep(0)
                start = time.perf_counter()
                stop_at[0] = start + duration
                go.set()
        seconds = max(ends) - start
        ms = [x for out in latencies for x in out]
        return Throughput(clients, len(ms), seconds, ms, cpu.per_call_ms(len(ms)))


def report(args: argparse.Namespace, url: str, res: Results, local: bool) -> str:
    m = machine()
    out = ["# edge-agent RPC benchmark", "",
           f"machine: {m['nproc']} CPUs, {m['cpu']}, {m['memory']} RAM; {m['python']}; Linux {m['kernel']}",
           f"broker: {url} ({'local Mosquitto started by the bench' if local else 'given with --broker'})",
           f"agent: `python -m edge_agent run --demo` ({SERVER_NAME}, simulated hardware)",
           "client: official mcp ClientSession over edge_agent.cloud, QoS 1, this process (same machine), "
           "gc.freeze() after warm-up",
           f"load average before the run: {res.loadavg}",
           f"agent start -> retained presence seen: {res.online_s:.2f} s (polled every ~0.2 s)", ""]
    out += targets_table(args, res)
    if res.latency:
        out += [f"## Latency, 1 session, sequential calls (after {WARMUP} warm-up calls each)", "",
                table(["request", "calls", "p50 ms", "p90 ms", "p99 ms", "max ms", "mean ms"],
                      [lat.row() for lat in res.latency]), ""]
    if res.connect:
        out += [f"## Time to connect (new MQTT connection, presence, negotiation; {args.connects} each)", "",
                table(["client", "connects", "p50 ms", "p90 ms", "p99 ms", "max ms", "mean ms"],
                      [c.row() for c in res.connect]), ""]
    if res.throughput:
        out += [f"## Throughput, sequential tools/call {TOOL} per session for {args.duration:g} s", "",
                table(["sessions", "calls", "s", "calls/s", "p50 ms", "p99 ms", "max ms",
                       "agent CPU ms/call", "broker CPU ms/call", "bench CPU ms/call", "other load (CPUs)"],
                      [t.row() for t in res.throughput]), ""]
    if res.memory:
        out += ["## Agent memory (/proc/<pid>/status)", "",
                table(["measurement", "value", "unit"], res.memory), ""]
    if res.rss_trend:
        out.append("VmRSS every 10 % of the leak run (MB): " + " ".join(f"{x:.1f}" for x in res.rss_trend))
    out += res.notes
    ping = next((lat for lat in res.latency if lat.name.startswith("ping")), None)
    if ping and 38 <= percentile(sorted(ping.ms), 50) <= 60:
        out.append("WARNING: ~40 ms per round trip is Nagle's algorithm meeting delayed ACKs: the broker does not "
                   "set TCP_NODELAY (Mosquitto: `set_tcp_nodelay true` in mosquitto.conf)")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--broker", help="MQTT broker URL (default: start a throw-away local Mosquitto)")
    p.add_argument("--calls", type=int, default=2000, help="calls per latency measurement (default 2000)")
    p.add_argument("--rss-calls", type=int, default=10000,
                   help="mixed calls between the two RSS readings of the leak check (default 10000)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per throughput run (default 5)")
    p.add_argument("--connects", type=int, default=10,
                   help="connections per client mode for the time-to-connect table (default 10)")
    p.add_argument("--clients", type=int, default=RAW_CLIENTS,
                   help=f"raw paho clients calling at once (default {RAW_CLIENTS})")
    p.add_argument("--client-procs", type=int, default=1,
                   help="spread the --clients raw clients over this many processes (default 1: all in this one, "
                        "where they share one GIL and the bench itself can be the bottleneck)")
    p.add_argument("--idle", type=float, default=3.0,
                   help="seconds the minimal device idles before its VmRSS is read (default 3)")
    p.add_argument("--device-runs", type=int, default=3,
                   help="starts of the minimal device; the median is reported (default 3)")
    p.add_argument("--targets-only", action="store_true",
                   help="only the issue-11 targets table (raw clients, minimal device): skip the SDK steps")
    p.add_argument("--device-python", metavar="PATH", default=None,
                   help="run the minimal device with this interpreter (e.g. a venv made from Debian's "
                        "/usr/bin/python3, as on a Pi, with edge-agent-mcp[gpio] installed; default: this one)")
    args = p.parse_args(argv)
    if args.calls < 1 or args.rss_calls < 1 or args.duration <= 0:
        p.error("--calls and --rss-calls must be >= 1, --duration > 0")
    if args.clients < 1 or args.device_runs < 0 or args.idle < 0 or args.client_procs < 1:
        p.error("--clients and --client-procs must be >= 1, --device-runs and --idle >= 0")

    # SIGTERM -> the same clean-up path as Ctrl-C.
    def on_sigterm(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)

    from edge_agent.testing.broker import BrokerUnavailable, LocalBroker

    broker = agent = None
    workdir = Path(tempfile.mkdtemp(prefix="edge-agent-bench-"))
    res = Results()
    with contextlib.suppress(OSError):
        res.loadavg = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    t0 = time.monotonic()
    try:
        url = args.broker
        if url is None:
            try:
                broker = LocalBroker().start()
            except (BrokerUnavailable, RuntimeError) as exc:
                raise BenchError(f"could not start a local Mosquitto: {exc}") from None
            url = broker.url
        else:
            from edge_agent.cloud import discover

            try:
                already = anyio.run(lambda: discover(url, SERVER_NAME, timeout=0.5))
            except Exception as exc:  # noqa: BLE001
                raise BenchError(f"broker {url} unreachable: {type(exc).__name__}: {exc}") from None
            if already:
                raise BenchError(f"{SERVER_NAME} is already online at {url} (server-id "
                                 f"{already[0].server_id}); stop it first, the bench starts its own agent")
        print(f"bench: broker {url}; ~{_estimate(args)} s", file=sys.stderr, flush=True)
        res.broker_pid = broker.proc.pid if broker and broker.proc else None
        if args.device_runs:
            res.bare_rss_mb = rawmqtt.bare_interpreter_rss_mb(args.device_python)
        for i in range(args.device_runs):
            try:
                res.devices.append(rawmqtt.minimal_device(url, workdir / f"minimal-{i}", args.idle,
                                                            python=args.device_python))
            except rawmqtt.RawError as exc:
                raise BenchError(f"minimal device: {exc}") from None
        agent = Agent(url, workdir)
        anyio.run(run, args, url, agent, broker.proc.pid if broker and broker.proc else None, res)
        warnings = [ln for ln in agent.log_tail(100_000).splitlines() if ln.strip()]
        res.notes.append(f"agent log lines at warning level or above: {len(warnings)}"
                         + (f"; last: {warnings[-1][:200]}" if warnings else ""))
        res.notes.append(f"bench wall time: {time.monotonic() - t0:.0f} s")
        print(report(args, url, res, broker is not None))
        return 0
    except BenchError as exc:
        print(f"bench: FAILED: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001 - a bug here, not in the agent: say so, with the traceback
        import traceback

        traceback.print_exc()
        print("bench: FAILED: unexpected error (traceback above)", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if agent is not None:
            agent.stop()
        if broker is not None:
            broker.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _estimate(args: argparse.Namespace) -> int:
    targets = args.device_runs * (args.idle + 1) + args.duration + 2 * (args.calls + WARMUP) * 0.001 + 3
    if args.targets_only:
        return int(5 + targets)
    return int(5 + targets + 2 * args.duration + (4 * (args.calls + WARMUP) + args.rss_calls) * 0.002
               + args.connects * 0.3)


if __name__ == "__main__":
    sys.exit(main())
