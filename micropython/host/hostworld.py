# The test's world for the host test doubles (network.py, socket.py, ssl.py, ntptime.py,
# rtc.py): what board.mjs ``--world`` describes, and how often each double was used. Installed
# only with ``--world`` (so the memory benchmark's interpreter does not carry it).
import json

import host


def world():
    """The test's description of the board's surroundings (board.mjs ``--world`` file, JSON,
    read at every call): access point, DNS table, NTP reachable, cold clock."""
    return json.loads(host.world())


_counts = {}


def count(what):
    _counts[what] = _counts.get(what, 0) + 1


def counts():
    """How often the shims were used: ``dns`` queries, ``ntp`` settings, ``wlan_connects``."""
    return _counts


def real_time():
    """UTC now, Unix seconds (what an NTP server answers)."""
    return host.now()


def set_clock(t):
    """Set the board clock (micropython/host/rtc.py when the world's clock is cold)."""
    import time as clock
    if hasattr(clock, "set_clock"):
        clock.set_clock(t)
