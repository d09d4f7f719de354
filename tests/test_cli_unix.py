"""``edge-agent`` behaves like a Unix tool (issue 10, item 6).

Real parts only: a real Mosquitto, the real agent as a child process, the CLI as a child
process where the terminal or the pipe matters (real ptys, real pipes), and the wire-level
server peer of ``test_cloud_transport`` taught to misbehave (a server without
``resources.subscribe``, malformed results, control characters in what it sends).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent import cli as top_cli
from edge_agent.client.cli import main
from edge_agent.mqtt.broker_url import parse_broker_url
from edge_agent.termio import progress_line, safe, safe_json

from .agent_process import AgentProcess, RawSubscriber, write_config
from .test_cloud_transport import SERVER_NAME, WirePeer

FAST = ["--discovery-timeout", "2"]
TEMPERATURE_URI = "sensor://greenhouse/temperature"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def cli(*argv: str) -> list[str]:
    return [sys.executable, "-m", "edge_agent", *argv]


# --------------------------------------------------------------------------------------------
# A wire peer that misbehaves on request
# --------------------------------------------------------------------------------------------

@dataclass
class OddPeer(WirePeer):
    """:class:`WirePeer` with other ``initialize`` capabilities and per-method answers
    (a value, or a callable of the params); everything else as the wire peer does it."""

    capabilities: dict[str, Any] = field(default_factory=lambda: {"tools": {}, "resources": {}, "prompts": {}})
    answers: dict[str, Any] = field(default_factory=dict)

    def _publish(self, topic: str, message: Any, *, retain: bool = False):
        result = message.get("result") if isinstance(message, dict) else None
        if isinstance(result, dict) and "capabilities" in result and "serverInfo" in result:
            message = {**message, "result": {**result, "capabilities": self.capabilities}}
        return super()._publish(topic, message, retain=retain)

    def _answer(self, method: str, params: dict) -> dict | None:
        if method in self.answers:
            answer = self.answers[method]
            return answer(params) if callable(answer) else answer
        return super()._answer(method, params)

    def methods(self) -> list[str]:
        return [r.json.get("method") for r in self.received if r.json and "method" in r.json]


@pytest.fixture
def peer(broker):
    p = WirePeer(broker.url, updates_on_subscribe=2).start()
    yield p
    p.stop()


def _raw_publisher(broker_url: str) -> mqtt.Client:
    url = parse_broker_url(broker_url)
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"raw-pub-{time.monotonic_ns()}", protocol=mqtt.MQTTv5)
    c.connect(url.host, url.port)
    c.loop_start()
    return c


def publish_presences(broker_url: str, presences: list[tuple[str, str, str]]) -> None:
    """Publish retained online presences ``(server_id, server_name, description)`` and wait for each PUBACK."""
    c = _raw_publisher(broker_url)
    try:
        infos = [c.publish(f"$mcp-server/presence/{sid}/{name}", json.dumps(
            {"jsonrpc": "2.0", "method": "notifications/server/online",
             "params": {"server_name": name, "description": desc}}), qos=1, retain=True)
            for sid, name, desc in presences]
        for info in infos:
            info.wait_for_publish(10)
    finally:
        c.loop_stop()
        c.disconnect()


# --------------------------------------------------------------------------------------------
# --help
# --------------------------------------------------------------------------------------------

def _subparsers(parser: argparse.ArgumentParser) -> list[argparse._SubParsersAction]:
    return [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]


def test_every_command_and_every_argument_has_help():
    parser = top_cli.build_parser()
    missing: list[str] = []
    commands = 0

    def walk(p: argparse.ArgumentParser, path: str) -> None:
        nonlocal commands
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                helped = {a.dest for a in action._choices_actions if a.help and a.help != argparse.SUPPRESS}
                for name, sub in action.choices.items():
                    commands += 1
                    if name not in helped:
                        missing.append(f"command {path} {name}")
                    walk(sub, f"{path} {name}")
            elif not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{path}: {'/'.join(action.option_strings) or action.dest}")

    walk(parser, "edge-agent")
    assert commands >= 12  # run check acl devices tools call read watch resources prompts gateway demo
    assert missing == []


@pytest.mark.parametrize("command", ["devices", "call", "watch", "read", "gateway", "run"])
def test_command_help_describes_every_argument(command):
    done = subprocess.run(cli(command, "--help"), capture_output=True, text=True, timeout=30, check=False)
    assert (done.returncode, done.stderr) == (0, "")
    sub = next(a for a in _subparsers(top_cli.build_parser())).choices[command]
    shown = re.sub(r"-\s+", "-", " ".join(done.stdout.split()))  # argparse wraps after a hyphen
    for action in sub._actions:
        assert re.sub(r"-\s+", "-", " ".join(action.help.split())) in shown


# --------------------------------------------------------------------------------------------
# A closed pipe
# --------------------------------------------------------------------------------------------

def _with_closed_stdout(argv: list[str]) -> subprocess.CompletedProcess:
    """Run ``argv`` with stdout a pipe whose reader is already gone: the first write fails with EPIPE."""
    r, w = os.pipe()
    os.close(r)
    try:
        return subprocess.run(argv, stdout=w, stderr=subprocess.PIPE, text=True, timeout=60, check=False)
    finally:
        os.close(w)


def test_closed_pipe_is_a_quiet_exit_141(broker, peer):
    for argv in (cli("devices", "--broker", broker.url),
                 cli("read", SERVER_NAME, TEMPERATURE_URI, "--broker", broker.url, *FAST),
                 cli("check", "--demo")):  # a device-side command: the flush at exit
        done = _with_closed_stdout(argv)
        assert (done.returncode, done.stderr) == (141, ""), argv


def test_devices_piped_into_head(broker):
    """The issue's own case: ``edge-agent devices | head -1`` with more output than a pipe holds."""
    publish_presences(broker.url, [(f"s{i}", f"devices/site/pi-{i:04d}", "x" * 200) for i in range(1500)])
    done = subprocess.run(["bash", "-c", 'set -o pipefail; "$@" | head -1; echo "status ${PIPESTATUS[0]}" >&2',
                           "bash", *cli("devices", "--broker", broker.url)], capture_output=True, text=True, timeout=60, check=False)
    assert done.stdout.startswith("SERVER-NAME") and done.stdout.count("\n") == 1
    assert done.stderr == "status 141\n"


