"""1-Wire drivers through the Linux ``w1_therm`` sysfs interface: the DS18B20 thermometer.

The kernel (``dtoverlay=w1-gpio``, data on GPIO4 by default, 4.7 kΩ pull-up to 3.3 V) lists each
sensor as ``/sys/bus/w1/devices/28-<serial>/``; reading its ``w1_slave`` file starts a conversion
and returns the 9-byte scratchpad twice::

    72 01 4b 46 7f ff 0e 10 57 : crc=57 YES
    72 01 4b 46 7f ff 0e 10 57 t=23125

(line 1: CRC check, line 2: temperature in millidegrees Celsius). Source: Maxim DS18B20
datasheet (19-7487 Rev 6): scratchpad layout, CRC-8 polynomial x^8 + x^5 + x^4 + 1, power-on
value +85 °C, range -55..+125 °C, conversion time 93.75/187.5/375/750 ms at 9/10/11/12 bits.
"""

from __future__ import annotations

import glob
import hashlib
import math
import os
import random
import time
from typing import Any

from edge_agent.drivers.base import Driver, DriverContext, PinUse, SensorSpec, simulated_model
from edge_agent.drivers.simulation import FileModel
from edge_agent.errors import DriverError

# Maximum conversion time per resolution (s), DS18B20 datasheet table "Thermometer resolution".
CONVERSION_TIME = {9: 0.094, 10: 0.1875, 11: 0.375, 12: 0.75}
POWER_ON_RESET = 85000  # millidegrees: the scratchpad value before any conversion
OVERLAY_HINT = ("is the 1-Wire overlay enabled (dtoverlay=w1-gpio in /boot/firmware/config.txt) and the "
                "sensor wired (data to GPIO4 with a 4.7 kΩ pull-up to 3.3 V)?")


def crc8(data: bytes | bytearray) -> int:
    """Dallas/Maxim 1-Wire CRC-8 (polynomial x^8 + x^5 + x^4 + 1, reflected 0x8C) of ``data``."""
    crc = 0
    for byte in data:
        for _ in range(8):
            mix = (crc ^ byte) & 1
            crc >>= 1
            if mix:
                crc ^= 0x8C
            byte >>= 1
    return crc


def w1_slave_text(celsius: float, resolution_bits: int = 12) -> str:
    """The ``w1_slave`` content the kernel shows for a DS18B20 at ``celsius`` (°C), with a valid CRC."""
    raw = round(celsius * 16) & ~((1 << (12 - resolution_bits)) - 1)  # undefined low bits read as 0
    config = 0x1F | (resolution_bits - 9) << 5
    pad = bytearray([raw & 0xFF, (raw >> 8) & 0xFF, 0x4B, 0x46, config, 0xFF, 0x0C, 0x10])
    pad.append(crc8(pad))
    hexes = " ".join(f"{b:02x}" for b in pad)
    return f"{hexes} : crc={pad[8]:02x} YES\n{hexes} t={int(raw * 1000 / 16)}\n"


def parse_w1_slave(text: str, device: str) -> float:
    """Temperature (°C) from ``w1_slave`` ``text`` of ``device``.

    Raises ``DriverError`` on a failed CRC (``NO``), a bus fault (scratchpad all 00 or all ff),
    the power-on value 85 °C (no conversion happened), a value outside -55..125 °C, or text that
    is not in the kernel's format.
    """
    lines = text.strip().splitlines()
    if len(lines) < 2 or " t=" not in lines[1] or not lines[0].rstrip().endswith(("YES", "NO")):
        raise DriverError(f"DS18B20 {device}: unreadable w1_slave content {text[:120]!r}")
    if lines[0].rstrip().endswith("NO"):
        raise DriverError(f"DS18B20 {device}: CRC check failed (crc=.. NO): noise on the 1-Wire bus; "
                          "check the 4.7 kΩ pull-up, the connections and the cable length")
    scratchpad = lines[0].split(":")[0].split()
    if set(scratchpad) in ({"00"}, {"ff"}):
        raise DriverError(f"DS18B20 {device}: bus fault (scratchpad all {scratchpad[0]}): "
                          "check the data line and the sensor's power")
    millidegrees = int(lines[1].rsplit("t=", 1)[1])
    if millidegrees == POWER_ON_RESET:
        raise DriverError(f"DS18B20 {device}: read the power-on value 85 °C, so no conversion happened: "
                          "check the sensor's VDD (or the strong pull-up in parasite-power mode)")
    if not -55000 <= millidegrees <= 125000:
        raise DriverError(f"DS18B20 {device}: {millidegrees / 1000} °C is outside the sensor's -55..125 °C")
    return millidegrees / 1000


