"""MCP tasks (2025-11-25 basic/utilities/tasks) against the real agent process: a 20 s pump run
started as a task ends on time while the broker is down and across an agent SIGKILL + restart,
its result is there when a client comes back, cancel switches the relay off at once, and a
job whose end passed while the agent was dead is stopped at restart and fails.

The relay pin is seen through the simulated backend's pin log (``EDGE_AGENT_SIM_PIN_LOG``:
one line per change of an output pin, with its Unix time), written by whichever agent process
owns the pin at that moment, so the test sees the pin of a process it killed."""

from __future__ import annotations

import signal
import time
from datetime import datetime
from pathlib import Path

import pytest

from edge_agent.drivers.gpio import PIN_LOG_ENV

from .agent_process import AgentProcess, RawSubscriber, write_config
from .raw_client import RawMcpClient

NAME = "devices/field/pump-1"
SID = "field-pump-1"
PIN = "GPIO17"
DRIVERS = """
[[drivers]]
kind = "relay"
name = "pump_relay"
pin = 17

[link]
reconnect_min = 0.1
reconnect_max = 0.5
"""


def transitions(log: Path) -> list[tuple[float, float]]:
    """(Unix time, value) of each change of the relay pin, in order."""
    if not log.exists():
        return []
    out = []
    for line in log.read_text().splitlines():
        at, pin, value = line.split()
        if pin == PIN:
            out.append((float(at), float(value)))
    return out


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def unix(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


@pytest.fixture
def pin_log(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "pins.log"
    monkeypatch.setenv(PIN_LOG_ENV, str(path))
    return path


def online(broker) -> None:
    """Wait for the agent's retained presence (it reconnected and listens on its control topic)."""
    watcher = RawSubscriber(broker.url, [f"$mcp-server/presence/{SID}/{NAME}"])
    try:
        watcher.wait_for(lambda m: b"notifications/server/online" in m.payload, 15)
    finally:
        watcher.close()


def client(broker, cid: str) -> RawMcpClient:
    c = RawMcpClient(broker.url, cid, SID, NAME)
    c.initialize()
    return c


def test_pump_task_ends_on_time_through_broker_outage_and_agent_sigkill(broker, tmp_path, pin_log):
    agent = AgentProcess(write_config(tmp_path / "agent.toml", server_name=NAME, server_id=SID, drivers=DRIVERS),
                         broker.url, SID, NAME).start()
    c = None
    try:
        c = client(broker, "cloud-tasks-1")
        init = c.request("tools/list")["result"]["tools"]
        run = next(t for t in init if t["name"] == "pump_relay_run")
        assert run["execution"] == {"taskSupport": "optional"}
        created = c.request("tools/call", {"name": "pump_relay_run", "arguments": {"seconds": 20},
                                           "task": {"ttl": 120000}})["result"]
        task = created["task"]
        task_id, t0 = task["taskId"], unix(task["createdAt"])
        assert task["status"] == "working" and task["ttl"] >= 120000
        wait_until(lambda: transitions(pin_log), 5, "the relay to switch on")
        assert transitions(pin_log)[0][1] == 1.0
        c.close(goodbye=False)
        c = None

        broker.kill()  # the link is gone ...
        time.sleep(1.5)
        agent.signal(signal.SIGKILL)  # ... and then the agent dies too, the pump on
        agent.wait()
        killed_at = time.time()
        broker.start()
        agent.start()  # same state dir: the task is in SQLite; the restarted agent resumes the run
        ons = wait_until(lambda: [t for t in transitions(pin_log) if t[0] > killed_at and t[1] == 1.0], 5,
                         "the restarted agent to switch the relay on again")
        assert ons[0][0] < t0 + 20
        c = client(broker, "cloud-tasks-2")
        got = c.request("tasks/get", {"taskId": task_id})["result"]
        assert got["status"] == "working", got
        c.close(goodbye=False)
        c = None
        broker.kill()  # the run ends while the broker is down
        down_at = time.time()
        wait_until(lambda: time.time() > t0 + 21, 25, "the end of the run")
        broker.start()
        back_at = time.time()
        online(broker)

        offs = [t for t in transitions(pin_log) if t[1] == 0.0]
        assert offs, f"the relay never switched off; pins: {transitions(pin_log)}"
        off_at = offs[-1][0]
        assert down_at < off_at < back_at, "the relay must switch off while the broker is down"
        assert abs(off_at - (t0 + 20)) <= 0.5, f"relay off {off_at - t0:.3f} s after the task started, not 20 ± 0.5 s"
        assert transitions(pin_log)[-1][1] == 0.0

        c = client(broker, "cloud-tasks-3")  # the client comes back: the result is there
        wait_until(lambda: c.request("tasks/get", {"taskId": task_id})["result"]["status"] != "working", 10,
                   "the task to end")
        got = c.request("tasks/get", {"taskId": task_id})["result"]
        assert got["status"] == "completed", got
        result = c.request("tasks/result", {"taskId": task_id})["result"]
        assert result["isError"] is False
        assert result["structuredContent"]["state"] is False and not result["structuredContent"]["cancelled"]
        assert result["_meta"]["io.modelcontextprotocol/related-task"] == {"taskId": task_id}
        listed = c.request("tasks/list")["result"]["tasks"]
        assert any(t["taskId"] == task_id and t["status"] == "completed" for t in listed)
        print(f"\npump task: relay off {off_at - t0:.3f} s after the start (20 s asked), through a broker outage "
              f"and an agent SIGKILL + restart")

        # cancel reaches the hardware: the relay is off before the answer arrives
        task2 = c.request("tools/call", {"name": "pump_relay_run", "arguments": {"seconds": 30},
                                         "task": {}})["result"]["task"]["taskId"]
        wait_until(lambda: transitions(pin_log)[-1][1] == 1.0, 5, "the second run to switch on")
        asked = time.time()
        cancelled = c.request("tasks/cancel", {"taskId": task2})["result"]
        answered = time.time()
        assert cancelled["status"] == "cancelled"
        last = transitions(pin_log)[-1]
        assert last[1] == 0.0 and asked <= last[0] <= answered, (asked, last, answered)
        again = c.request("tasks/cancel", {"taskId": task2})
        assert again["error"]["code"] == -32602  # already terminal
        assert c.request("tasks/get", {"taskId": task2})["result"]["status"] == "cancelled"
        assert c.request("tasks/get", {"taskId": "no-such-task"})["error"]["code"] == -32602
        print(f"cancel: relay off {last[0] - asked:.3f} s after tasks/cancel was sent")
    finally:
        if c is not None:
            c.close()
        agent.stop()


def test_job_whose_end_passed_while_the_agent_was_dead_is_stopped_at_restart(broker, tmp_path, pin_log):
    agent = AgentProcess(write_config(tmp_path / "agent.toml", server_name=NAME, server_id=SID, drivers=DRIVERS),
                         broker.url, SID, NAME).start()
    c = None
    try:
        c = client(broker, "cloud-tasks-4")
        task_id = c.request("tools/call", {"name": "pump_relay_run", "arguments": {"seconds": 2},
                                           "task": {}})["result"]["task"]["taskId"]
        wait_until(lambda: transitions(pin_log), 5, "the relay to switch on")
        agent.signal(signal.SIGKILL)
        agent.wait()
        time.sleep(2.5)  # its end passes while the agent is dead
        agent.start()
        c.initialize()  # the restarted agent does not keep sessions (no persist_sessions): the task is not bound to one
        got = c.request("tasks/get", {"taskId": task_id})["result"]
        assert got["status"] == "failed", got
        assert "safe state at restart" in got["statusMessage"], got
        result = c.request("tasks/result", {"taskId": task_id})["result"]
        assert result["isError"] is True
        state = c.request("resources/read", {"uri": "sensor://pump_relay/state"})["result"]["contents"][0]["text"]
        assert '"value": false' in state
    finally:
        if c is not None:
            c.close()
        agent.stop()