# --------------------------------------------------------------------------------------------
# devices: as soon as the retained presences are in; exit 1 on no match
# --------------------------------------------------------------------------------------------

def test_devices_returns_when_the_retained_presences_are_in(broker, capsys):
    names = [f"devices/farm/pi-{i:03d}" for i in range(400)]
    publish_presences(broker.url, [(f"id-{i}", n, f"barn {i}") for i, n in enumerate(names)])
    t0 = time.monotonic()
    code, out, err = run(capsys, "devices", "--broker", broker.url, "--timeout", "30", "--json")
    elapsed = time.monotonic() - t0
    assert (code, err) == (0, "")
    assert [d["server_name"] for d in json.loads(out)] == names  # every one of them, sorted
    assert elapsed < 3, f"devices waited {elapsed:.1f} s of its 30 s cap"

    t0 = time.monotonic()
    code, out, err = run(capsys, "devices", "devices/barn/#", "--broker", broker.url, "--timeout", "30")
    assert (code, out) == (1, "") and time.monotonic() - t0 < 3
    assert err == f"edge-agent devices: no MCP servers matching devices/barn/# online at {broker.url}\n"


@contextlib.contextmanager
def acl_broker(tmp_path: Path, rules: str):
    """Mosquitto with passwords (``USER-pw`` for dev1, ops, limited) and the ACL ``rules``; the
    device ``dev1`` has published its retained presence (server-id ``acl-1``)."""
    from edge_agent.testing.broker import LocalBroker

    passwords = tmp_path / "passwords"
    passwords.write_text("")
    for user in ("dev1", "ops", "limited"):
        subprocess.run(["mosquitto_passwd", "-b", str(passwords), user, f"{user}-pw"], check=True, capture_output=True)
    (tmp_path / "acl").write_text(rules)
    with LocalBroker(allow_anonymous=False, workdir=tmp_path / "broker",
                     extra_conf=f"password_file {passwords}\nacl_file {tmp_path / 'acl'}\n") as b:
        url = parse_broker_url(b.url)
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="acl-1", protocol=mqtt.MQTTv5)
        c.username_pw_set("dev1", "dev1-pw")
        c.connect(url.host, url.port)
        c.loop_start()
        c.publish("$mcp-server/presence/acl-1/devices/acl/pi", json.dumps(
            {"jsonrpc": "2.0", "method": "notifications/server/online", "params": {"server_name": "devices/acl/pi"}}),
            qos=1, retain=True).wait_for_publish(10)
        c.loop_stop()
        c.disconnect()
        yield b.url.removeprefix("mqtt://")


