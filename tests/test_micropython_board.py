"""The MicroPython subset as a board runs it, under a real MicroPython interpreter: the official
WebAssembly port (npm @micropython/micropython-webassembly-pyscript 1.27, pinned in
micropython/host/package-lock.json) in Node, with micropython/host/board.mjs handing it TCP
streams. A real Mosquitto; the official ``mcp`` client over our MQTT transport
(``edge_agent.cloud.connect``) discovers the board and drives it; raw paho where the wire is
the subject.

``Board`` (the harness) is shared with tests/test_mpboard.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import anyio
import paho.mqtt.client as mqtt
import pytest
from mcp import MCPError
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_agent.cloud import connect, discover

ROOT = Path(__file__).resolve().parents[1]
HOST = ROOT / "micropython" / "host"
WASM = HOST / "node_modules" / "@micropython" / "micropython-webassembly-pyscript" / "micropython.mjs"
EXAMPLE = ROOT / "micropython" / "examples" / "main.py"
NAME = "devices/test/esp32-01"
SID = "esp32-test-01"

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


def node_binary() -> str:
    """Node, with the MicroPython WebAssembly port installed; skip without Node (as the
    other Node-based tests do), fail when Node is there but ``make setup`` was not run."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the MicroPython interpreter tests need Node >= 18")
    if not WASM.exists():
        pytest.fail(f"{WASM.relative_to(ROOT)} is missing: run `make setup` (npm ci in micropython/host)")
    return node


