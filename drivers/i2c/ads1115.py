"""TI ADS1115: 4-channel 16-bit ADC (V) over I2C, with a soil-moisture calibration (%).

Source: TI ADS1115 datasheet (SBAS444D): address pointer register (8.5.1: conversion 0x00,
config 0x01), config register fields (8.6.3): OS[15] (write 1 = start a single conversion,
read 0 = converting), MUX[14:12] (100..111 = AIN0..AIN3 against GND), PGA[11:9] (full scale
±6.144 / 4.096 / 2.048 / 1.024 / 0.512 / 0.256 V), MODE[8] (1 = single-shot), DR[7:5]
(8..860 samples/s), COMP_QUE[1:0] = 11 (comparator off); 16-bit words big-endian; the
conversion is two's complement, code × FS / 32768 V. An input must stay within GND - 0.3 V ..
VDD + 0.3 V whatever the full scale.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from edge_agent.drivers.base import SensorSpec
from edge_agent.drivers.i2c import I2CDriver, address_option, bus_option
from edge_agent.errors import DriverError

REG_CONVERSION, REG_CONFIG = 0x00, 0x01
FULL_SCALE = {6.144: 0b000, 4.096: 0b001, 2.048: 0b010, 1.024: 0b011, 0.512: 0b100, 0.256: 0b101}
DATA_RATE = {8: 0b000, 16: 0b001, 32: 0b010, 64: 0b011, 128: 0b100, 250: 0b101, 475: 0b110, 860: 0b111}
OS_START = OS_IDLE = 1 << 15
MODE_SINGLE = 1 << 8
COMP_DISABLE = 0b11


def config_word(channel: int, full_scale: float, data_rate: int) -> int:
    """The config register value that starts one single-shot conversion of AIN``channel``
    (0..3) against GND at ``full_scale`` (V, a key of :data:`FULL_SCALE`) and ``data_rate``
    (samples/s, a key of :data:`DATA_RATE`), comparator off. Raises ``ValueError`` otherwise."""
    if channel not in range(4) or full_scale not in FULL_SCALE or data_rate not in DATA_RATE:
        raise ValueError(f"no ADS1115 setting for channel {channel}, ±{full_scale} V, {data_rate} SPS")
    return (OS_START | (0b100 + channel) << 12 | FULL_SCALE[full_scale] << 9 | MODE_SINGLE
            | DATA_RATE[data_rate] << 5 | COMP_DISABLE)


def to_volts(code: int, full_scale: float) -> float:
    """Volts from the conversion register's 16-bit two's-complement ``code``."""
    if code & 0x8000:
        code -= 0x10000
    return code * full_scale / 32768


def moisture_percent(volts: float, dry_voltage: float, wet_voltage: float) -> float:
    """Soil moisture (%) by linear calibration: ``dry_voltage`` -> 0 %, ``wet_voltage`` -> 100 %,
    clamped to 0..100 (either may be the larger: capacitive probes read lower when wet).
    Raises ``ValueError`` when the two are equal."""
    if dry_voltage == wet_voltage:
        raise ValueError("dry_voltage and wet_voltage must differ")
    return min(max(100 * (dry_voltage - volts) / (dry_voltage - wet_voltage), 0.0), 100.0)


CHANNEL = {
    "type": "object",
    "properties": {
        "channel": {"type": "integer", "minimum": 0, "maximum": 3, "description": "input AIN0..AIN3, against GND"},
        "name": {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,30}$",
                 "description": "resource name of the voltage; default ain<channel>"},
        "full_scale": {"type": "number", "enum": list(FULL_SCALE), "default": 4.096,
                       "description": "PGA full-scale range (±V); keep it above the highest input voltage"},
        "dry_voltage": {"type": "number", "minimum": 0, "maximum": 6.144,
                        "description": "soil-moisture calibration: the voltage in dry air or dry soil (-> 0 %)"},
        "wet_voltage": {"type": "number", "minimum": 0, "maximum": 6.144,
                        "description": "soil-moisture calibration: the voltage in water or saturated soil (-> 100 %)"},
    },
    "required": ["channel"],
    "additionalProperties": False,
}


class ADS1115(I2CDriver):
    """A TI ADS1115 analogue-to-digital converter on I2C, one single-shot conversion per read.

    Options: ``bus`` (default 1), ``address`` (0x48..0x4B by the ADDR pin: GND, VDD, SDA, SCL),
    ``data_rate`` (samples/s, default 128: a conversion takes 1/data_rate s), ``channels``
    (default: AIN0..AIN3 as ``ain0``..``ain3`` at ±4.096 V): a list of ``{channel, name,
    full_scale, dry_voltage, wet_voltage}``. Sensors: ``<name>`` (V) per channel and, for a
    channel with ``dry_voltage`` and ``wet_voltage``, ``<name>_moisture`` (%, 0..100).
    Raises ``ValueError`` at start for a channel listed twice, a name used twice or equal dry
    and wet voltages (:meth:`check_options`, so ``edge-agent check`` reports them too). Reads raise ``DriverError``: no answer, a conversion that does not finish,
    an input at the end of the full-scale range (clipped: choose a larger ``full_scale``).
    """

    kind = "ads1115"
    chip = "ADS1115"
    description = "TI ADS1115 4-channel 16-bit ADC with soil-moisture calibration (I2C)"
    options_schema = {
        "type": "object",
        "properties": {
            "bus": bus_option(),
            "address": address_option({0x48: "ADDR to GND", 0x49: "ADDR to VDD", 0x4A: "ADDR to SDA",
                                       0x4B: "ADDR to SCL"}),
            "data_rate": {"type": "integer", "enum": list(DATA_RATE), "default": 128,
                          "description": "conversions per second (SPS): 8 is the least noisy, 860 the fastest"},
            "channels": {"type": "array", "items": CHANNEL, "minItems": 1, "maxItems": 4,
                         "description": "inputs read; default: AIN0..AIN3 as ain0..ain3 at ±4.096 V"},
        },
        "additionalProperties": False,
    }

    def __init__(self, name, options, *, context):
        super().__init__(name, options, context=context)
        self.data_rate = self.options.get("data_rate", 128)
        self.channels = self._channels(self.options)

    @staticmethod
    def _channels(options: Mapping[str, Any]) -> list[dict[str, Any]]:
        return [{"name": f"ain{c['channel']}", "full_scale": 4.096} | c
                for c in options.get("channels", [{"channel": n} for n in range(4)])]

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> list[tuple[str, str]]:
        """A bad address, an input listed twice, a resource name used twice, a calibration with
        only one of dry_voltage and wet_voltage or with both equal."""
        problems = super().check_options(options)
        channels = cls._channels(options)
        numbers = [c["channel"] for c in channels]
        if len(set(numbers)) != len(numbers):
            problems.append(("channels", f"an input is listed twice (channels {numbers})"))
        names = [c["name"] for c in channels] + [f"{c['name']}_moisture" for c in channels if "dry_voltage" in c and "wet_voltage" in c]
        if len(set(names)) != len(names):
            problems.append(("channels", f"two resources would have one name ({', '.join(names)})"))
        for i, c in enumerate(channels):
            if ("dry_voltage" in c) != ("wet_voltage" in c):
                given, missing = ("dry_voltage", "wet_voltage") if "dry_voltage" in c else ("wet_voltage", "dry_voltage")
                why = f"{given} is given, so {missing} is needed too (the soil-moisture calibration takes both)"
                problems.append((f"channels[{i}].{missing}", why))
            elif "dry_voltage" in c and c["dry_voltage"] == c["wet_voltage"]:
                problems.append((f"channels[{i}].wet_voltage", "dry_voltage and wet_voltage must differ"))
        return problems

    def _convert(self, bus: Any, channel: int, full_scale: float) -> float:
        word = config_word(channel, full_scale, self.data_rate)
        bus.write_i2c_block_data(self.address, REG_CONFIG, [word >> 8, word & 0xFF])
        time.sleep(1 / self.data_rate * 1.1 + 0.0002)  # the internal oscillator is within ±10 %
        for _ in range(10):
            msb, _lsb = bus.read_i2c_block_data(self.address, REG_CONFIG, 2)
            if msb << 8 & OS_IDLE:
                break
            time.sleep(0.001)
        else:
            raise DriverError(f"{self.where}: the conversion of AIN{channel} did not finish")
        msb, lsb = bus.read_i2c_block_data(self.address, REG_CONVERSION, 2)
        code = msb << 8 | lsb
        if code in (0x7FFF, 0x8000):
            raise DriverError(f"{self.where}: AIN{channel} is at the end of the ±{full_scale} V range "
                              "(clipped): set a larger full_scale for this channel")
        return to_volts(code, full_scale)

    def voltage(self, channel: int, full_scale: float) -> float:
        """One conversion of AIN``channel`` (V, rounded to 0.1 mV)."""
        return round(self.transfer(lambda bus: self._convert(bus, channel, full_scale)), 4)

    def _voltage_reader(self, channel: int, full_scale: float) -> Callable[[], float]:
        return lambda: self.voltage(channel, full_scale)

    def _moisture_reader(self, channel: int, full_scale: float, dry: float, wet: float) -> Callable[[], float]:
        return lambda: round(moisture_percent(self.voltage(channel, full_scale), dry, wet), 1)

    def sensors(self) -> list[SensorSpec]:
        every = math.ceil(1000 / self.data_rate) / 1000
        specs = []
        for c in self.channels:
            ch, fs = c["channel"], c["full_scale"]
            specs.append(SensorSpec(c["name"], f"voltage of AIN{ch} against GND, ±{fs} V full scale (V)",
                                    self._voltage_reader(ch, fs), unit="V", min_interval=every,
                                    poll_interval=10.0, deadband=0.01,
                                    value_schema={"type": "number", "minimum": -fs, "maximum": fs}))
            if "dry_voltage" in c and "wet_voltage" in c:
                dry, wet = c["dry_voltage"], c["wet_voltage"]
                specs.append(SensorSpec(
                    f"{c['name']}_moisture", f"soil moisture on AIN{ch}: {dry} V dry = 0 %, {wet} V wet = 100 % (%)",
                    self._moisture_reader(ch, fs, dry, wet), unit="%", min_interval=every, poll_interval=60.0,
                    deadband=1.0, value_schema={"type": "number", "minimum": 0, "maximum": 100}))
        return specs
