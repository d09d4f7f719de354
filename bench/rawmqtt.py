"""Raw paho MQTT 5 measurements for ``bench/rpc.py`` (no MCP SDK anywhere on the client side).

- :class:`RawRequester`: one paho connection (its own network thread, ``TCP_NODELAY``) that sends
  a request and times the answer. It runs closed loop from paho's callback: the answer's
  ``on_message`` records the latency and publishes the next request at once, so no thread
  hand-off or polling sits inside the measured round trip.
- :func:`echo_floor`: the floor. The same requester publishes to a topic that a second raw paho
  client (:class:`Echoer`) publishes straight back, through the same broker, at the RPC QoS.
- :func:`mcp_requester`: the same requester as an MCP client: ``initialize`` on the server's
  control topic (MCP-over-MQTT), ``notifications/initialized``, then requests on its RPC topic.
- :func:`concurrent_calls`: N such MCP requesters calling at once for a fixed time.
- :func:`minimal_device`: ``edge-agent run`` of a one-LED simulated config as a child process:
  time from process start to its retained online presence on the broker, and its idle VmRSS.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_agent.core import topics
from edge_agent.mqtt.broker_url import parse_broker_url

PROTOCOL_VERSION = "2025-11-25"
SKIP = "skip"  # check(): not the answer (a notification on the same topic): keep waiting
CONNECT_TIMEOUT = 10.0


class RawError(Exception):
    """A raw-client step failed; the message says which and why."""


def _nodelay(client: Any, userdata: Any, sock: Any) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass


def _connect(url: str, client_id: str, *, component: str | None) -> mqtt.Client:
    """A connected paho MQTT 5 client running its own network thread (``loop_start``)."""
    u = parse_broker_url(url)
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    c.on_socket_open = _nodelay
    c.max_inflight_messages_set(100)
    connected = threading.Event()
    c.on_connect = lambda *a: connected.set()
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 0
    if component:
        props.UserProperty = [("MCP-COMPONENT-TYPE", component), ("MCP-META", "{}")]
    c.connect(u.host, u.port, keepalive=60, clean_start=True, properties=props)
    c.loop_start()
    if not connected.wait(CONNECT_TIMEOUT):
        c.loop_stop()
        raise RawError(f"raw client {client_id}: no CONNACK from {url} within {CONNECT_TIMEOUT:g} s")
    return c


def _subscribe(c: mqtt.Client, filters: list[tuple[str, SubscribeOptions]]) -> None:
    done = threading.Event()
    c.on_subscribe = lambda *a: done.set()
    rc, _ = c.subscribe(filters)
    if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or not done.wait(CONNECT_TIMEOUT):
        raise RawError(f"subscribe {[f for f, _ in filters]} failed (rc {rc})")


@dataclass
class _Run:
    """One closed-loop run: ``remaining`` requests (or until ``stop_at``), latencies in ms."""

    remaining: float
    stop_at: float = float("inf")
    ms: list[float] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    error: str | None = None


class RawRequester:
    """A raw paho requester: ``publish(topic, payload)`` then the next message on its reply
    topic is the answer (one request outstanding at a time).

    ``make_request()`` returns ``(topic, payload bytes)`` for the next request; ``check(payload)``
    returns None for a good answer, :data:`SKIP` for a message that is not the answer (a
    notification on the same topic), or a short text saying what is wrong with it.
    """

    def __init__(self, url: str, client_id: str, reply_filter: str, *, qos: int = 1, component: str | None = None):
        self.client_id = client_id
        self.qos = qos
        self.client = _connect(url, client_id, component=component)
        self.props = Properties(PacketTypes.PUBLISH)
        self.props.UserProperty = [("MCP-COMPONENT-TYPE", component or "bench"), ("MCP-MQTT-CLIENT-ID", client_id)]
        self.make_request: Callable[[], tuple[str, bytes]] = lambda: ("", b"")
        self.check: Callable[[bytes], str | None] = lambda payload: None
        self._run: _Run | None = None
        self._sent = 0.0
        self._answer: bytes | None = None
        self._answered = threading.Event()
        self.client.on_message = self._on_message
        _subscribe(self.client, [(reply_filter, SubscribeOptions(qos=qos, noLocal=True))])

    # -- one request, waited for (set-up: initialize) ------------------------------------------
    def request(self, topic: str, payload: bytes, timeout: float = 10.0) -> bytes:
        self._answered.clear()
        self._answer = None
        self.client.publish(topic, payload, qos=self.qos, properties=self.props)
        if not self._answered.wait(timeout):
            raise RawError(f"{self.client_id}: no answer on its reply topic within {timeout:g} s to {payload[:120]!r}")
        assert self._answer is not None
        return self._answer

    def send(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=self.qos, properties=self.props)

    # -- closed loop ---------------------------------------------------------------------------
    def _fire(self) -> None:
        topic, payload = self.make_request()
        self._sent = time.perf_counter()
        self.client.publish(topic, payload, qos=self.qos, properties=self.props)

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        now = time.perf_counter()
        run = self._run
        if run is None:
            if _is_notification(message.payload):
                return
            self._answer = message.payload
            self._answered.set()
            return
        problem = self.check(message.payload)
        if problem is SKIP:
            return
        if problem is not None:
            run.error = f"{self.client_id}: {problem}"
            self._run = None
            run.done.set()
            return
        run.ms.append((now - self._sent) * 1000)
        run.remaining -= 1
        if run.remaining <= 0 or now >= run.stop_at:
            self._run = None
            run.done.set()
            return
        self._fire()

    def start(self, run: _Run) -> None:
        self._run = run
        self._fire()

    def timed(self, n: int, timeout: float = 120.0) -> list[float]:
        """``n`` sequential round trips; their latencies in ms.

        Raises:
            RawError: an answer was wrong, or the run did not finish within ``timeout`` s.
        """
        run = _Run(remaining=n)
        self.start(run)
        return self.finish(run, timeout)

    def finish(self, run: _Run, timeout: float) -> list[float]:
        if not run.done.wait(timeout):
            self._run = None
            raise RawError(f"{self.client_id}: {len(run.ms)} answers, then none for {timeout:g} s")
        if run.error:
            raise RawError(run.error)
        return run.ms

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Echoer:
    """A raw paho client that publishes every message on ``<prefix>/req/<id>`` back on
    ``<prefix>/resp/<id>`` at once (from paho's callback), same payload, same QoS."""

    def __init__(self, url: str, prefix: str, qos: int = 1):
        self.prefix = prefix
        self.client = _connect(url, f"bench-echo-{uuid.uuid4().hex[:8]}", component=None)
        self.props = Properties(PacketTypes.PUBLISH)
        self.props.UserProperty = [("MCP-COMPONENT-TYPE", "bench"), ("MCP-MQTT-CLIENT-ID", "echo")]

        def echo(client: Any, userdata: Any, m: Any) -> None:
            client.publish(prefix + "/resp/" + m.topic.rsplit("/", 1)[1], m.payload, qos=qos, properties=self.props)

        self.client.on_message = echo
        _subscribe(self.client, [(prefix + "/req/+", SubscribeOptions(qos=qos))])

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# ---------------------------------------------------------------------------------------------
# the MCP side
# ---------------------------------------------------------------------------------------------

def tools_call_payload(msg_id: int, tool: str, arguments: dict[str, Any]) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": msg_id, "method": "tools/call",
                       "params": {"name": tool, "arguments": arguments}}, separators=(",", ":")).encode()