class Board:
    """A board's main.py running under the MicroPython WebAssembly port in Node.

    ``site``: the text of its site_config.py. ``serial_fd``: an fd (a pty master) passed to
    the process as the board's serial line (``hostio.serial()``). Output goes to ``log``.
    """

    def __init__(self, workdir: Path, site: str, *, main: Path = EXAMPLE, serial_fd: int | None = None,
                 label: str = "board", extra: tuple[str, ...] = ()):
        self.site_path = workdir / f"{label}_site_config.py"
        self.site_path.write_text(site)
        self.log_path = workdir / f"{label}.log"
        self.main = main
        self.serial_fd = serial_fd
        self.extra = list(extra)  # more board.mjs arguments (--world FILE, --put SRC=DEST)
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Board":
        args = [node_binary(), str(HOST / "board.mjs"), "--main", str(self.main), "--site", str(self.site_path),
                *self.extra]
        fds: tuple[int, ...] = ()
        if self.serial_fd is not None:
            args += ["--serial-fd", str(self.serial_fd)]
            fds = (self.serial_fd,)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, pass_fds=fds, cwd=HOST)
        return self

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, text: str, timeout: float = 10.0, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log.count(text) >= count:
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"the board exited ({self.proc.returncode}):\n{self.log}")
            time.sleep(0.02)
        raise AssertionError(f"{text!r} not in the board's output within {timeout} s:\n{self.log}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def __enter__(self) -> "Board":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop(signal.SIGKILL)


def mqtt_site(broker, name: str = NAME, sid: str = SID, **extra) -> str:
    config = {"broker": "127.0.0.1", "port": broker.port, "server_name": name, "server_id": sid, **extra}
    return f"config = {json.dumps(config)}\n"


@pytest.fixture
def board(broker, tmp_path):
    with Board(tmp_path, mqtt_site(broker)) as b:
        b.wait_log(f"online as {NAME}")
        yield b


def text_of(result) -> str:
    return " ".join(getattr(c, "text", "") for c in result.content)


class RawClient:
    """A bare MCP client on paho: records what arrives on its RPC topic (No Local)."""

    def __init__(self, broker, cid: str = "raw-client-1", sid: str = SID, name: str = NAME):
        self.cid, self.rpc, self.control = cid, f"$mcp-rpc/{cid}/{sid}/{name}", f"$mcp-server/{sid}/{name}"
        self.messages: list[mqtt.MQTTMessage] = []
        self.lock = threading.Lock()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
        self.c.on_message = lambda c, u, msg: self._got(msg)
        done = threading.Event()
        self.c.on_subscribe = lambda *a: done.set()
        self.c.connect("127.0.0.1", broker.port)
        self.c.loop_start()
        self.c.subscribe([(self.rpc, SubscribeOptions(qos=1, noLocal=True)),
                          (f"$mcp-server/presence/{sid}/{name}", SubscribeOptions(qos=1))])
        assert done.wait(5)
        self.props = Properties(PacketTypes.PUBLISH)
        self.props.UserProperty = [("MCP-COMPONENT-TYPE", "mcp-client"), ("MCP-MQTT-CLIENT-ID", cid)]

    def _got(self, msg):
        with self.lock:
            self.messages.append(msg)

    def send(self, topic: str, payload, *, props: bool = True) -> None:
        data = payload if isinstance(payload, (bytes, str)) else json.dumps(payload)
        self.c.publish(topic, data, qos=1, properties=self.props if props else None).wait_for_publish(5)

    def answer(self, msg_id, timeout: float = 10.0) -> dict:
        """The response to request ``msg_id`` on the RPC topic."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for m in self.messages:
                    if m.topic != self.rpc or not m.payload:
                        continue
                    data = json.loads(m.payload)
                    if data.get("id") == msg_id and ("result" in data or "error" in data):
                        self.messages.remove(m)
                        return data
            time.sleep(0.02)
        raise AssertionError(f"no answer to {msg_id!r}; got {[(m.topic, m.payload[:100]) for m in self.messages]}")

    def initialize(self, msg_id="init") -> dict:
        self.send(self.control, {"jsonrpc": "2.0", "id": msg_id, "method": "initialize", "params": {
            "protocolVersion": "2024-11-05", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}})
        reply = self.answer(msg_id)
        self.send(self.rpc, {"jsonrpc": "2.0", "method": "notifications/initialized"})
        return reply

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


# --------------------------------------------------------------------------- tests


async def test_presence_retained_with_spec_fields_and_empty_will(broker, board):
    online = await discover(broker.url, NAME, timeout=0.5)
    assert [(p.server_id, p.server_name) for p in online] == [(SID, NAME)]
    assert online[0].description == "Greenhouse 3 vent and soil node"
    # max_packet: a longer request is dropped by the broker unanswered (docs/esp32.md "Big messages")
    assert online[0].meta == {"version": "0.1.0", "implementation": "edgemcp", "max_packet": 2048}
    raw = RawClient(broker, "raw-presence")
    try:
        deadline = time.monotonic() + 5
        while not any(m.retain for m in raw.messages):
            assert time.monotonic() < deadline, "no retained presence"
            await anyio.sleep(0.02)
        presence = next(m for m in raw.messages if m.retain)
        assert dict(presence.properties.UserProperty) == {"MCP-COMPONENT-TYPE": "mcp-server", "MCP-MQTT-CLIENT-ID": SID}
        board.stop(signal.SIGKILL)  # power cut: the broker publishes the empty retained will
        deadline = time.monotonic() + 10
        while not any(m.payload == b"" for m in raw.messages):
            assert time.monotonic() < deadline, "no empty will after the board died"
            await anyio.sleep(0.05)
    finally:
        raw.close()
    assert await discover(broker.url, NAME, timeout=0.3) == []


async def test_cloud_client_discovers_initializes_and_drives_the_board(broker, board):
    updates: list[str] = []

    async def on_message(message):
        root = getattr(message, "root", message)
        if getattr(root, "method", "") == "notifications/resources/updated":
            updates.append(str(root.params.uri))

    async with connect(broker.url, NAME, message_handler=on_message) as session:
        init = session.initialize_result
        assert init.server_info.name == "edgemcp" and init.server_info.version == "0.1.0"
        assert init.protocol_version == "2025-11-25"
        assert init.capabilities.resources.subscribe is True

        tools = {t.name: t for t in (await session.list_tools()).tools}
        assert {"vent_set_angle", "fan_set", "pump_set", "status_led_set", "status_led_blink"} <= set(tools)
        angle = tools["vent_set_angle"].input_schema["properties"]["angle"]
        assert (angle["type"], angle["minimum"], angle["maximum"]) == ("number", -90, 90)
        assert "°" in angle["description"]
        assert tools["vent_set_angle"].annotations.destructive_hint is True
        assert tools["status_led_blink"].input_schema["properties"]["times"]["default"] == 3

        moved = await session.call_tool("vent_set_angle", {"angle": 30})
        assert not moved.is_error and moved.structured_content == {"angle": 30}
        too_far = await session.call_tool("vent_set_angle", {"angle": 500})
        assert too_far.is_error and "500" in text_of(too_far) and "maximum 90" in text_of(too_far)
        wrong = await session.call_tool("vent_set_angle", {"angle": "left"})
        assert wrong.is_error and "must be a number" in text_of(wrong)
        missing = await session.call_tool("vent_set_angle", {})
        assert missing.is_error and "missing required argument angle" in text_of(missing)
        extra = await session.call_tool("pump_set", {"on": True, "speed": 3})
        assert extra.is_error and 'unknown argument "speed"' in text_of(extra)
        blink = await session.call_tool("status_led_blink", {"times": 2, "period": 0.05})
        assert blink.structured_content == {"blinked": 2}
        with pytest.raises(MCPError) as err:
            await session.call_tool("no_such_tool", {})
        assert err.value.error.code == -32602

        resources = {str(r.uri): r for r in (await session.list_resources()).resources}
        assert {"sensor://vent/angle", "sensor://soil_temp/value", "device://health"} <= set(resources)
        soil = json.loads((await session.read_resource("sensor://soil_temp/value")).contents[0].text)
        assert soil["unit"] == "°C" and isinstance(soil["value"], float) and 20 <= soil["value"] <= 30
        assert soil["timestamp"].endswith("Z")
        with pytest.raises(MCPError) as err:
            await session.read_resource("sensor://nope/none")
        assert err.value.error.code == -32002

        await session.subscribe_resource("sensor://vent/angle")
        await session.call_tool("vent_set_angle", {"angle": -45})
        with anyio.fail_after(5):
            while "sensor://vent/angle" not in updates:
                await anyio.sleep(0.02)
        angle_now = json.loads((await session.read_resource("sensor://vent/angle")).contents[0].text)
        assert angle_now["value"] == -45 and angle_now["unit"] == "°"
        health = json.loads((await session.read_resource("device://health")).contents[0].text)["value"]
        assert health["status"] == "ok" and health["sessions"] == 1
        assert health["mqtt"]["connected"] is True and health["mqtt"]["drops"] == 0
        assert health["mem_alloc"] > 0
        await session.send_ping()


async def test_json_rpc_errors_and_client_lifecycle_on_the_wire(broker, board):
    raw = RawClient(broker)
    try:
        raw.send(raw.control, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        err = raw.answer(1)["error"]
        assert err["code"] == -32600 and "initialize" in err["message"]
        assert raw.initialize()["result"]["protocolVersion"] == "2024-11-05"
        raw.send(raw.rpc, b"{this is not json")
        parse = raw.answer(None)
        assert parse["error"]["code"] == -32700
        raw.send(raw.rpc, {"jsonrpc": "2.0", "id": 3, "method": "no/such"})
        assert raw.answer(3)["error"]["code"] == -32601
        raw.send(raw.rpc, {"jsonrpc": "1.0", "id": 4, "method": "ping"})
        assert raw.answer(4)["error"]["code"] == -32600
        raw.send(raw.rpc, {"jsonrpc": "2.0", "id": "str-5", "method": "ping"})
        assert raw.answer("str-5")["result"] == {}
        raw.send(raw.rpc, {"jsonrpc": "2.0", "id": 6, "method": "resources/subscribe", "params": {"uri": "x://y"}})
        assert raw.answer(6)["error"]["code"] == -32002
        raw.send(raw.rpc, {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "pump_set",
                                                                                         "arguments": []}})
        assert raw.answer(7)["error"]["code"] == -32602
        # a control message without MCP-MQTT-CLIENT-ID cannot be answered: dropped, not fatal
        raw.send(raw.control, b'{"jsonrpc":"2.0","id":9,"method":"initialize"}', props=False)
        # the client leaves (empty presence = its will): the board drops the session
        raw.send(f"$mcp-client/presence/{raw.cid}", b"")
        await anyio.sleep(0.3)
        raw.send(raw.rpc, {"jsonrpc": "2.0", "id": 8, "method": "ping"})
        # its session is gone: the board (subscribed to every client's RPC topic at once) says so
        gone = raw.answer(8)["error"]
        assert gone["code"] == -32600 and "initialize" in gone["message"]
    finally:
        raw.close()
    async with connect(broker.url, NAME) as session:  # and it keeps serving
        await session.send_ping()


FAILING_MAIN = '''
import asyncio
from edgemcp import Device

app = Device(server_name="devices/test/esp32-02", description="handlers that fail")
state = {"reads": 0}


@app.tool("explode", "Always fails")
def explode():
    raise RuntimeError("sensor bus stuck")


@app.tool("reject", "Rejects its input", params={"text": ("string", 1, 8, "", "a short word")})
def reject(text):
    raise ValueError("no thanks: " + text)


@app.tool("slow_echo", "Async echo", params={"n": ("integer", 0, 100)})
async def slow_echo(n):
    await asyncio.sleep_ms(20)
    return n


def flaky():
    state["reads"] += 1
    if state["reads"] > 1:
        raise OSError(5)
    return 21.5


app.resource("sensor://probe/t", "probe", "°C", flaky, poll=0)
app.run()
'''


async def test_failing_handlers_are_errors_and_never_stop_the_board(broker, tmp_path):
    main = tmp_path / "main.py"
    main.write_text(FAILING_MAIN)
    with Board(tmp_path, mqtt_site(broker, "devices/test/esp32-02", "esp32-test-02"), main=main) as b:
        b.wait_log("online as devices/test/esp32-02")
        async with connect(broker.url, "devices/test/esp32-02") as session:
            boom = await session.call_tool("explode", {})
            assert boom.is_error and "explode failed: RuntimeError: sensor bus stuck" in text_of(boom)
            no = await session.call_tool("reject", {"text": "hi"})
            assert no.is_error and "no thanks: hi" in text_of(no)
            long = await session.call_tool("reject", {"text": "much too long"})
            assert long.is_error and "above the maximum 8 characters" in text_of(long)
            echoed = await session.call_tool("slow_echo", {"n": 7.0})  # 7.0 is an integer in JSON Schema
            assert not echoed.is_error and text_of(echoed) == "7"
            first = json.loads((await session.read_resource("sensor://probe/t")).contents[0].text)
            assert first["value"] == 21.5 and "stale" not in first
            stale = json.loads((await session.read_resource("sensor://probe/t")).contents[0].text)
            assert stale["value"] == 21.5 and stale["stale"] is True and "OSError" in stale["error"]
            await session.send_ping()


async def test_board_reconnects_after_the_broker_restarts(broker, tmp_path):
    with Board(tmp_path, mqtt_site(broker)) as b:
        b.wait_log(f"online as {NAME}")
        broker.stop()
        b.wait_log("mqtt: ", timeout=5)  # the lost link is noticed (EOF) and retried with backoff
        broker.start()
        b.wait_log(f"online as {NAME}", count=2, timeout=15)
        async with connect(broker.url, NAME) as session:
            assert not (await session.call_tool("pump_set", {"on": True})).is_error


async def test_clean_stop_tells_clients_and_clears_presence(broker, board):
    raw = RawClient(broker, "raw-stop")
    try:
        raw.initialize()
        assert board.stop(signal.SIGTERM) == 0
        deadline = time.monotonic() + 5
        while True:
            with raw.lock:
                got = [(m.topic, m.payload) for m in raw.messages]
            if (raw.rpc, b'{"jsonrpc":"2.0","method":"notifications/disconnected"}') in got and \
                    any(t.startswith("$mcp-server/presence/") and p == b"" for t, p in got):
                break
            assert time.monotonic() < deadline, got
            await anyio.sleep(0.05)
    finally:
        raw.close()
    assert await discover(broker.url, NAME, timeout=0.3) == []


def test_harness_passes_fds_only_when_asked(tmp_path):
    b = Board(tmp_path, "config = {}\n")
    assert b.serial_fd is None and os.path.exists(b.site_path)