def test_devices_under_the_generated_acl(tmp_path, capsys):
    """The end-of-retained marker lives on the client's own RPC topics, which ``edge-agent acl`` allows."""
    from edge_agent import acl

    fleet = acl.fleet_from_dict({"devices": [{"username": "dev1", "server_id": "acl-1", "server_name": "devices/acl/pi"}],
                                 "clients": [{"username": "ops", "server_name_filters": ["devices/#"]}]})
    with acl_broker(tmp_path, acl.mosquitto_acl(fleet)) as host:
        t0 = time.monotonic()
        code, out, err = run(capsys, "devices", "--broker", f"mqtt://ops:ops-pw@{host}", "--timeout", "30", "--json")
        assert (code, err) == (0, "") and [d["server_id"] for d in json.loads(out)] == ["acl-1"]
        assert time.monotonic() - t0 < 3


def test_devices_where_the_marker_is_refused_waits_for_the_cap(tmp_path, capsys):
    """A user who may read presences and nothing else still gets the list, after ``--timeout``."""
    rules = ("user dev1\ntopic write $mcp-server/presence/#\n\n"
             "user limited\ntopic read $mcp-server/presence/#\n")
    with acl_broker(tmp_path, rules) as host:
        t0 = time.monotonic()
        code, out, err = run(capsys, "devices", "--broker", f"mqtt://limited:limited-pw@{host}", "--timeout", "1.5",
                             "--json")
        assert (code, err) == (0, "") and [d["server_id"] for d in json.loads(out)] == ["acl-1"]
        assert 1.4 < time.monotonic() - t0 < 5


# --------------------------------------------------------------------------------------------
# read --json is the reading, as watch --json prints it
# --------------------------------------------------------------------------------------------

def test_read_json_prints_the_reading_like_watch(broker, peer, capsys):
    code, out, _ = run(capsys, "read", SERVER_NAME, TEMPERATURE_URI, "--json", "--broker", broker.url, *FAST)
    assert code == 0 and out.count("\n") == 1
    reading = json.loads(out)
    assert reading == {"uri": TEMPERATURE_URI, "value": 21.4, "unit": "°C", "timestamp": "2025-08-01T12:00:00Z"}
    code, watched, _ = run(capsys, "watch", SERVER_NAME, TEMPERATURE_URI, "--json", "--count", "1",
                           "--timeout", "10", "--broker", broker.url, *FAST)
    assert code == 0 and watched.splitlines()[0] == out.rstrip("\n")
    code, out, _ = run(capsys, "read", SERVER_NAME, "text://motd", "--json", "--broker", broker.url, *FAST)
    assert (code, json.loads(out)) == (0, {"uri": "text://motd", "text": "hello from the greenhouse"})


# --------------------------------------------------------------------------------------------
# watch on a server without resources.subscribe polls
# --------------------------------------------------------------------------------------------