def _is_notification(payload: bytes) -> bool:
    try:
        msg = json.loads(payload)
    except ValueError:
        return False
    return isinstance(msg, dict) and "id" not in msg and "method" in msg


def _check_tool_answer(payload: bytes) -> str | None:
    try:
        msg = json.loads(payload)
    except ValueError:
        return f"undecodable answer {payload[:120]!r}"
    if isinstance(msg, dict) and "id" not in msg and "method" in msg:
        return SKIP  # e.g. notifications/message (a driver's log) on the RPC topic
    result = msg.get("result") if isinstance(msg, dict) else None
    if not isinstance(result, dict) or result.get("isError"):
        return f"tools/call failed: {payload[:300]!r}"
    return None


def mcp_requester(url: str, server_id: str, server_name: str, tool: str, *, qos: int = 1) -> RawRequester:
    """A raw requester that did ``initialize`` + ``notifications/initialized`` with the server
    and is set up to call ``tool`` with no arguments on its RPC topic.

    Raises:
        RawError: the connection, the subscription or the initialize failed.
    """
    cid = f"bench-raw-{uuid.uuid4().hex[:12]}"
    rpc = topics.rpc(cid, server_id, server_name)
    r = RawRequester(url, cid, rpc, qos=qos, component=topics.COMPONENT_CLIENT)
    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {"protocolVersion": PROTOCOL_VERSION, "capabilities": {},
                       "clientInfo": {"name": "bench-raw-paho", "version": "0"}}}
    answer = json.loads(r.request(topics.server_control(server_id, server_name), json.dumps(init).encode()))
    if "result" not in answer:
        raise RawError(f"initialize refused: {answer}")
    r.send(rpc, b'{"jsonrpc":"2.0","method":"notifications/initialized"}')
    ids = itertools.count(1)
    r.make_request = lambda: (rpc, tools_call_payload(next(ids), tool, {}))
    r.check = _check_tool_answer
    r.rpc_topic = rpc  # type: ignore[attr-defined]
    return r


