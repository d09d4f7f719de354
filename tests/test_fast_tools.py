"""Tools and sensors a driver declares ``fast`` (drivers/base.py ``ToolSpec.fast``,
``SensorSpec.fast``) run on the event loop thread, still one call at a time per driver; the
others run in worker threads; the sensor refresh after a call is one read per fast sensor and
at most one pending refresh task per threaded sensor. No broker: the agent is built, not
started (``Agent._build``), and its tool handlers are called as the MCP server calls them."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from edge_agent import drivers
from edge_agent.device import config as cfg
from edge_agent.device.runtime import Agent
from edge_agent.drivers.base import Driver, SensorSpec, ToolSpec, no_arguments
from edge_agent.server.registry import ToolContext

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


class Probe(Driver):
    """Records the thread of every call; ``slow`` blocks until ``release`` is set."""

    kind = "test_fast_probe"
    options_schema = {"type": "object"}
    release: threading.Event
    entered: threading.Event
    instance: Probe

    def __init__(self, name: str, options: Any, *, context: Any):
        super().__init__(name, options, context=context)
        self.threads: dict[str, list[int]] = {"fast": [], "slow": [], "fast_read": [], "slow_read": []}
        self.order: list[str] = []
        self.level = 0
        Probe.instance = self

    def _fast(self) -> dict[str, Any]:
        self.threads["fast"].append(threading.get_ident())
        self.order.append("fast")
        self.level += 1
        return {"level": self.level}

    def _slow(self) -> dict[str, Any]:
        self.threads["slow"].append(threading.get_ident())
        self.order.append("slow start")
        Probe.entered.set()
        assert Probe.release.wait(10)
        self.order.append("slow end")
        return {"level": self.level}

    def _read_fast(self) -> int:
        self.threads["fast_read"].append(threading.get_ident())
        return self.level

    def _read_slow(self) -> int:
        self.threads["slow_read"].append(threading.get_ident())
        return self.level

    def tools(self) -> list[ToolSpec]:
        return [ToolSpec("fast", "fast", no_arguments(), self._fast, fast=True),
                ToolSpec("slow", "slow", no_arguments(), self._slow)]

    def sensors(self) -> list[SensorSpec]:
        return [SensorSpec("fast_level", "level", self._read_fast, poll_interval=None, fast=True),
                SensorSpec("slow_level", "level", self._read_slow, poll_interval=None)]


@pytest.fixture
async def agent(tmp_path: Path):
    drivers.DRIVER_KINDS[Probe.kind] = f"{__name__}:Probe"
    Probe.release, Probe.entered = threading.Event(), threading.Event()
    config = cfg.from_dict({
        "device": {"server_name": "devices/test/fast", "server_id": "fast-1", "simulate": True,
                   "state_dir": str(tmp_path / "state")},
        "drivers": [{"kind": Probe.kind, "name": "p"}],
    })
    a = Agent(config)
    await a._build()
    try:
        yield a
    finally:
        Probe.release.set()
        drivers.DRIVER_KINDS.pop(Probe.kind, None)
        for state in a.drivers.values():
            if state.driver is not None:
                state.driver.close()


def call(agent: Agent, tool: str) -> Any:
    ctx = ToolContext(session_id="c", progress=lambda *a, **k: None, cancelled=threading.Event(),
                      log=lambda level, text: None)
    return agent.registry.tools[tool].handler({}, ctx)


async def test_a_fast_tool_and_sensor_run_on_the_loop_thread_others_in_workers(agent):
    loop_thread = threading.get_ident()
    probe = Probe.instance
    assert await call(agent, "p_fast") == {"level": 1}
    # the fast sensor was re-read at once, on the loop, before the call returned
    assert probe.threads["fast_read"] == [loop_thread]
    assert agent.channels["sensor://p/fast_level"].last.value == 1
    Probe.release.set()
    assert await call(agent, "p_slow") == {"level": 1}
    assert probe.threads["fast"] == [loop_thread]
    assert probe.threads["slow"] and probe.threads["slow"][0] != loop_thread
    for _ in range(100):  # the threaded sensor's refresh runs in a task
        if len(probe.threads["slow_read"]) >= 2:
            break
        await asyncio.sleep(0.01)
    assert probe.threads["slow_read"] and loop_thread not in probe.threads["slow_read"]


async def test_a_fast_call_waits_while_a_threaded_call_of_its_driver_runs(agent):
    probe = Probe.instance
    slow = asyncio.ensure_future(call(agent, "p_slow"))
    assert await asyncio.to_thread(Probe.entered.wait, 10)
    fast = asyncio.ensure_future(call(agent, "p_fast"))
    await asyncio.sleep(0.05)
    assert not fast.done() and probe.order == ["slow start"]  # one call at a time per driver
    Probe.release.set()
    await asyncio.gather(slow, fast)
    assert probe.order == ["slow start", "slow end", "fast"]


async def test_many_calls_share_one_pending_refresh_of_a_threaded_sensor(agent):
    probe = Probe.instance
    results = await asyncio.gather(*(call(agent, "p_fast") for _ in range(50)))
    assert sorted(r["level"] for r in results) == list(range(1, 51))
    assert len(probe.threads["fast_read"]) == 50  # a fast sensor: read after every call
    for _ in range(100):
        if not agent._refreshing:
            break
        await asyncio.sleep(0.01)
    # 50 calls in one loop step: one refresh task for the threaded sensor, not 50
    assert len(probe.threads["slow_read"]) == 1
    assert agent.channels["sensor://p/slow_level"].last.value == 50
