"""MCP tasks from the command line (``edge-agent call --task``, ``edge-agent task get|result|
cancel|list``) and through the gateway, against an agent on a real Mosquitto; protocol rules of
the tasks utility (MCP 2025-11-25 basic/utilities/tasks) checked on the way."""

from __future__ import annotations

import json
import sys
from typing import Any

import anyio
import pytest
from mcp import MCPError

from edge_agent.client import tasks
from edge_agent.cloud import connect
from edge_agent.device import config as cfg
from edge_agent.device.runtime import Agent

from .test_gateway_inprocess import client, gateway

pytestmark = pytest.mark.anyio

NAME, SID = "devices/lab/pump-2", "lab-pump-2"
GW = "devices.lab.pump-2__"


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
async def agent(broker, tmp_path):
    config = cfg.from_dict({
        "device": {"server_name": NAME, "server_id": SID, "simulate": True, "state_dir": str(tmp_path / "state")},
        "drivers": [{"kind": "relay", "name": "pump_relay", "pin": 17},
                    {"kind": "led", "name": "status_led", "pin": 27},
                    {"kind": "servo", "name": "vent_servo", "pin": 12}]})
    a = Agent(config, broker_url=broker.url)
    await a.start()
    yield a
    await a.stop()


def relay_on(agent: Agent) -> bool:
    return bool(agent.context.gpio_factory().pin(17).state)


async def cli(broker, *argv: str) -> tuple[int, str, str]:
    done = await anyio.run_process([sys.executable, "-m", "edge_agent", *argv, "--broker", broker.url], check=False)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def test_cli_call_task_then_get_result_list_cancel(broker, agent):
    code, out, err = await cli(broker, "call", NAME, "pump_relay_run", "seconds=1.5", "--task")
    assert code == 0, err
    task_id = out.strip()
    assert len(task_id) == 32 and "task get" in err
    assert relay_on(agent)
    code, out, err = await cli(broker, "task", "get", NAME, task_id, "--json")
    assert code == 0, err
    assert json.loads(out)["status"] in ("working", "completed")
    code, out, err = await cli(broker, "task", "result", NAME, task_id)  # waits for the end
    assert code == 0, err
    assert json.loads(out)["ran_s"] >= 1.5 and not relay_on(agent)
    code, out, err = await cli(broker, "task", "list", NAME)
    assert code == 0 and task_id in out and "completed" in out, (out, err)

    code, out, err = await cli(broker, "call", NAME, "pump_relay_run", "seconds=60", "--task")
    second = out.strip()
    assert code == 0 and relay_on(agent), err
    code, out, err = await cli(broker, "task", "cancel", NAME, second)
    assert code == 0 and "cancelled" in out, (out, err)
    assert not relay_on(agent)  # off before the answer left the device
    code, out, err = await cli(broker, "task", "cancel", NAME, second)
    assert code == 1 and "terminal" in err, err

    code, out, err = await cli(broker, "call", NAME, "pump_relay_on", "--task")
    assert code == 2 and "does not run as a task" in err, err