def mcp_goodbye(r: RawRequester) -> None:
    """``notifications/disconnected`` on the RPC topic, then DISCONNECT."""
    r.send(r.rpc_topic, b'{"jsonrpc":"2.0","method":"notifications/disconnected"}')  # type: ignore[attr-defined]
    r.close()


def echo_requester(url: str, request_size: int, *, qos: int = 1) -> tuple[RawRequester, Echoer]:
    """A raw requester whose requests (``request_size`` bytes) an :class:`Echoer` sends back:
    ``r.timed(n)`` measures the floor. Close both."""
    prefix = f"bench/echo/{uuid.uuid4().hex[:8]}"
    echoer = Echoer(url, prefix, qos)
    try:
        cid = f"bench-req-{uuid.uuid4().hex[:8]}"
        r = RawRequester(url, cid, f"{prefix}/resp/{cid}", qos=qos)
    except BaseException:
        echoer.close()
        raise
    payload = b"x" * request_size
    r.make_request = lambda: (f"{prefix}/req/{cid}", payload)
    r.check = lambda p: None if p == payload else "echo payload differs"
    return r, echoer


def echo_floor(url: str, n: int, warmup: int, request_size: int, *, qos: int = 1) -> list[float]:
    """Latencies (ms) of ``n`` raw echo round trips of a ``request_size``-byte payload."""
    r, echoer = echo_requester(url, request_size, qos=qos)
    try:
        r.timed(warmup)
        return r.timed(n)
    finally:
        r.close()
        echoer.close()


def concurrent_calls(url: str, server_id: str, server_name: str, tool: str, clients: int, duration: float,
                     warmup: int, *, qos: int = 1,
                     span: Callable[[], Any] = contextlib.nullcontext) -> tuple[list[float], float]:
    """``clients`` raw MCP requesters, each its own MQTT connection and network thread, calling
    ``tool`` back to back for ``duration`` s, all at once. Returns (latencies in ms, wall s).
    ``span()`` is a context manager entered around the timed part only (CPU accounting)."""
    rs: list[RawRequester] = []
    try:
        for _ in range(clients):
            rs.append(mcp_requester(url, server_id, server_name, tool, qos=qos))
        for r in rs:
            r.timed(warmup)
        with span():
            start = time.perf_counter()
            runs = [_Run(remaining=float("inf"), stop_at=start + duration) for _ in rs]
            for r, run in zip(rs, runs):
                r.start(run)
            for r, run in zip(rs, runs):
                r.finish(run, duration + 60)
            wall = time.perf_counter() - start
        return [x for run in runs for x in run.ms], wall
    finally:
        for r in rs:
            try:
                mcp_goodbye(r)
            except Exception:  # noqa: BLE001 - best effort at the end
                pass


