"""The cloud-side commands (devices, tools, call, read, watch, resources, prompts).

Run in-process through ``edge_agent.client.cli.main`` against a real Mosquitto and the
wire-level server peer of ``test_cloud_transport`` (not the real agent).
"""

from __future__ import annotations

import json
import threading

import pytest

from edge_agent.client.cli import (
    BadToolArguments,
    convert_value,
    describe_tool,
    format_reading,
    main,
    parse_tool_arguments,
)
from edge_agent.testing.broker import free_port

from .test_cloud_transport import SERVER_NAME, TOOLS, WirePeer

SET_LED = TOOLS[0]
FAST = ["--discovery-timeout", "1"]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def peer(broker):
    p = WirePeer(broker.url, updates_on_subscribe=2).start()
    yield p
    p.stop()


# --------------------------------------------------------------------------------------------
# key=value typing (pure)
# --------------------------------------------------------------------------------------------

def test_values_are_typed_by_the_input_schema():
    args = parse_tool_arguments("set_led", SET_LED["inputSchema"],
                                ["on=off", "brightness=0.25", "blinks=3", "pattern=[1, 2, 3]", "label=a=b c"])
    assert args == {"on": False, "brightness": 0.25, "blinks": 3, "pattern": [1, 2, 3], "label": "a=b c"}
    for raw, value in [("true", True), ("ON", True), ("1", True), ("yes", True), ("false", False), ("0", False)]:
        assert convert_value("on", raw, {"type": "boolean"}) is value
    assert convert_value("x", "1", {"type": "number"}) == 1 and convert_value("x", "-2.5e1", {"type": "number"}) == -25.0
    assert convert_value("x", "null", {"type": ["integer", "null"]}) is None
    assert convert_value("x", '{"a": 1}', {}) == {"a": 1} and convert_value("x", "plain", {}) == "plain"


@pytest.mark.parametrize("pairs, message", [
    (["on=maybe"], "bad value for on: 'maybe' is not true/false (or on/off, 1/0)"),
    (["on=true", "blinks=2.5"], "bad value for blinks: '2.5' is not an integer"),
    (["on=true", "brightness=1.5"], "bad value for brightness: 1.5 is greater than the maximum of 1"),
    (["on=true", "brightness=nan"], "bad value for brightness: 'nan' is not a finite number"),
    (["on=true", "pattern=1,2"], "bad value for pattern: '1,2' is not a JSON array (e.g. [1, 2])"),
    (["brightness=0.5"], "tool set_led: missing required parameter on"),
    (["on=true", "colour=red"],
     "unknown parameter 'colour' for tool set_led (parameters: on, brightness, blinks, pattern, label)"),
    (["on"], "argument 'on' is not key=value"),
    (["on=1", "on=0"], "parameter on given twice"),
])
def test_bad_arguments_give_one_clear_line(pairs, message):
    with pytest.raises(BadToolArguments) as info:
        parse_tool_arguments("set_led", SET_LED["inputSchema"], pairs)
    assert str(info.value) == message


def test_tool_description_shows_types_ranges_units_and_required():
    lines = describe_tool(SET_LED)
    assert lines[0] == "set_led — Switch the status LED"
    assert "    on: boolean, required — LED on or off" in lines
    assert "    brightness: number 0..1 duty — PWM duty cycle" in lines
    assert "    blinks: integer 0..10" in lines
    assert "    pattern: array of integer" in lines


def test_reading_format():
    assert format_reading('{"value": 21.4, "unit": "°C", "timestamp": "t"}') == "21.4 °C"
    assert format_reading('{"value": true, "unit": ""}') == "true"
    assert format_reading('{"value": null, "unit": "°"}') == "null"
    assert format_reading("hello") == "hello"
    assert format_reading('{"a": 1}') == '{\n  "a": 1\n}'


# --------------------------------------------------------------------------------------------
# Commands against a broker
# --------------------------------------------------------------------------------------------

def test_devices_table_and_json(broker, peer, capsys):
    code, out, _ = run(capsys, "devices", "--broker", broker.url, "--timeout", "0.3")
    assert code == 0
    assert out.splitlines() == ["SERVER-NAME               SERVER-ID  DESCRIPTION",
                                "devices/greenhouse/pi-01  peer-1     wire-level test peer"]
    code, out, err = run(capsys, "devices", "devices/barn/#", "--broker", broker.url, "--timeout", "0.2", "--json")
    assert code == 1 and json.loads(out) == []  # like grep: nothing matched is exit 1
    assert err == f"edge-agent devices: no MCP servers matching devices/barn/# online at {broker.url}\n"
    code, out, err = run(capsys, "devices", "devices/barn/#", "--broker", broker.url)
    assert (code, out) == (1, "") and "no MCP servers matching devices/barn/#" in err


def test_devices_uses_the_environment_broker(broker, peer, capsys, monkeypatch):
    monkeypatch.setenv("EDGE_AGENT_BROKER", broker.url)
    code, out, _ = run(capsys, "devices", "--timeout", "0.3", "--json")
    assert code == 0 and [d["server_id"] for d in json.loads(out)] == ["peer-1"]


def test_tools_lists_parameters(broker, peer, capsys):
    code, out, _ = run(capsys, "tools", SERVER_NAME, "--broker", broker.url, *FAST)
    assert code == 0
    assert "set_led — Switch the status LED\n    on: boolean, required — LED on or off\n" in out
    assert "hang — Never answers\n    (no parameters)" in out


