"""Sensirion SHT30/SHT31/SHT35 (SHT3x-DIS): temperature (°C) and relative humidity (%) over I2C.

Source: Sensirion SHT3x-DIS datasheet (version 6, 2019): single-shot commands without clock
stretching 0x2400 / 0x240B / 0x2416 (high / medium / low repeatability, table 9), maximum
measurement durations 15 / 6 / 4 ms (table 4), the 6-byte answer T_MSB T_LSB CRC RH_MSB RH_LSB
CRC, CRC-8 with polynomial 0x31 and initialisation 0xFF (section 4.12, example 0xBEEF -> 0x92),
and the conversions T = -45 + 175·S_T / (2^16 - 1) °C, RH = 100·S_RH / (2^16 - 1) % (4.13).
"""

from __future__ import annotations

import time
from typing import Any

from edge_agent.drivers.base import SensorSpec
from edge_agent.drivers.i2c import I2CDriver, address_option, bus_option, i2c_msg
from edge_agent.errors import DriverError

SINGLE_SHOT = {"high": 0x2400, "medium": 0x240B, "low": 0x2416}  # clock stretching disabled
DURATION = {"high": 0.015, "medium": 0.006, "low": 0.004}  # s, maximum
SOFT_RESET = 0x30A2


def crc8(data: bytes) -> int:
    """Sensirion CRC-8: polynomial x^8 + x^5 + x^4 + 1 (0x31), init 0xFF, no reflection, no final XOR."""
    crc = 0xFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x31) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def with_crc(word: int) -> bytes:
    """A 16-bit word as the sensor sends it: MSB, LSB, CRC."""
    data = bytes([word >> 8 & 0xFF, word & 0xFF])
    return data + bytes([crc8(data)])


def parse_measurement(data: bytes, where: str = "SHT3x") -> tuple[float, float]:
    """(°C, %) from the 6 bytes of a measurement; every word's CRC is checked.

    Raises ``DriverError`` naming the word whose CRC does not match (noise on the bus: check the
    pull-ups and the cable length) or an answer that is not 6 bytes."""
    if len(data) != 6:
        raise DriverError(f"{where}: expected 6 bytes, got {len(data)}")
    for i, what in ((0, "temperature"), (3, "humidity")):
        if crc8(data[i:i + 2]) != data[i + 2]:
            raise DriverError(f"{where}: CRC mismatch on the {what} word ({data[i:i + 3].hex()}, expected CRC "
                              f"0x{crc8(data[i:i + 2]):02X}): noise on the I2C bus; check the pull-ups, "
                              "the connections and the cable length")
    s_t, s_rh = data[0] << 8 | data[1], data[3] << 8 | data[4]
    return -45 + 175 * s_t / 65535, 100 * s_rh / 65535


class SHT3x(I2CDriver):
    """A Sensirion SHT3x (SHT30, SHT31, SHT35) on I2C, one single-shot measurement per read.

    Options: ``bus`` (default 1), ``address`` (0x44 default with ADDR to GND, 0x45 with ADDR to
    VDD), ``repeatability`` (``"high"`` default: 0.04 °C / 0.08 % noise in 15 ms; ``"medium"``
    6 ms; ``"low"`` 4 ms). Sensors: ``temperature`` (°C, -40..125), ``humidity`` (%, 0..100).
    Errors (``DriverError``): no answer at the address, CRC mismatch on a word.
    """

    kind = "sht3x"
    chip = "SHT3x"
    description = "Sensirion SHT3x (SHT30/31/35) temperature and humidity sensor (I2C)"
    options_schema = {
        "type": "object",
        "properties": {
            "bus": bus_option(),
            "address": address_option({0x44: "ADDR pin to GND, most boards", 0x45: "ADDR pin to VDD"}),
            "repeatability": {"type": "string", "enum": list(SINGLE_SHOT), "default": "high",
                              "description": "measurement repeatability: high (15 ms), medium (6 ms), low (4 ms)"},
        },
        "additionalProperties": False,
    }

    def __init__(self, name, options, *, context):
        super().__init__(name, options, context=context)
        self.repeatability = self.options.get("repeatability", "high")

    def _command(self, bus: Any, command: int) -> None:
        bus.i2c_rdwr(i2c_msg.write(self.address, [command >> 8, command & 0xFF]))

    def setup(self, bus: Any) -> None:
        self._command(bus, SOFT_RESET)
        time.sleep(0.0015)  # soft reset time (table 4: 1.5 ms)

    def _measure(self, bus: Any) -> tuple[float, float]:
        self._command(bus, SINGLE_SHOT[self.repeatability])
        time.sleep(DURATION[self.repeatability])
        answer = i2c_msg.read(self.address, 6)
        bus.i2c_rdwr(answer)
        return parse_measurement(bytes(answer), self.where)

    def read(self) -> tuple[float, float]:
        """One single-shot measurement: (temperature °C, relative humidity %)."""
        return self.transfer(self._measure)

    def sensors(self) -> list[SensorSpec]:
        every = DURATION[self.repeatability]
        return [
            SensorSpec("temperature", "air temperature (°C)", lambda: round(self.read()[0], 2), unit="°C",
                       min_interval=every, poll_interval=10.0, deadband=0.1,
                       value_schema={"type": "number", "minimum": -45, "maximum": 130}),
            SensorSpec("humidity", "relative humidity (%)", lambda: round(self.read()[1], 2), unit="%",
                       min_interval=every, poll_interval=10.0, deadband=0.5,
                       value_schema={"type": "number", "minimum": 0, "maximum": 100}),
        ]
