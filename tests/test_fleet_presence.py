"""No silent truncation: 10,000 retained presences on a default-configured Mosquitto 2.0
(max_queued_messages 1000, max_inflight_messages 20) all reach ``discover``, ``edge-agent
devices`` and the gateway's fleet (presence is subscribed at QoS 0); where a queue limit does
bite (QoS 1), the gap is detected and the broker setting to raise is named."""

from __future__ import annotations

import json

import anyio
import pytest

from edge_agent.client.cli import main
from edge_agent.client.discovery import RetainedReport, discover
from edge_agent.gateway.fleet import Fleet
from edge_agent.testing.broker import LocalBroker
from edge_agent.testing.fleet_sim import plant_presences

pytestmark = pytest.mark.anyio

N = 10_000


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="module")
def big_broker():
    """A default-configured Mosquitto (only the test fixture's listener lines) holding N retained
    presences, planted by one client (no device answers: discovery and listing need none)."""
    with LocalBroker() as b:
        plant_presences(b.url, N)
        yield b


async def test_discover_receives_every_presence_at_qos0(big_broker):
    report = RetainedReport()
    found = await discover(big_broker.url, "devices/sim/#", timeout=60, until_retained=True, report=report)
    assert len(found) == N and report.presences == N
    assert report.complete and report.gap is None
    assert len({p.server_id for p in found}) == N


async def test_queue_limit_at_qos1_is_detected_and_names_the_setting(big_broker):
    report = RetainedReport()
    found = await discover(big_broker.url, "devices/sim/#", timeout=10, until_retained=True, report=report,
                           presence_qos=1)
    # what the issue measured: a QoS 1 subscription gets max_queued_messages + max_inflight_messages
    assert len(found) < N
    assert not report.complete
    assert report.gap is not None and "max_queued_messages" in report.gap and f"{len(found)} presences" in report.gap


def test_devices_command_lists_all(big_broker, capsys):
    code = main(["devices", "devices/sim/#", "--broker", big_broker.url, "--timeout", "60", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    listed = json.loads(out)
    assert len(listed) == N and "warning" not in err


async def test_gateway_fleet_sees_every_device(big_broker):
    async with Fleet(big_broker.url, server_name_filter="devices/sim/#", ping_interval=0) as fleet:
        with anyio.fail_after(120):
            await fleet.ready.wait()
        assert fleet.retained.complete and fleet.retained.gap is None
        assert len(fleet.server_names()) == N
        assert fleet.retained.presences == N


async def test_gateway_fleet_reports_a_gap_with_the_setting_to_raise(big_broker, monkeypatch, caplog):
    """The gateway's own check: presence read at QoS 1 (as before this fix) loses all but
    1,020 on a default Mosquitto; the fleet says so instead of listing them as the fleet."""
    import edge_agent.gateway.fleet as fleet_module

    monkeypatch.setattr(fleet_module, "PRESENCE_QOS", 1)
    async with Fleet(big_broker.url, server_name_filter="devices/sim/#", ping_interval=0) as fleet:
        with anyio.fail_after(120):
            await fleet.ready.wait()
        assert len(fleet.server_names()) < N
        assert not fleet.retained.complete
        assert fleet.retained.gap is not None and "max_queued_messages" in fleet.retained.gap
        assert any("max_queued_messages" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