async def test_protocol_rules_over_the_official_client(broker, agent):
    async with connect(broker.url, NAME) as session:
        caps = session.initialize_result.capabilities
        assert caps.tasks is not None and caps.tasks.requests.tools.call is not None and caps.tasks.cancel is not None
        listed = {t.name: t for t in (await session.list_tools()).tools}
        assert listed["pump_relay_run"].execution.task_support == "optional"
        assert listed["vent_servo_sweep"].execution.task_support == "optional"
        assert listed["status_led_blink"].execution.task_support == "optional"
        assert listed["pump_relay_on"].execution is None
        with pytest.raises(MCPError) as exc:  # taskSupport forbidden: -32601
            await tasks.call_tool_as_task(session, "pump_relay_on", {})
        assert exc.value.error.code == -32601
        # the servo sweep as a task; cancel detaches the servo at once
        task = await tasks.call_tool_as_task(session, "vent_servo_sweep",
                                             {"from": -90, "to": 90, "step_deg": 5, "dwell": 0.5}, ttl_ms=1000)
        assert task["status"] == "working" and task["ttl"] >= 600_000  # at least the job + 10 minutes
        with anyio.fail_after(5):
            while agent.drivers["vent_servo"].driver.servo.angle is None:
                await anyio.sleep(0.02)
        cancelled = await tasks.cancel(session, task["taskId"])
        assert cancelled["status"] == "cancelled"
        assert agent.drivers["vent_servo"].driver.servo.angle is None  # detached: no pulses
        result = await tasks.result(session, task["taskId"])
        assert result["_meta"]["io.modelcontextprotocol/related-task"] == {"taskId": task["taskId"]}
        # a later command to the same hardware supersedes a running job: off now, not after 60 s
        run = await tasks.call_tool_as_task(session, "pump_relay_run", {"seconds": 60})
        with anyio.fail_after(5):
            while not relay_on(agent):
                await anyio.sleep(0.02)
        with anyio.fail_after(3):
            off = await session.call_tool("pump_relay_off", {})
        assert off.structured_content == {"state": False} and not relay_on(agent)
        got = await tasks.get(session, run["taskId"])
        assert got["status"] == "cancelled" and "pump_relay_off" in got["statusMessage"], got
        # a plain call of a job tool still works (taskSupport optional)
        plain = await session.call_tool("status_led_blink", {"times": 1, "on_time": 0.05, "off_time": 0.05})
        assert not plain.is_error and plain.structured_content["blinks"] == 1
        # arguments the schema refuses: answered as a plain call would be, no task
        with pytest.raises(tasks.NotStarted, match="step_deg"):
            await tasks.call_tool_as_task(session, "vent_servo_sweep", {"from": -90, "to": 90, "step_deg": 400})
        # a job whose hardware fails: the task ends failed, tasks/result returns the tool's isError result
        agent.drivers["vent_servo"].driver.servo.close()
        bad = await tasks.call_tool_as_task(session, "vent_servo_sweep", {"from": -90, "to": 90})
        with anyio.fail_after(5):
            while (await tasks.get(session, bad["taskId"]))["status"] == "working":
                await anyio.sleep(0.05)
        got = await tasks.get(session, bad["taskId"])
        assert got["status"] == "failed" and got["statusMessage"]
        assert (await tasks.result(session, bad["taskId"]))["isError"] is True


async def test_tasks_through_the_gateway(broker, agent):
    async with gateway(broker.url) as gw, client(gw) as session:
        assert session.initialize_result.capabilities.tasks is not None
        with anyio.fail_after(10):
            while GW + "pump_relay_run" not in {t.name for t in (await session.list_tools()).tools}:
                await anyio.sleep(0.1)
        tools: dict[str, Any] = {t.name: t for t in (await session.list_tools()).tools}
        assert tools[GW + "pump_relay_run"].execution.task_support == "optional"
        task = await tasks.call_tool_as_task(session, GW + "pump_relay_run", {"seconds": 1})
        assert task["status"] == "working" and relay_on(agent)
        got = await tasks.get(session, task["taskId"])
        assert got["taskId"] == task["taskId"]
        listed = await tasks.list_all(session)
        assert task["taskId"] in {t["taskId"] for t in listed}
        result = await tasks.result(session, task["taskId"])
        assert result["structuredContent"]["state"] is False and not relay_on(agent)
        assert result["_meta"]["io.modelcontextprotocol/related-task"] == {"taskId": task["taskId"]}
        second = await tasks.call_tool_as_task(session, GW + "pump_relay_run", {"seconds": 60})
        assert relay_on(agent)
        assert (await tasks.cancel(session, second["taskId"]))["status"] == "cancelled"
        assert not relay_on(agent)
        with pytest.raises(MCPError) as exc:
            await tasks.get(session, "not-a-gateway-task")
        assert exc.value.error.code == -32602
        plain = await session.call_tool(GW + "pump_relay_on", {})  # plain calls unchanged
        assert not plain.is_error and relay_on(agent)