def test_watch_polls_a_server_without_resources_subscribe(broker, capsys):
    reads = [0]

    def read(params: dict) -> dict:  # a new value every second read
        reads[0] += 1
        value = {"value": reads[0] // 2, "unit": "°C"}
        return {"contents": [{"uri": params["uri"], "mimeType": "application/json", "text": json.dumps(value)}]}

    p = OddPeer(broker.url, capabilities={"resources": {}}, answers={"resources/read": read}).start()
    try:
        t0 = time.monotonic()
        code, out, err = run(capsys, "watch", SERVER_NAME, TEMPERATURE_URI, "--count", "3", "--interval", "0.1",
                             "--timeout", "20", "--broker", broker.url, *FAST)
        assert (code, err) == (0, "")
        assert out.splitlines() == ["0 °C", "1 °C", "2 °C", "3 °C"]  # unchanged reads are not printed
        assert reads[0] == 6 and time.monotonic() - t0 < 10  # 0, 1, 1, 2, 2, 3
        assert "resources/subscribe" not in p.methods() and "resources/unsubscribe" not in p.methods()
    finally:
        p.stop()


def test_watch_subscribes_when_the_server_offers_it(broker, capsys):
    p = OddPeer(broker.url, capabilities={"resources": {"subscribe": True}}, updates_on_subscribe=1).start()
    try:
        code, out, _ = run(capsys, "watch", SERVER_NAME, TEMPERATURE_URI, "--count", "1", "--timeout", "10",
                           "--broker", broker.url, *FAST)
        assert (code, out) == (0, "21.4 °C\n21.4 °C\n")
        assert "resources/subscribe" in p.methods()
    finally:
        p.stop()


# --------------------------------------------------------------------------------------------
# A peer's malformed result: exit 1 naming the server
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, method, garbage", [
    (["call", SERVER_NAME, "set_led", "on=1"], "tools/call", {"content": "not a list", "isError": "maybe"}),
    (["tools", SERVER_NAME], "tools/list", {"tools": [{"name": 42}]}),
    (["read", SERVER_NAME, TEMPERATURE_URI], "resources/read", {"contents": [{"text": 1}]}),
])
def test_malformed_result_is_exit_1_naming_the_server(broker, capsys, argv, method, garbage):
    p = OddPeer(broker.url, answers={method: garbage}).start()
    try:
        code, out, err = run(capsys, *argv, "--broker", broker.url, *FAST)
        assert method in p.methods()
    finally:
        p.stop()
    assert (code, out) == (1, "")
    assert err.startswith(f"edge-agent {argv[0]}: malformed answer from {SERVER_NAME}: ")
    assert err.count("\n") == 1 and "pydantic" not in err and "Traceback" not in err


# --------------------------------------------------------------------------------------------
# Control characters from the network are escaped
# --------------------------------------------------------------------------------------------

EVIL = "\x1b]0;pwned\x07\x1b[2J\x9b31m\u202eevil\r"


def test_safe_escapes_controls_and_keeps_unicode():
    assert safe(EVIL) == "\\x1b]0;pwned\\x07\\x1b[2J\\x9b31m\\u202eevil\\x0d"
    assert safe("21.4 °C\n\tnext", multiline=True) == "21.4 °C\n\tnext"
    assert safe("a\nb") == "a\\x0ab"
    text = json.dumps({"d": EVIL}, ensure_ascii=False)
    assert json.loads(safe_json(text)) == {"d": EVIL} and "\x9b" not in safe_json(text)
    line = progress_line("sweep\x1b[2J", 3, 10, "30°\x1b[K", width=80)
    assert line == "sweep\\x1b[2J [######..............]  30% 3/10 30°\\x1b[K"


def _no_controls(text: str) -> None:
    bad = [c for c in text if (ord(c) < 32 and c not in "\n") or 0x7f <= ord(c) <= 0x9f or c == "\u202e"]
    assert bad == [], f"control characters reached the terminal: {bad!r}"


def test_network_text_is_escaped_before_the_terminal(broker, capsys):
    tool = {"name": "led" + EVIL, "description": "blinks\n" + EVIL,
            "inputSchema": {"type": "object", "properties": {"x" + EVIL: {"type": "string", "description": EVIL}}}}
    p = OddPeer(broker.url, description="greenhouse" + EVIL, answers={
        "tools/list": {"tools": [tool]},
        "tools/call": {"content": [{"type": "text", "text": "done\n" + EVIL}]},
        "resources/read": lambda params: {"contents": [{"uri": params["uri"], "text": "line 1\n" + EVIL}]},
        "resources/list": {"resources": [{"uri": "x://a", "name": "n" + EVIL, "description": EVIL}]},
    }).start()
    # Mosquitto refuses C0/C1 controls in topic names (MQTT-1.5.4-1 "SHOULD NOT"), not a bidi override
    publish_presences(broker.url, [("evil-1", "devices/ev\u202eil/x", EVIL)])
    try:
        for argv in (["devices"], ["tools", SERVER_NAME], ["call", SERVER_NAME, tool["name"]],
                     ["read", SERVER_NAME, TEMPERATURE_URI], ["resources", SERVER_NAME]):
            code, out, err = run(capsys, *argv, "--broker", broker.url, *([] if argv == ["devices"] else FAST))
            assert code == 0, (argv, err)
            _no_controls(out + err)
            assert "\\x1b]0;pwned\\x07" in out, argv
        code, out, _ = run(capsys, "devices", "--broker", broker.url)
        assert "devices/ev\\u202eil/x" in out and len(out.splitlines()) == 3  # no forged rows
        code, out, _ = run(capsys, "read", SERVER_NAME, TEMPERATURE_URI, "--broker", broker.url, *FAST)
        assert out.startswith("line 1\n")  # newlines of multi-line text stay
        code, out, _ = run(capsys, "tools", SERVER_NAME, "--json", "--broker", broker.url, *FAST)
        _no_controls(out)
        assert json.loads(out)[0]["name"] == tool["name"]  # --json: exact, as JSON escapes
    finally:
        p.stop()


