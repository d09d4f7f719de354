"""Durability an SD card survives (issue 12 item 8): group commit, nothing written for what
the broker acknowledged within the window, and what a crash may lose (docs/unreliable-links.md,
"What a crash or a power cut may lose").

Bytes written are ``/proc/<pid>/io`` ``write_bytes`` of a real ``edge-agent run`` (tests/sd_load.py:
a subscribed sensor at 5 Hz, a relay call every 0.5 s, ~7 messages/s), with the state store
under the repository's folder (a disk, not tmpfs)."""

from __future__ import annotations

import json
import signal
import sqlite3
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from edge_agent.device.journal import ReplyJournal
from edge_agent.device.store import Store
from edge_agent.server.registry import Tool
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
    # before the answer leaves), about one 1 KiB page appended to the WAL: measured 10-12 MiB/h at
    # 2 calls/s on the project's VM (23-24 with the reply table keyed by client and request id;
    # ~420 before group commit); issue 12 asks <= 20
    assert rows["unreliable"]["mib_per_hour"] <= 20.0, rows["unreliable"]


def _wal_commits(data: bytes) -> list[list[int]]:
    """The page numbers of each commit in a WAL file's valid frames (sqlite.org/fileformat.html#walformat)."""
    page_size, salts = struct.unpack(">I", data[8:12])[0], data[16:24]
    commits, current, off = [], [], 32
    while off + 24 + page_size <= len(data) and data[off + 8:off + 16] == salts:
        page, size_after = struct.unpack(">II", data[off:off + 8])
        current.append(page)
        if size_after:
            commits.append(current)
            current = []
        off += 24 + page_size
    return commits


def test_a_kept_answer_costs_about_one_page_per_commit(tmp_path):
    """The durable reply cache appends (a growing row number): most commits of one reply write
    one 1 KiB page to the WAL; with eviction at the bound, deletes go in batches."""
    path = str(tmp_path / "s.sqlite3")
    store = Store(path)
    tools = {"relay_set": Tool(name="relay_set", description="", input_schema={"type": "object"},
                               handler=lambda **_: None, annotations={"idempotentHint": True})}
    journal = ReplyJournal(store, lambda: tools, max_entries=80)
    for i in range(300):  # ids as a client numbers them: 1, 2, ... 10, 11 (no key order to keep)
        msg = {"jsonrpc": "2.0", "id": i + 1, "method": "tools/call",
               "params": {"name": "relay_set", "arguments": {"state": i % 2 == 0}}}
        reply = {"jsonrpc": "2.0", "id": i + 1, "result": {"content": [{"type": "text", "text": '{"state": true}'}],
                                                           "isError": False, "structuredContent": {"state": True}}}
        journal.record("sd-client-unreliable-12345", msg, reply)
        journal.sent("sd-client-unreliable-12345", reply, 1000 + i)
        done = threading.Event()
        store.after_write(done.set, urgent=True)
        assert done.wait(10)
        if i == 149:  # before the first checkpoint (256 frames) resets the WAL
            commits = _wal_commits(Path(path + "-wal").read_bytes())
    pages = sum(len(c) for c in commits) / len(commits)
    print(f"\n{len(commits)} commits of one reply each: {pages:.2f} pages per commit")
    assert len(commits) >= 140, len(commits)
    assert pages <= 1.7, [len(c) for c in commits]
    store.close()
    again = ReplyJournal(Store(path), lambda: tools, max_entries=80)
    assert again.load() == 80  # rows the last batch had not deleted yet are dropped at load
    assert [json.loads(k[1]) for k in again.entries][-1] == 300


def test_a_reply_table_of_an_older_version_is_moved_over(tmp_path):
    path = str(tmp_path / "s.sqlite3")
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE replies (client_id TEXT NOT NULL, request_id TEXT NOT NULL, fingerprint TEXT NOT NULL,"
               " reply TEXT, created REAL NOT NULL, seq INTEGER, PRIMARY KEY (client_id, request_id)) WITHOUT ROWID")
    reply = {"jsonrpc": "2.0", "id": 7, "result": {"content": []}}
    db.execute("INSERT INTO replies VALUES (?, ?, ?, ?, ?, ?)", ("c1", "7", "ab" * 12, json.dumps(reply), time.time(), 41))
    db.commit()
    db.close()
    sent: list = []
    journal = ReplyJournal(Store(path), lambda: {}, resend=lambda c, r, s: sent.append((c, r, s)) or s)
    assert journal.load() == 1
    fingerprint, kept, _, _, seq, _ = journal.entries[("c1", "7")]
    assert (fingerprint, kept, seq) == ("ab" * 12, reply, 41)
    assert journal.store is not None
    names = [r[0] for r in journal.store.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    assert "replies" not in names and "reply_log" in names



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
