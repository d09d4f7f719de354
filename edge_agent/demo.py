"""The demo: a simulated greenhouse device, and a walk-through a cloud client does against it.

``edge-agent demo`` starts a local Mosquitto on a free port (unless ``--broker`` is given),
runs ``edge-agent run --demo`` as a child process, then, as a cloud-side MCP client (the
official SDK over our MQTT transport): discovers the device, lists its tools, reads a sensor
with its unit, switches an actuator and reads it back. Exit 0 when every step worked.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from importlib import resources
from typing import Any

from edge_agent.device import config as cfg


def demo_config(*, state_dir: str | None = None, broker_url: str | None = None) -> cfg.Config:
    """The built-in demo config (``demo.toml`` + ``demo_drivers.toml``), simulated hardware."""
    pkg = resources.files("edge_agent.device")
    data = tomllib.loads(pkg.joinpath("demo.toml").read_text())
    data["drivers"] = tomllib.loads(pkg.joinpath("demo_drivers.toml").read_text()).get("drivers", [])
    data["device"]["state_dir"] = state_dir or tempfile.mkdtemp(prefix="edge-agent-demo-")
    if broker_url:
        data["broker"]["urls"] = [broker_url]
    return cfg.from_dict(data, path="<demo>")


def add_demo_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the simulated device and a cloud client against it (exits 0 on success)")
    p.add_argument("--broker", help="use this broker instead of starting a local Mosquitto")
    p.add_argument("--keep-running", action="store_true", help="leave the device running until Ctrl-C")
    p.set_defaults(func=cmd_demo)


def _step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def cmd_demo(args: argparse.Namespace) -> int:
    from edge_agent.testing.broker import LocalBroker

    broker = None
    url = args.broker
    if url is None:
        broker = LocalBroker().start()
        url = broker.url
        _step(f"started a local Mosquitto at {url}")
    agent = subprocess.Popen([sys.executable, "-m", "edge_agent", "run", "--demo", "--broker", url,
                              "--log-level", "warning"], env=os.environ.copy())
    try:
        code = asyncio.run(walkthrough(url))
        if args.keep_running and code == 0:
            print("\nthe device keeps running; try: edge-agent tools devices/greenhouse/gh3-pi "
                  f"--broker {url}   (Ctrl-C to stop)")
            agent.wait()
        return code
    except KeyboardInterrupt:
        return 0
    finally:
        agent.terminate()
        try:
            agent.wait(10)
        except subprocess.TimeoutExpired:
            agent.kill()
        if broker is not None:
            broker.close()


async def walkthrough(url: str, server_name: str = "devices/greenhouse/gh3-pi", timeout: float = 30.0) -> int:
    """The cloud side of the demo. Returns 0 if every step did what it should, else 1."""
    from edge_agent.cloud import connect, discover

    _step(f"discovering MCP servers on {url}")
    deadline = time.monotonic() + timeout
    servers: list[Any] = []
    while time.monotonic() < deadline:
        servers = [s for s in await discover(url, timeout=1.0) if s.server_name == server_name]
        if servers:
            break
    if not servers:
        print(f"FAILED: {server_name} did not come online within {timeout:.0f} s", file=sys.stderr)
        return 1
    for s in servers:
        print(f"  {s.server_name}  (server-id {s.server_id})  {s.description}")

    async with connect(url, server_name) as session:
        init = session.initialize_result
        if init is not None:
            print(f"  initialized: protocol {init.protocol_version}, server {init.server_info.name} {init.server_info.version}")
        _step("tools")
        tools = (await session.list_tools()).tools
        for t in tools:
            print(f"  {t.name:<26} {(t.description or '').splitlines()[0][:90] if t.description else ''}")

        _step("reading a sensor: sensor://soil_temp/temperature")
        reading = _reading(await session.read_resource("sensor://soil_temp/temperature"))
        print(f"  soil temperature = {reading['value']} {reading['unit']}  ({reading['timestamp']})")
        if reading.get("unit") != "°C" or not isinstance(reading.get("value"), (int, float)):
            print("FAILED: expected a number in °C", file=sys.stderr)
            return 1

        _step("switching an actuator: pump_relay_on, then reading sensor://pump_relay/state back")
        result = await session.call_tool("pump_relay_on", {})
        print(f"  pump_relay_on -> {_tool_text(result)}")
        state = _reading(await session.read_resource("sensor://pump_relay/state"))
        print(f"  pump relay state = {state['value']}")
        result = await session.call_tool("pump_relay_off", {})
        print(f"  pump_relay_off -> {_tool_text(result)}")
        state_off = _reading(await session.read_resource("sensor://pump_relay/state"))
        print(f"  pump relay state = {state_off['value']}")
        if result.is_error or state["value"] is not True or state_off["value"] is not False:
            print("FAILED: the relay did not switch", file=sys.stderr)
            return 1

        _step("a bad argument is refused clearly: vent_servo_set_angle angle=500")
        bad = await session.call_tool("vent_servo_set_angle", {"angle": 500})
        print(f"  isError={bad.is_error}: {_tool_text(bad)}")
        if not bad.is_error:
            print("FAILED: an out-of-range angle was accepted", file=sys.stderr)
            return 1

    _step("demo OK")
    return 0


def _reading(result: Any) -> dict[str, Any]:
    return json.loads(result.contents[0].text)


def _tool_text(result: Any) -> str:
    return " ".join(getattr(c, "text", "") for c in result.content)[:200]