def _calls_in_child(url: str, server_id: str, server_name: str, tool: str, clients: int, duration: float,
                    warmup: int, qos: int, barrier: Any, out: Any) -> None:
    """One child process of :func:`concurrent_calls_procs`: its share of the clients, timed
    from the barrier on; puts ``("ok", latencies ms, CPU s of the timed part)`` or ``("error", text)``."""
    rs: list[RawRequester] = []
    try:
        for _ in range(clients):
            rs.append(mcp_requester(url, server_id, server_name, tool, qos=qos))
        for r in rs:
            r.timed(warmup)
        barrier.wait(120)
        t0 = os.times()
        start = time.perf_counter()
        runs = [_Run(remaining=float("inf"), stop_at=start + duration) for _ in rs]
        for r, run in zip(rs, runs):
            r.start(run)
        for r, run in zip(rs, runs):
            r.finish(run, duration + 60)
        t1 = os.times()
        out.put(("ok", [x for run in runs for x in run.ms], t1.user + t1.system - t0.user - t0.system))
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        with contextlib.suppress(Exception):
            barrier.abort()
        out.put(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        for r in rs:
            with contextlib.suppress(Exception):
                mcp_goodbye(r)


def concurrent_calls_procs(url: str, server_id: str, server_name: str, tool: str, clients: int, duration: float,
                           warmup: int, procs: int, *, qos: int = 1,
                           span: Callable[[], Any] = contextlib.nullcontext) -> tuple[list[float], float, float]:
    """:func:`concurrent_calls` with the clients spread over ``procs`` child processes (each its
    own interpreter, so the clients do not share one GIL). Returns (latencies in ms, wall s, the
    children's CPU s in the timed part).

    Raises:
        RawError: a child failed (its message), or did not report within ``duration`` + 120 s.
    """
    import multiprocessing as mp
    import queue

    ctx = mp.get_context("spawn")  # this process has threads: no fork
    barrier = ctx.Barrier(procs + 1)
    out = ctx.Queue()
    shares = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    children = [ctx.Process(target=_calls_in_child, args=(url, server_id, server_name, tool, n, duration, warmup,
                                                          qos, barrier, out), daemon=True)
                for n in shares if n]
    for child in children:
        child.start()
    try:
        try:
            barrier.wait(120)
        except threading.BrokenBarrierError:
            pass  # a child failed: its message is in the queue
        ms: list[float] = []
        cpu = 0.0
        with span():
            start = time.perf_counter()
            for _ in children:
                try:
                    item = out.get(timeout=duration + 120)
                except queue.Empty:
                    raise RawError(f"a client process did not report within {duration + 120:g} s") from None
                if item[0] != "ok":
                    raise RawError(f"client process: {item[1]}")
                ms += item[1]
                cpu += item[2]
            wall = time.perf_counter() - start
        return ms, wall, cpu
    finally:
        for child in children:
            child.join(10)
            if child.is_alive():
                child.kill()


# ---------------------------------------------------------------------------------------------
# the minimal device
# ---------------------------------------------------------------------------------------------

MINIMAL_NAME = "bench/minimal-led"


def minimal_config(path: Path, url: str, server_id: str, state_dir: Path) -> Path:
    path.write_text(f"""# bench/rpc.py: the minimal device, one simulated LED
[device]
server_name = "{MINIMAL_NAME}"
server_id = "{server_id}"
description = "bench: one simulated LED"
simulate = true
state_dir = "{state_dir}"

[broker]
urls = ["{url}"]

[[drivers]]
kind = "led"
name = "led"
pin = 17
""")
    return path


@dataclass
class DeviceRun:
    online_s: float
    rss_mb: float
    hwm_mb: float


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RawError(f"no {key} in /proc/{pid}/status")


def bare_interpreter_rss_mb(python: str | None = None) -> float:
    """VmRSS (MB) of ``python`` (default: this one) doing nothing (``python -c``): the floor
    under every figure."""
    out = subprocess.run([python or sys.executable, "-c", "print(open('/proc/self/status').read())"],
                         capture_output=True, text=True, timeout=30).stdout
    for line in out.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def minimal_device(url: str, workdir: Path, idle: float, *, timeout: float = 30.0,
                   python: str | None = None) -> DeviceRun:
    """Start ``python -m edge_agent run --config <one LED, simulated>`` and time from just
    before the process is spawned to its retained ``notifications/server/online`` arriving at a
    raw watcher already subscribed to its presence topic; then let it idle ``idle`` s and read
    its VmRSS and VmHWM. The device is stopped (SIGTERM) before returning. ``python``: the
    interpreter that runs the device (default: this one), e.g. a venv made from Debian's
    ``/usr/bin/python3`` as on a Pi, with edge-agent-mcp[gpio] installed in it.

    Raises:
        RawError: it did not come online within ``timeout`` s (its log is in the message).
    """
    server_id = f"bench-min-{uuid.uuid4().hex[:8]}"
    workdir.mkdir(parents=True, exist_ok=True)
    config = minimal_config(workdir / "minimal.toml", url, server_id, workdir / "state")
    online = threading.Event()
    seen: list[float] = []
    watcher = _connect(url, f"bench-watch-{uuid.uuid4().hex[:8]}", component=None)

    def on_presence(client: Any, userdata: Any, m: Any) -> None:
        if m.payload and not seen:
            seen.append(time.monotonic())
            online.set()

    watcher.on_message = on_presence
    _subscribe(watcher, [(topics.server_presence(server_id, MINIMAL_NAME), SubscribeOptions(qos=1))])
    log_path = workdir / "minimal.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log_path, "wb") as log:
        t0 = time.monotonic()
        proc = subprocess.Popen([python or sys.executable, "-m", "edge_agent", "run", "--config", str(config),
                                 "--log-level", "warning"], stdout=subprocess.DEVNULL, stderr=log, env=env)
    try:
        deadline = t0 + timeout
        while not online.wait(0.05):
            if proc.poll() is not None or time.monotonic() > deadline:
                text = log_path.read_text(errors="replace")[-3000:]
                raise RawError(f"the minimal device did not come online (exit code {proc.poll()}); its log:\n{text}")
        online_s = seen[0] - t0
        time.sleep(idle)
        if proc.poll() is not None:
            raise RawError(f"the minimal device exited with code {proc.returncode} while idle")
        return DeviceRun(online_s, _status_kb(proc.pid, "VmRSS") / 1024, _status_kb(proc.pid, "VmHWM") / 1024)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        watcher.disconnect()
        watcher.loop_stop()
