"""Issue 13 item 5: rate limits by physical output (every tool of a driver that moves it takes
from one bucket) and by client (one client's burst does not starve another); a refused call
says when to retry (text and ``_meta["dev.edge-agent/retryAfter"]``). Unit tests on a test
clock, then the agent against a real Mosquitto."""

from __future__ import annotations

import pytest

from edge_agent.cloud import connect
from edge_agent.device import config as cfg
from edge_agent.device.ratelimit import RETRY_AFTER_META, RateLimited, RateLimits
from edge_agent.device.runtime import Agent

NAME = "devices/limits/pi-1"

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_one_bucket_per_output_shared_by_its_tools():
    clock = Clock()
    limits = RateLimits(clock=clock)
    limits.take("pump_on", "a", "pump", (1.0, 2))
    limits.take("pump_off", "b", "pump", (1.0, 2))  # another tool, another client: same output
    with pytest.raises(RateLimited) as exc:
        limits.take("pump_set", "c", "pump", (1.0, 2))
    assert exc.value.retry_after == pytest.approx(1.0) and "retry in 1.0 s" in str(exc.value)
    assert exc.value.result_meta == {RETRY_AFTER_META: 1.0}
    limits.take("light_on", "a", "light", (1.0, 1))  # another output is not affected
    clock.now += 1.0
    limits.take("pump_set", "c", "pump", (1.0, 2))


def test_client_budget_and_nothing_taken_when_refused():
    clock = Clock()
    limits = RateLimits(client_rate=1.0, client_burst=2, clock=clock)
    limits.take("light_on", "greedy", "light", (100.0, 100))
    limits.take("light_off", "greedy", "light", (100.0, 100))
    with pytest.raises(RateLimited, match="this client's rate limit"):
        limits.take("pump_on", "greedy", "pump", (1.0, 1))
    limits.take("pump_on", "polite", "pump", (1.0, 1))  # the pump's token was not used by the refusal
    assert limits.refused == 1


def test_client_buckets_are_bounded():
    clock = Clock()
    limits = RateLimits(client_rate=1.0, client_burst=1, clock=clock, max_clients=10)
    for i in range(1000):
        limits.take("t", f"c{i}")
        clock.now += 0.001
    assert len(limits.clients) <= 10


def _config(tmp_path):
    return cfg.from_dict({
        "device": {"server_name": NAME, "server_id": "limits-pi-1", "simulate": True, "state_dir": str(tmp_path / "s")},
        "link": {"reconnect_min": 0.1, "reconnect_max": 0.3},
        "limits": {"client_rate": 0.2, "client_burst": 4},
        "drivers": [{"kind": "relay", "name": "pump_relay", "pin": 17, "rate_limit": {"rate": 0.2, "burst": 2}},
                    {"kind": "led", "name": "status_led", "pin": 18}],
    })


async def test_the_pump_does_not_flap_and_one_client_does_not_starve_another(broker, tmp_path):
    agent = Agent(_config(tmp_path), broker_url=broker.url)
    await agent.start(connect_timeout=10)
    try:
        async with connect(broker.url, NAME, client_id="greedy") as greedy, \
                connect(broker.url, NAME, client_id="polite") as polite:
            # six switches through three tools: two pass (the output's burst), four are refused
            calls = [("pump_relay_on", {}), ("pump_relay_off", {}), ("pump_relay_set", {"state": True})] * 2
            results = [await greedy.call_tool(t, a) for t, a in calls]
            assert [r.is_error for r in results] == [False, False, True, True, True, True]
            refused = results[2]
            assert "rate limit of pump_relay" in refused.content[0].text and "retry in" in refused.content[0].text
            assert 0 < refused.meta[RETRY_AFTER_META] <= 5.0
            # greedy spends the rest of its own budget on the LED, then is refused there too
            assert not (await greedy.call_tool("status_led_on", {})).is_error
            assert not (await greedy.call_tool("status_led_off", {})).is_error
            starved = await greedy.call_tool("status_led_on", {})
            assert starved.is_error and "this client's rate limit" in starved.content[0].text
            # polite has its own budget: the LED answers it
            assert not (await polite.call_tool("status_led_on", {})).is_error
            health = agent.health()
            assert health["drivers"]["pump_relay"]["status"] == "ok"  # a refusal is no fault
        assert agent.limits.refused == 5
    finally:
        await agent.stop()
