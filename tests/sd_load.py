"""What the agent writes to its SD card under a steady load (issue 12 item 8), for
tests/test_sd_writes.py and ``bench/recovery.py --scenarios sdwrites``.

The load of the issue: one subscribed client, a ``system`` sensor polled at 5 Hz (deadband 0:
every poll is a ``notifications/resources/updated``) and a relay call every 0.5 s (its answer
and the relay's state update): about 8 messages a second. The agent is a real
``edge-agent run`` child; what it wrote is ``write_bytes`` of ``/proc/<pid>/io`` (bytes it
caused to be sent to the block layer: dirtied page-cache pages of its files), measured over a
window after a settle time, while connected."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from .agent_process import AgentProcess, write_config
from .raw_client import RawMcpClient

MIB = 1024 * 1024

DRIVERS = """
[[drivers]]
kind = "system"
name = "system"
poll_interval = 0.2
deadband = 0

[[drivers]]
kind = "relay"
name = "pump_relay"
pin = 17
"""


def write_bytes(pid: int) -> int:
    """``write_bytes`` of ``/proc/<pid>/io`` (bytes)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise RuntimeError(f"no write_bytes in /proc/{pid}/io")


def measure(broker_url: str, workdir: Path, profile: str, seconds: float, *, settle: float = 2.0,
            extra_link: str = "", calls: bool = True) -> dict[str, float]:
    """Run the agent with ``profile`` under the load for ``settle`` + ``seconds`` s. Returns
    ``{"bytes": written in the window, "messages": messages the client got in it, "seconds",
    "mib_per_hour", "bytes_per_message"}``. ``calls`` False: the sensor's updates only. ``workdir`` must be on a disk (not tmpfs)."""
    workdir.mkdir(parents=True, exist_ok=True)
    sid = f"sd-{profile}"
    name = f"devices/lab/sd-{profile}"
    # the state store on the disk under test; the simulator's files (the simulated sysfs a
    # real Pi only reads) on tmpfs, so they do not count
    store = workdir / f"state-{profile}.sqlite3"
    link = f'\n[link]\nprofile = "{profile}"\n{extra_link}\n\n[store]\npath = "{store}"\n'
    sim = Path(tempfile.mkdtemp(prefix="edge-agent-sim-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    config = write_config(workdir / f"{profile}.toml", server_name=name, server_id=sid, drivers=DRIVERS + link,
                          state_dir=sim)
    agent = AgentProcess(config, broker_url, sid, name).start()
    client = RawMcpClient(broker_url, f"sd-client-{profile}-{os.getpid()}", sid, name,
                          persistent=profile == "unreliable")
    stop = threading.Event()
    try:
        client.initialize()
        client.request("resources/subscribe", {"uri": "sensor://system/uptime"})

        def relay() -> None:
            on = False
            while not stop.is_set():
                on = not on
                client.send("tools/call", {"name": "pump_relay_set", "arguments": {"state": on}})
                stop.wait(0.5)

        worker = threading.Thread(target=relay, daemon=True)
        if calls:
            worker.start()
        time.sleep(settle)
        assert agent.proc is not None
        before, got_before, t0 = write_bytes(agent.proc.pid), len(client.received), time.monotonic()
        time.sleep(seconds)
        after, got_after, t1 = write_bytes(agent.proc.pid), len(client.received), time.monotonic()
        stop.set()
        if calls:
            worker.join(5)
    finally:
        stop.set()
        client.close()
        agent.stop()
        shutil.rmtree(sim, ignore_errors=True)
    window = t1 - t0
    written = after - before
    messages = got_after - got_before
    return {"bytes": written, "messages": messages, "seconds": window,
            "mib_per_hour": written / window * 3600 / MIB,
            "bytes_per_message": written / messages if messages else float("nan")}