# --------------------------------------------------------------------------------------------
# Progress on a terminal, and Ctrl-C, against the real agent
# --------------------------------------------------------------------------------------------

NAME, SID = "devices/bench/pi-9", "bench-pi-9"
DRIVERS = """
[[drivers]]
kind = "led"
name = "status_led"
pin = 27

[[drivers]]
kind = "servo"
name = "vent_servo"
pin = 18
"""


@pytest.fixture
def agent(broker, tmp_path: Path):
    cfg = write_config(tmp_path / "agent.toml", server_name=NAME, server_id=SID, drivers=DRIVERS)
    proc = AgentProcess(cfg, broker.url, SID, NAME).start()
    yield proc
    proc.stop()


class PtyStderr:
    """A child process whose stderr is a real terminal (the slave of a pty); stdout is a pipe."""

    def __init__(self, argv: list[str]):
        master, slave = os.openpty()
        self.master, self.text = master, b""
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL)
        os.close(slave)
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if not ready:
                if self.proc.poll() is not None and not select.select([self.master], [], [], 0.2)[0]:
                    return
                continue
            try:
                chunk = os.read(self.master, 4096)
            except OSError:  # EIO: the child closed its end
                return
            if not chunk:
                return
            with self._lock:
                self.text += chunk

    def wait_for(self, needle: bytes, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if needle in self.text:
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} not on the terminal; got {self.text!r}")

    def finish(self, timeout: float = 30.0) -> tuple[int, str, str]:
        out = self.proc.stdout.read().decode()  # type: ignore[union-attr]
        code = self.proc.wait(timeout)
        self._reader.join(5)
        os.close(self.master)
        return code, out, self.text.decode(errors="replace")


def test_long_call_shows_progress_on_a_terminal_only(broker, agent):
    argv = cli("call", NAME, "status_led_blink", "times=3", "on_time=0.1", "off_time=0.1", "--broker", broker.url)
    term = PtyStderr(argv)
    code, out, err = term.finish()
    assert code == 0, err
    assert json.loads(out)["blinks"] == 3 or '"blinks": 3' in out
    assert "status_led_blink [" in err and "3/3" in err and "blink 3/3" in err
    assert err.endswith("\r\x1b[K")  # the line is erased before the result

    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)  # stderr not a terminal
    assert (done.returncode, done.stderr) == (0, "")


def test_ctrl_c_cancels_the_call_and_says_so(broker, agent):
    wire = RawSubscriber(broker.url, [f"$mcp-rpc/+/{SID}/{NAME}"])
    try:
        term = PtyStderr(cli("call", NAME, "vent_servo_sweep", "from=-90", "to=90", "step_deg=1", "dwell=0.2",
                             "--broker", broker.url))
        term.wait_for(b"/180")  # the sweep is under way: its progress line is on the terminal
        term.proc.send_signal(signal.SIGINT)
        code, out, err = term.finish()
        assert (code, out) == (130, "")
        # the progress line is erased first; the tty turns \n into \r\n (ONLCR)
        assert err.endswith(f"\r\x1b[Kedge-agent call: cancelled vent_servo_sweep on {NAME}\r\n"), err
        assert "Traceback" not in err
        call = wire.wait_for(lambda m: m.payload and json.loads(m.payload).get("method") == "tools/call")
        cancelled = wire.wait_for(
            lambda m: m.payload and json.loads(m.payload).get("method") == "notifications/cancelled", 5)
        assert json.loads(cancelled.payload)["params"]["requestId"] == json.loads(call.payload)["id"]
    finally:
        wire.close()
    t0 = time.monotonic()  # the agent stopped the sweep: the servo answers at once
    done = subprocess.run(cli("call", NAME, "vent_servo_set_angle", "angle=0", "--broker", broker.url),
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - t0 < 10
