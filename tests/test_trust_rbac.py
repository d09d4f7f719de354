"""Issue 13 item 6, against a real Mosquitto and the real agent: resource globs match resource
URIs only (never a template instantiation through its query), ``prompts/get`` checks the
resources the prompt embeds, and an operator's wrongly typed or subnormal argument is an input
error (``isError``) that leaves the driver ``ok`` for everyone."""

from __future__ import annotations

import json

import pytest
from mcp import MCPError

from edge_agent.cloud import connect
from edge_agent.device import config as cfg
from edge_agent.device.runtime import Agent
from edge_agent.server.inputs import normalise
from edge_agent.server.rbac import Role

NAME = "devices/rbac/pi-1"

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


def _config(tmp_path):
    return cfg.from_dict({
        "device": {"server_name": NAME, "server_id": "rbac-pi-1", "simulate": True, "state_dir": str(tmp_path / "s")},
        "link": {"reconnect_min": 0.1, "reconnect_max": 0.3},
        "drivers": [{"kind": "led", "name": "status_led", "pin": 17},
                    {"kind": "servo", "name": "vent_servo", "pin": 12},
                    {"kind": "system", "name": "system"}],
        "rbac": {"default_role": "viewer",
                 "roles": [{"name": "temps", "allowed_methods": ["resources/read", "resources/list", "prompts/get",
                                                                 "prompts/list"],
                            "allowed_resources": ["sensor://*/cpu_temperature"]}],
                 "rules": [{"client_id": "ops-*", "role": "operator"}, {"client_id": "temps-*", "role": "temps"}]},
    })


def test_uri_globs_stay_in_their_segment():
    role = Role("r", allowed_resources=("sensor://*/temperature", "sensor://pump/**"))
    assert role.allows_resource("sensor://soil/temperature")
    assert not role.allows_resource("sensor://soil/x/history?q=/temperature")  # the hole of issue 13
    assert not role.allows_resource("sensor://soil/x/temperature")
    assert role.allows_resource("sensor://pump/state/history?limit=3")
    assert not role.allows_resource("sensor://pumpx/state")


def test_normalise_arguments():
    schema = {"type": "object", "properties": {"times": {"type": "integer"}, "step": {"type": "number"},
                                               "xs": {"type": "array", "items": {"type": "integer"}}}}
    out = normalise(schema, {"times": 3.0, "step": 0.5, "xs": [1.0, 2]})
    assert out == {"times": 3, "step": 0.5, "xs": [1, 2]} and type(out["times"]) is int and type(out["xs"][0]) is int
    args = {"times": 3, "step": 0.5}
    assert normalise(schema, args) is args
    with pytest.raises(ValueError, match="step: 5e-324 is too small"):
        normalise(schema, {"step": 4.9e-324})


async def test_rbac_holes_closed_and_input_errors_are_not_faults(broker, tmp_path):
    agent = Agent(_config(tmp_path), broker_url=broker.url)
    await agent.start(connect_timeout=10)
    try:
        cpu = next(u for u in agent.channels if u.endswith("/cpu_temperature"))
        other = next(u for u in agent.channels if not u.endswith("/cpu_temperature"))
        async with connect(broker.url, NAME, client_id="temps-1") as temps:
            assert json.loads((await temps.read_resource(cpu)).contents[0].text)["value"] is not None
            # the history template, with a query that ends like an allowed URI: refused
            for uri in (f"{other}/history?limit=1&x=/cpu_temperature", f"{other}?/cpu_temperature"):
                with pytest.raises(MCPError, match="Forbidden"):
                    await temps.read_resource(uri)
            # prompts embed readings: refused when they embed what the role may not read
            with pytest.raises(MCPError, match="Forbidden.*prompt device_health_report"):
                await temps.get_prompt("device_health_report", {})
            with pytest.raises(MCPError, match="Forbidden.*prompt sensor_trend"):
                await temps.get_prompt("sensor_trend", {"sensor": other})
        async with connect(broker.url, NAME, client_id="viewer-1") as viewer:  # all resources: prompts fine
            assert (await viewer.get_prompt("sensor_trend", {"sensor": cpu})).messages
        async with connect(broker.url, NAME, client_id="ops-1") as ops:
            bad = await ops.call_tool("status_led_blink", {"times": 1.0, "on_time": 0.05, "off_time": 0.05})
            assert not bad.is_error, bad.content  # 1.0 is an integer (JSON Schema): run as 1
            sweep = await ops.call_tool("vent_servo_sweep", {"from": -90, "to": 90, "step_deg": 4.9e-324})
            assert sweep.is_error and "too small" in sweep.content[0].text
            health = json.loads((await ops.read_resource("device://health")).contents[0].text)
            assert health["drivers"]["status_led"]["status"] == "ok"
            assert health["drivers"]["vent_servo"]["status"] == "ok", health["drivers"]["vent_servo"]
            assert health["status"] == "ok"
    finally:
        await agent.stop()
