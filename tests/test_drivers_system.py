"""System driver against a /proc and /sys written in tmp_path, with exact numbers."""

from __future__ import annotations

import os

import jsonschema
import pytest

from edge_agent.drivers.base import DriverContext
from edge_agent.drivers.system import System
from edge_agent.errors import DriverError

NET_DEV = """\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:  123456     100    0    0    0     0          0         0   123456     100    0    0    0     0       0          0
  eth0: 9876543   20000    0    0    0     0          0        12  1234567   15000    0    0    0     0       0          0
 wlan0:       7       1    0    0    0     0          0         0        8       1    0    0    0     0       0          0
"""
MEMINFO = "MemTotal:        3884192 kB\nMemFree:          512000 kB\nMemAvailable:    2913144 kB\nCached: 1 kB\n"


@pytest.fixture
def roots(tmp_path):
    proc, sys = tmp_path / "proc", tmp_path / "sys"
    (proc / "net").mkdir(parents=True)
    (proc / "loadavg").write_text("0.52 0.58 0.59 1/402 12345\n")
    (proc / "meminfo").write_text(MEMINFO)
    (proc / "uptime").write_text("350735.47 234388.90\n")
    (proc / "net" / "dev").write_text(NET_DEV)
    zone = sys / "class" / "thermal" / "thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "temp").write_text("48312\n")
    return proc, sys


def system(tmp_path, roots, options=None, simulate=False):
    proc, sys = roots
    ctx = DriverContext(simulate=simulate, proc_root=str(proc), sysfs_root=str(sys), state_dir=str(tmp_path))
    return System("system", options or {}, context=ctx)


def readings(driver):
    values = {}
    for s in driver.sensors():
        values[s.name] = s.read()
        jsonschema.validate(values[s.name], s.value_schema)
    return values


def test_exact_readings_and_units(tmp_path, roots):
    driver = system(tmp_path, roots, {"disk_path": str(tmp_path)})
    values = readings(driver)
    st = os.statvfs(tmp_path)
    used = st.f_blocks - st.f_bfree
    assert values == {
        "cpu_temperature": 48.3,
        "load_1m": 0.52,
        "memory_used": 25.0,  # (3884192 - 2913144) / 3884192
        "disk_used": round(100 * used / (used + st.f_bavail), 1),
        "uptime": 350735.47,
        "network": {"eth0_rx_bytes": 9876543, "eth0_tx_bytes": 1234567, "wlan0_rx_bytes": 7, "wlan0_tx_bytes": 8},
    }
    units = {s.name: s.unit for s in driver.sensors()}
    assert units == {"cpu_temperature": "°C", "load_1m": "", "memory_used": "%", "disk_used": "%",
                     "uptime": "s", "network": "B"}
    assert all(s.poll_interval and 10 <= s.poll_interval <= 60 for s in driver.sensors())


def test_chosen_interfaces_and_unknown_interface(tmp_path, roots):
    assert readings(system(tmp_path, roots, {"interfaces": ["lo"]}))["network"] == {
        "lo_rx_bytes": 123456, "lo_tx_bytes": 123456}
    missing = system(tmp_path, roots, {"interfaces": ["eth1"]})
    with pytest.raises(DriverError, match=r"interface eth1 not in .*net/dev \(present: lo, eth0, wlan0\)"):
        {s.name: s for s in missing.sensors()}["network"].read()


def test_cpu_temperature_only_when_the_zone_exists(tmp_path, roots):
    os.remove(roots[1] / "class" / "thermal" / "thermal_zone0" / "temp")
    assert "cpu_temperature" not in {s.name for s in system(tmp_path, roots).sensors()}
    simulated = {s.name: s for s in system(tmp_path, roots, simulate=True).sensors()}
    assert 30 < simulated["cpu_temperature"].read() < 80


def test_missing_proc_file_is_a_driver_error(tmp_path, roots):
    os.remove(roots[0] / "loadavg")
    sensors = {s.name: s for s in system(tmp_path, roots).sensors()}
    with pytest.raises(DriverError, match="cannot read .*loadavg"):
        sensors["load_1m"].read()
