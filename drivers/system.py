"""The host itself: CPU temperature, load, memory, disk, uptime and network counters.

Reads Linux ``/proc`` (``context.proc_root``) and ``/sys`` (``context.sysfs_root``) and
``os.statvfs``; formats per proc(5): ``loadavg``, ``meminfo`` (kB), ``uptime`` (s), ``net/dev``;
``/sys/class/thermal/thermal_zone0/temp`` (millidegrees Celsius; the SoC sensor on a Pi).
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

from edge_agent.drivers.base import Driver, DriverContext, SensorSpec, simulated_model
from edge_agent.drivers.simulation import FileModel
from edge_agent.errors import DriverError

PERCENT = {"type": "number", "minimum": 0, "maximum": 100}


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError as exc:
        raise DriverError(f"cannot read {path}: {exc.strerror}") from exc


def parse_meminfo(text: str) -> dict[str, int]:
    """``/proc/meminfo`` as ``{"MemTotal": kB, ...}``."""
    fields = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if rest.split():
            fields[key.strip()] = int(rest.split()[0])
    return fields


def parse_net_dev(text: str) -> dict[str, tuple[int, int]]:
    """``/proc/net/dev`` as ``{interface: (rx_bytes, tx_bytes)}`` (receive field 1, transmit field 9)."""
    counters = {}
    for line in text.splitlines()[2:]:
        name, _, rest = line.partition(":")
        fields = rest.split()
        if len(fields) >= 9:
            counters[name.strip()] = (int(fields[0]), int(fields[8]))
    return counters


class System(Driver):
    """Health of the device the agent runs on.

    Sensors: ``cpu_temperature`` (°C; declared only if the thermal zone file exists: when
    simulated, the backend's ``soc_thermal`` model writes it), ``load_1m`` (1-minute load average, unitless), ``memory_used``
    (%: (MemTotal - MemAvailable) / MemTotal), ``disk_used`` (% of ``disk_path``'s file system, as
    ``df`` computes it), ``uptime`` (s), ``network`` (B: flat dict
    ``{"<iface>_rx_bytes": int, "<iface>_tx_bytes": int}`` for ``interfaces``, default all but
    ``lo``). Reads raise ``DriverError`` when a file is missing or an interface is unknown.
    """

    kind = "system"
    description = "Host health: CPU temperature, load, memory, disk, uptime, network"
    options_schema = {
        "type": "object",
        "properties": {
            "disk_path": {"type": "string", "default": "/",
                          "description": "a path on the file system whose use is reported (disk_used, %)"},
            "interfaces": {"type": "array", "items": {"type": "string", "minLength": 1}, "uniqueItems": True,
                           "description": "network interfaces counted (rx/tx bytes); default: all but lo"},
        },
        "additionalProperties": False,
    }

    def __init__(self, name, options, *, context):
        super().__init__(name, options, context=context)
        self.disk_path = self.options.get("disk_path", "/")
        self.interfaces = self.options.get("interfaces")
        self.proc = context.proc_root
        self.thermal = os.path.join(context.sysfs_root, "class", "thermal", "thermal_zone0", "temp")
        self.soc = context.attach("soc_thermal", path=self.thermal, proc_root=self.proc)

    def cpu_temperature(self) -> float:
        """SoC temperature (°C) from the thermal zone (millidegrees)."""
        return round(int(_read(self.thermal).strip()) / 1000, 1)

    def load_1m(self) -> float:
        return float(_read(os.path.join(self.proc, "loadavg")).split()[0])

    def memory_used(self) -> float:
        info = parse_meminfo(_read(os.path.join(self.proc, "meminfo")))
        try:
            total, available = info["MemTotal"], info["MemAvailable"]
        except KeyError as exc:
            raise DriverError(f"{self.proc}/meminfo has no {exc.args[0]} (kernel before 3.14?)") from None
        return round(100 * (total - available) / total, 1)

    def disk_used(self) -> float:
        try:
            st = os.statvfs(self.disk_path)
        except OSError as exc:
            raise DriverError(f"cannot stat file system of {self.disk_path}: {exc.strerror}") from exc
        used = st.f_blocks - st.f_bfree
        return round(100 * used / (used + st.f_bavail), 1) if used + st.f_bavail else 0.0

    def uptime(self) -> float:
        return float(_read(os.path.join(self.proc, "uptime")).split()[0])

    def network(self) -> dict[str, int]:
        counters = parse_net_dev(_read(os.path.join(self.proc, "net", "dev")))
        names = self.interfaces if self.interfaces is not None else [n for n in counters if n != "lo"]
        missing = [n for n in names if n not in counters]
        if missing:
            raise DriverError(f"interface {', '.join(missing)} not in {self.proc}/net/dev "
                              f"(present: {', '.join(counters) or 'none'})")
        result = {}
        for n in names:
            result[f"{n}_rx_bytes"], result[f"{n}_tx_bytes"] = counters[n]
        return result

    def sensors(self) -> list[SensorSpec]:
        specs = []
        if os.path.exists(self.thermal):
            specs.append(SensorSpec("cpu_temperature", "SoC temperature (°C)", self.cpu_temperature, unit="°C",
                                    poll_interval=10.0, deadband=0.5))
        return specs + [
            SensorSpec("load_1m", "1-minute load average (runnable tasks)", self.load_1m,
                       poll_interval=10.0, deadband=0.05, value_schema={"type": "number", "minimum": 0}),
            SensorSpec("memory_used", "memory in use, excluding reclaimable cache (%)", self.memory_used, unit="%",
                       poll_interval=30.0, deadband=1.0, value_schema=PERCENT),
            SensorSpec("disk_used", f"space used on the file system of {self.disk_path} (%)", self.disk_used,
                       unit="%", poll_interval=60.0, deadband=0.5, value_schema=PERCENT),
            SensorSpec("uptime", "time since boot (s)", self.uptime, unit="s", poll_interval=60.0,
                       value_schema={"type": "number", "minimum": 0}),
            SensorSpec("network", "bytes received/sent per interface since boot (B)", self.network, unit="B",
                       poll_interval=30.0, value_schema={"type": "object",
                                                         "additionalProperties": {"type": "integer", "minimum": 0}}),
        ]

    def close(self) -> None:
        self.soc.close()


class SimulatedThermalZone(FileModel):
    """A SoC thermal zone file (``path``, millidegrees Celsius) rewritten every second: 45 °C
    plus 5 °C per unit of the host's 1-minute load (``<proc_root>/loadavg``, at most 4) and a
    slow ±1 °C swing."""

    def __init__(self, path: str, proc_root: str = "/proc"):
        self.proc_root = proc_root
        super().__init__(path, lambda: f"{round(self.celsius() * 1000)}\n", name="soc-thermal-sim")

    def celsius(self) -> float:
        """The simulated SoC temperature (°C) now."""
        try:
            load = float(_read(os.path.join(self.proc_root, "loadavg")).split()[0])
        except (DriverError, ValueError, IndexError):
            load = 0.0
        return 45 + 5 * min(load, 4) + math.sin(time.time() / 60)


@simulated_model("soc_thermal")
def _simulated_thermal_zone(context: DriverContext, **where: Any) -> SimulatedThermalZone:
    return SimulatedThermalZone(where["path"], where.get("proc_root", "/proc"))