class DS18B20(Driver):
    """A DS18B20 digital thermometer on the 1-Wire bus, read through ``w1_therm`` sysfs.

    Options: ``device_id`` (``28-`` + 12 hex digits; default: the first ``28-*`` found),
    ``resolution_bits`` (9..12, default 12: sets ``min_interval`` to the conversion time; set the
    sensor's own resolution with the kernel's ``resolution`` sysfs file).
    Sensor ``temperature`` (°C, 0.0625 °C steps at 12 bit, deadband 0.1 °C, polled every 10 s).
    Errors (``DriverError``): sensor not found (with the overlay hint), CRC failed, bus fault,
    85 °C power-on value. Simulated (:class:`SimulatedDS18B20`, the backend's ``ds18b20`` model):
    a thread rewrites a ``w1_slave`` file under the context's simulated sysfs with a
    temperature that drifts around 20 °C; the driver reads it like the kernel's.
    """

    kind = "ds18b20"
    description = "DS18B20 1-Wire temperature sensor (w1-gpio overlay)"
    options_schema = {
        "type": "object",
        "properties": {
            "device_id": {"type": "string", "pattern": "^28-[0-9a-f]{12}$",
                          "description": "1-Wire id, e.g. \"28-00000a1b2c3d\"; omit to use the first DS18B20 found"},
            "resolution_bits": {"type": "integer", "minimum": 9, "maximum": 12, "default": 12,
                                "description": "resolution (bits): 9 = 0.5 °C in 94 ms ... 12 = 0.0625 °C in 750 ms"},
        },
        "additionalProperties": False,
    }

    @classmethod
    def pin_uses(cls, options) -> list[PinUse]:
        """The 1-Wire bus pin: ``gpiopin=`` of ``dtoverlay=w1-gpio`` in the boot config, else GPIO4."""
        from edge_agent.drivers.pins import w1_gpio_pin

        return [PinUse("", w1_gpio_pin(), "1-wire")]

    def __init__(self, name, options, *, context):
        super().__init__(name, options, context=context)
        self.resolution_bits = self.options.get("resolution_bits", 12)
        # hardware: the configured id (None: the first found); simulated: a DS18B20 model
        # writing its w1_slave file under the context's sysfs root, and its id
        self.device = context.attach("ds18b20", sysfs_root=context.sysfs_root, device_id=self.options.get("device_id"),
                                     owner=name, resolution_bits=self.resolution_bits)
        self.device_id: str | None = self.device.device_id
        self.devices_dir = os.path.join(context.sysfs_root, "bus", "w1", "devices")

    def _device(self) -> str:
        if self.device_id:
            return self.device_id
        found = sorted(os.path.basename(p) for p in glob.glob(os.path.join(self.devices_dir, "28-*")))
        if not found:
            where = "" if os.path.isdir(self.devices_dir) else " (the folder does not exist)"
            raise DriverError(f"no DS18B20 (28-*) under {self.devices_dir}{where}: {OVERLAY_HINT}")
        return found[0]

    def _temperature(self) -> float:
        device = self._device()
        path = os.path.join(self.devices_dir, device, "w1_slave")
        try:
            with open(path, encoding="ascii", errors="replace") as f:
                text = f.read()
        except FileNotFoundError:
            raise DriverError(f"DS18B20 {device} not found under {self.devices_dir}: {OVERLAY_HINT}") from None
        except OSError as exc:
            raise DriverError(f"DS18B20 {device}: reading {path} failed ({exc.strerror}): "
                              "check the wiring and the 4.7 kΩ pull-up") from exc
        return parse_w1_slave(text, device)

    def sensors(self) -> list[SensorSpec]:
        return [SensorSpec("temperature", "temperature (°C)", self._temperature, unit="°C",
                           min_interval=CONVERSION_TIME[self.resolution_bits], poll_interval=10.0, deadband=0.1,
                           value_schema={"type": "number", "minimum": -55, "maximum": 125})]

    def close(self) -> None:
        self.device.close()


class SimulatedDS18B20(FileModel):
    """A DS18B20 in a simulated sysfs: ``<sysfs_root>/bus/w1/devices/<device_id>/w1_slave``
    rewritten every second (as ``w1_therm`` shows it, valid CRC, ``resolution_bits``) with
    :meth:`celsius`. ``device_id``: as configured, else ``28-`` + 12 hex digits from ``owner``
    (one sensor per driver)."""

    def __init__(self, sysfs_root: str, device_id: str | None, owner: str, resolution_bits: int = 12):
        self.device_id = device_id or "28-" + hashlib.sha1(owner.encode()).hexdigest()[:12]
        self.resolution_bits = resolution_bits
        super().__init__(os.path.join(sysfs_root, "bus", "w1", "devices", self.device_id, "w1_slave"),
                         lambda: w1_slave_text(self.celsius(), self.resolution_bits), name=f"ds18b20-sim-{owner}")

    @staticmethod
    def celsius() -> float:
        """The simulated soil temperature (°C): a slow swing around 20 °C plus sensor noise."""
        return 20 + 2 * math.sin(2 * math.pi * time.time() / 3600) + random.gauss(0, 0.03)


@simulated_model("ds18b20")
def _simulated_ds18b20(context: DriverContext, **where: Any) -> SimulatedDS18B20:
    return SimulatedDS18B20(where["sysfs_root"], where.get("device_id"), where["owner"],
                            where.get("resolution_bits", 12))
