"""ROHM BH1750FVI ambient light sensor: illuminance (lx) over I2C.

Source: ROHM BH1750FVI datasheet (Rev. D, 2011): opcodes Power On 0x01, One Time
H-Resolution Mode 0x20 / Mode2 0x21 (the sensor powers down after the measurement), MTreg
(measurement time register, 31..254, default 69) written as 01000_MT[7:5] and 011_MT[4:0],
H-resolution measurement time 120 ms typical / 180 ms maximum at MTreg 69 (proportional to
MTreg), and the conversion lx = count / 1.2 × (69 / MTreg), halved again in Mode2.
"""

from __future__ import annotations

import time
from typing import Any

from edge_agent.drivers.base import SensorSpec
from edge_agent.drivers.i2c import I2CDriver, address_option, bus_option, i2c_msg

POWER_ON = 0x01
ONE_TIME = {"high": 0x20, "high2": 0x21}
DEFAULT_MTREG = 69
MAX_TIME = 0.180  # s, H-resolution at MTreg 69


def mtreg_bytes(mtreg: int) -> tuple[int, int]:
    """The two opcodes that set MTreg (31..254): 0b01000_xxx (bits 7..5), 0b011_xxxxx (bits 4..0).

    Raises ``ValueError`` outside 31..254."""
    if not 31 <= mtreg <= 254:
        raise ValueError(f"MTreg {mtreg} outside 31..254")
    return 0x40 | mtreg >> 5, 0x60 | (mtreg & 0x1F)


def to_lux(count: int, mode: str = "high", mtreg: int = DEFAULT_MTREG) -> float:
    """Illuminance (lx) from the 16-bit count: count / 1.2 × 69 / MTreg (/ 2 in ``high2``)."""
    return count / 1.2 * DEFAULT_MTREG / mtreg / (2 if mode == "high2" else 1)


def measurement_time(mtreg: int = DEFAULT_MTREG) -> float:
    """Maximum one-time H-resolution measurement time (s) at ``mtreg``: 180 ms × MTreg / 69."""
    return MAX_TIME * mtreg / DEFAULT_MTREG


class BH1750(I2CDriver):
    """A ROHM BH1750 light sensor on I2C, one one-time measurement per read.

    Options: ``bus`` (default 1), ``address`` (0x23 default with ADDR low, 0x5C with ADDR high),
    ``mode`` (``"high"``: 1 lx resolution up to 54612 lx at MTreg 69; ``"high2"``: 0.5 lx, up to
    27306 lx), ``mtreg`` (31..254, default 69: higher is more sensitive and slower, lower reaches
    brighter light, up to 121557 lx at 31). Sensor ``illuminance`` (lx). A reading at the top of
    the range (count 65535) means "at least this much": lower ``mtreg`` in full sun.
    Errors (``DriverError``): no answer at the address.
    """

    kind = "bh1750"
    chip = "BH1750"
    description = "ROHM BH1750 ambient light sensor (I2C)"
    options_schema = {
        "type": "object",
        "properties": {
            "bus": bus_option(),
            "address": address_option({0x23: "ADDR pin low or open", 0x5C: "ADDR pin high"}),
            "mode": {"type": "string", "enum": list(ONE_TIME), "default": "high",
                     "description": "resolution: high = 1 lx, high2 = 0.5 lx (half the range)"},
            "mtreg": {"type": "integer", "minimum": 31, "maximum": 254, "default": DEFAULT_MTREG,
                      "description": "measurement time register: sensitivity × MTreg/69 and time 180 ms × MTreg/69"},
        },
        "additionalProperties": False,
    }

    def __init__(self, name, options, *, context):
        super().__init__(name, options, context=context)
        self.mode = self.options.get("mode", "high")
        self.mtreg = self.options.get("mtreg", DEFAULT_MTREG)

    def _opcode(self, bus: Any, opcode: int) -> None:
        bus.i2c_rdwr(i2c_msg.write(self.address, [opcode]))

    def _measure(self, bus: Any) -> float:
        self._opcode(bus, POWER_ON)
        for opcode in mtreg_bytes(self.mtreg):
            self._opcode(bus, opcode)
        self._opcode(bus, ONE_TIME[self.mode])
        time.sleep(measurement_time(self.mtreg))
        answer = i2c_msg.read(self.address, 2)
        bus.i2c_rdwr(answer)
        high, low = bytes(answer)
        return to_lux(high << 8 | low, self.mode, self.mtreg)

    def read(self) -> float:
        """Illuminance (lx, rounded to 0.1)."""
        return round(self.transfer(self._measure), 1)

    def sensors(self) -> list[SensorSpec]:
        return [SensorSpec("illuminance", "illuminance (lx)", self.read, unit="lx",
                           min_interval=round(measurement_time(self.mtreg), 3), poll_interval=10.0, deadband=10.0,
                           value_schema={"type": "number", "minimum": 0})]
