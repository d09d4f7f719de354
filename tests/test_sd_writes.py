"""Durability an SD card survives (issue 12 item 8): group commit, nothing written for what
the broker acknowledged within the window, and what a crash may lose (docs/unreliable-links.md,
"What a crash or a power cut may lose").

Bytes written are ``/proc/<pid>/io`` ``write_bytes`` of a real ``edge-agent run`` (tests/sd_load.py:
a subscribed sensor at 5 Hz, a relay call every 0.5 s, ~7 messages/s), with the state store
under the repository's folder (a disk, not tmpfs)."""

from __future__ import annotations

import signal
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import pytest

from edge_agent.testing.broker import LocalBroker, free_port

from .agent_process import AgentProcess, write_config
from .raw_client import RawMcpClient
from .sd_load import measure

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/<pid>/io is Linux")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def disk_dir():
    """A folder on the repository's disk (pytest's tmp_path may be tmpfs, which counts nothing)."""
    with tempfile.TemporaryDirectory(prefix=".sd-writes-", dir=ROOT) as folder:
        yield Path(folder)


def test_what_the_broker_acknowledges_costs_the_card_nothing(broker, disk_dir):
    quiet = measure(broker.url, disk_dir / "telemetry", "unreliable", 10, calls=False)
    print(f"\nunreliable, sensor updates only: {quiet['mib_per_hour']:.2f} MiB/h "
          f"({quiet['messages']} messages in {quiet['seconds']:.0f} s)")
    assert quiet["messages"] >= 30, quiet
    assert quiet["mib_per_hour"] <= 2.0, quiet  # QoS 1 rows acknowledged within the window: never written


def test_bytes_written_per_hour_under_the_issue_load(broker, disk_dir):
    rows = {}
    for profile in ("unreliable", "lan"):
        rows[profile] = measure(broker.url, disk_dir / profile, profile, 12)
        r = rows[profile]
        print(f"\n{profile}: {r['bytes']} B in {r['seconds']:.1f} s, {r['messages']} messages: "
              f"{r['mib_per_hour']:.1f} MiB/h, {r['bytes_per_message']:.0f} B/message")
    assert rows["lan"]["mib_per_hour"] <= 1.0, rows["lan"]
    # unreliable: one small commit per tool call that is not read-only (its durable reply, on disk
    # before the answer leaves); measured 23-24 MiB/h at 2 calls/s on the project's VM (issue 12
    # asks <= 20: not reached, see the closing notes), down from ~420
    assert rows["unreliable"]["mib_per_hour"] <= 32.0, rows["unreliable"]


def test_a_crash_loses_at_most_the_last_commit_window(tmp_path):
    """Broker down, telemetry piling up in the outbox at 10 Hz, agent SIGKILLed: every row
    produced until 0.2 s (the commit window) before the kill is in the file."""
    broker = LocalBroker(free_port()).start()
    drivers = """
[[drivers]]
kind = "system"
name = "system"
poll_interval = 0.1
deadband = 0

[link]
profile = "unreliable"
reconnect_min = 0.1
reconnect_max = 0.3
"""
    config = write_config(tmp_path / "a.toml", server_name="devices/lab/crash", server_id="crash-1", drivers=drivers,
                          state_dir=tmp_path / "state")
    agent = AgentProcess(config, broker.url, "crash-1", "devices/lab/crash").start()
    client = RawMcpClient(broker.url, "crash-watch", "crash-1", "devices/lab/crash", persistent=True)
    try:
        client.initialize()
        client.request("resources/subscribe", {"uri": "sensor://system/uptime"})
        broker.kill()
        time.sleep(1.5)
        killed = time.time()
        agent.signal(signal.SIGKILL)
        agent.wait()
    finally:
        client.client.loop_stop()
        agent.stop()
        broker.close()
    db = sqlite3.connect(str(tmp_path / "state" / "state.sqlite3"))
    rows = db.execute("SELECT id, created FROM outbox WHERE kind = 'telemetry' ORDER BY id").fetchall()
    db.close()
    assert len(rows) >= 8, rows
    ids = [r[0] for r in rows]
    assert ids == list(range(ids[0], ids[0] + len(ids))), "a hole: a committed row went missing"
    lost = killed - rows[-1][1]
    print(f"\nSIGKILL with the broker down: {len(rows)} rows on disk, the newest {lost:.2f} s before the kill")
    # the newest row on disk is at most one window (0.2 s) + one poll (0.1 s) old, plus scheduling
    assert lost <= 0.2 + 0.1 + 0.3, f"the newest row on disk is {lost:.2f} s older than the kill"