def test_call_prints_text_and_sends_typed_arguments(broker, peer, capsys):
    code, out, err = run(capsys, "call", SERVER_NAME, "set_led", "on=on", "brightness=0.5", "--broker", broker.url, *FAST)
    assert (code, err) == (0, "")
    assert out == 'set_led {"brightness": 0.5, "on": true}\n'
    call = peer.wait_for(lambda r: r.json and r.json.get("method") == "tools/call")
    assert call.json["params"]["arguments"] == {"on": True, "brightness": 0.5}

    code, out, _ = run(capsys, "call", SERVER_NAME, "set_led", "on=0", "--json", "--broker", broker.url, *FAST)
    assert code == 0 and json.loads(out)["structuredContent"] == {"on": False}


def test_call_tool_error_exits_1(broker, peer, capsys):
    code, out, err = run(capsys, "call", SERVER_NAME, "fail", "--broker", broker.url, *FAST)
    assert (code, out) == (1, "")
    assert err == "the LED driver is not responding\n"


def test_call_with_a_bad_value_exits_2_before_calling(broker, peer, capsys):
    code, out, err = run(capsys, "call", SERVER_NAME, "set_led", "on=true", "brightness=2", "--broker", broker.url, *FAST)
    assert (code, out) == (2, "")
    assert err == "edge-agent call: bad value for brightness: 2 is greater than the maximum of 1\n"
    code, _, err = run(capsys, "call", SERVER_NAME, "dance", "--broker", broker.url, *FAST)
    assert code == 2 and err == f"edge-agent call: unknown tool 'dance' on {SERVER_NAME} (tools: set_led, fail, hang)\n"
    assert not any(r.json and r.json.get("method") == "tools/call" for r in peer.received)


def test_read_prints_value_and_unit(broker, peer, capsys):
    code, out, _ = run(capsys, "read", SERVER_NAME, "sensor://greenhouse/temperature", "--broker", broker.url, *FAST)
    assert (code, out) == (0, "21.4 °C\n")
    code, out, _ = run(capsys, "read", SERVER_NAME, "text://motd", "--broker", broker.url, *FAST)
    assert (code, out) == (0, "hello from the greenhouse\n")


def test_watch_prints_the_value_now_and_on_each_update(broker, peer, capsys):
    code, out, _ = run(capsys, "watch", SERVER_NAME, "sensor://greenhouse/temperature", "--count", "2",
                       "--timeout", "10", "--broker", broker.url, *FAST)
    assert (code, out) == (0, "21.4 °C\n21.4 °C\n21.4 °C\n")
    code, out, _ = run(capsys, "watch", SERVER_NAME, "sensor://greenhouse/temperature", "--count", "1", "--json",
                       "--broker", broker.url, *FAST)
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and lines[0] == {"uri": "sensor://greenhouse/temperature", **json.loads(
        '{"value": 21.4, "unit": "°C", "timestamp": "2025-08-01T12:00:00Z"}')} and len(lines) == 2


def test_watch_exits_1_at_once_when_the_server_goes_offline(broker, capsys):
    quiet = WirePeer(broker.url).start()  # sends no updates
    try:
        result: dict[str, int] = {}
        argv = ["watch", SERVER_NAME, "sensor://greenhouse/temperature", "--broker", broker.url, *FAST]
        thread = threading.Thread(target=lambda: result.update(code=main(argv)))
        thread.start()
        quiet.wait_for(lambda r: r.json and r.json.get("method") == "resources/subscribe")
        quiet.go_offline()
        thread.join(5)
        assert result == {"code": 1}
        out, err = capsys.readouterr()
        assert out == "21.4 °C\n"
        assert err == f"edge-agent watch: server {SERVER_NAME} (peer-1) went offline\n"
    finally:
        quiet.stop()


def test_resources_and_prompts(broker, peer, capsys):
    code, out, _ = run(capsys, "resources", SERVER_NAME, "--broker", broker.url, *FAST)
    assert code == 0
    assert out.splitlines()[:2] == ["sensor://greenhouse/temperature  (temperature, application/json)",
                                    "text://motd  (motd, text/plain)"]
    code, out, _ = run(capsys, "prompts", SERVER_NAME, "--broker", broker.url, *FAST)
    assert (code, out) == (0, "diagnose — Diagnose the greenhouse\n    zone (required)\n")


def test_unreachable_broker_is_one_line_and_exit_1(capsys):
    url = f"mqtt://127.0.0.1:{free_port()}"
    code, out, err = run(capsys, "tools", SERVER_NAME, "--broker", url)
    assert (code, out) == (1, "")
    assert err == f"edge-agent tools: cannot reach broker {url}: Connection refused\n"


def test_server_not_found_lists_known_server_names(broker, peer, capsys):
    code, _, err = run(capsys, "read", "devices/nowhere/x", "sensor://a", "--broker", broker.url,
                       "--discovery-timeout", "0.2")
    assert code == 1
    assert err.startswith("edge-agent read: no MCP server named 'devices/nowhere/x' is online at broker "
                          f"{broker.url}")
    assert err.endswith(f"; online server-names: {SERVER_NAME}\n")


def test_bad_server_name_is_a_usage_error(broker, capsys):
    code, _, err = run(capsys, "tools", "flat-name", "--broker", broker.url)
    assert code == 2 and "must be hierarchical" in err
