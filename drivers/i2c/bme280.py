"""Bosch BME280: temperature (°C), relative humidity (%) and pressure (hPa) over I2C.

Source: Bosch Sensortec BME280 datasheet BST-BME280-DS002: register map (section 5.3), trimming
parameters at 0x88..0xA1 and 0xE1..0xE7 (table 16), forced mode (3.3.3), measurement time
(9.1), and the double-precision compensation formulas (section 8.1, the same as Bosch's
reference driver BME280_driver, including its clamps: -40..85 °C, 300..1100 hPa, 0..100 %).
"""

from __future__ import annotations

import struct
import time
from dataclasses import astuple, dataclass, fields
from typing import Any

from edge_agent.drivers.base import SensorSpec
from edge_agent.drivers.i2c import I2CDriver, address_option, bus_option
from edge_agent.errors import DriverError

CHIP_ID = 0x60
REG_CALIB1, CALIB1_LEN = 0x88, 26  # dig_T1..dig_P9, (0xA0 unused), dig_H1
REG_ID = 0xD0
REG_RESET, RESET_WORD = 0xE0, 0xB6
REG_CALIB2, CALIB2_LEN = 0xE1, 7  # dig_H2..dig_H6
REG_CTRL_HUM, REG_STATUS, REG_CTRL_MEAS, REG_CONFIG, REG_DATA = 0xF2, 0xF3, 0xF4, 0xF5, 0xF7
STATUS_MEASURING, STATUS_IM_UPDATE = 0x08, 0x01
MODE_FORCED = 0b01
OVERSAMPLING = {1: 0b001, 2: 0b010, 4: 0b011, 8: 0b100, 16: 0b101}  # ctrl_meas / ctrl_hum osrs_x codes
SKIPPED_20, SKIPPED_16 = 0x80000, 0x8000  # a data register's value when its measurement is skipped


@dataclass(frozen=True)
class Calibration:
    """The chip's trimming parameters (``dig_T1`` .. ``dig_H6``), fixed in its NVM at the factory."""

    t1: int
    t2: int
    t3: int
    p1: int
    p2: int
    p3: int
    p4: int
    p5: int
    p6: int
    p7: int
    p8: int
    p9: int
    h1: int
    h2: int
    h3: int
    h4: int
    h5: int
    h6: int

    @classmethod
    def from_registers(cls, block1: bytes, block2: bytes) -> Calibration:
        """From the 26 bytes at 0x88..0xA1 and the 7 bytes at 0xE1..0xE7 (little-endian words;
        dig_H4 = 0xE4[7:0] 0xE5[3:0] and dig_H5 = 0xE6[7:0] 0xE5[7:4], signed 12 bit)."""
        if len(block1) != CALIB1_LEN or len(block2) != CALIB2_LEN:
            raise ValueError(f"calibration blocks must be {CALIB1_LEN} and {CALIB2_LEN} bytes")
        t_p = struct.unpack("<HhhHhhhhhhhh", bytes(block1[:24]))
        h2, h3, e4, e5, e6, h6 = struct.unpack("<hBBBBb", bytes(block2))
        h4, h5 = (e4 << 4) | (e5 & 0x0F), (e6 << 4) | (e5 >> 4)
        h4, h5 = (h4 - 4096 if h4 & 0x800 else h4), (h5 - 4096 if h5 & 0x800 else h5)
        names = [f.name for f in fields(cls)]
        return cls(**dict(zip(names, (*t_p, block1[25], h2, h3, h4, h5, h6), strict=True)))

    def to_registers(self) -> tuple[bytes, bytes]:
        """The inverse of :meth:`from_registers` (what a chip with these values holds)."""
        v = astuple(self)
        block1 = struct.pack("<HhhHhhhhhhhh", *v[:12]) + bytes([0, self.h1])
        h4, h5 = self.h4 & 0xFFF, self.h5 & 0xFFF
        block2 = struct.pack("<hBBBBb", self.h2, self.h3, h4 >> 4, (h4 & 0x0F) | (h5 & 0x0F) << 4, h5 >> 4, self.h6)
        return block1, block2


def compensate_temperature(adc_t: int, cal: Calibration) -> tuple[float, int]:
    """(°C clamped to -40..85, t_fine) from the 20-bit raw temperature (datasheet 8.1)."""
    var1 = (adc_t / 16384.0 - cal.t1 / 1024.0) * cal.t2
    var2 = (adc_t / 131072.0 - cal.t1 / 8192.0) ** 2 * cal.t3
    t_fine = int(var1 + var2)
    return min(max((var1 + var2) / 5120.0, -40.0), 85.0), t_fine


def compensate_pressure(adc_p: int, t_fine: int, cal: Calibration) -> float:
    """Pressure (Pa, clamped to 30000..110000) from the 20-bit raw pressure and ``t_fine``.

    Raises ``DriverError`` when the trimming parameters make the formula divide by zero."""
    var1 = t_fine / 2.0 - 64000.0
    var2 = var1 * var1 * cal.p6 / 32768.0
    var2 = var2 + var1 * cal.p5 * 2.0
    var2 = var2 / 4.0 + cal.p4 * 65536.0
    var1 = (cal.p3 * var1 * var1 / 524288.0 + cal.p2 * var1) / 524288.0
    var1 = (1.0 + var1 / 32768.0) * cal.p1
    if var1 == 0:
        raise DriverError("BME280: invalid trimming parameters (dig_P1 = 0)")
    p = 1048576.0 - adc_p
    p = (p - var2 / 4096.0) * 6250.0 / var1
    var1 = cal.p9 * p * p / 2147483648.0
    var2 = p * cal.p8 / 32768.0
    p = p + (var1 + var2 + cal.p7) / 16.0
    return min(max(p, 30000.0), 110000.0)


def compensate_humidity(adc_h: int, t_fine: int, cal: Calibration) -> float:
    """Relative humidity (%, clamped to 0..100) from the 16-bit raw humidity and ``t_fine``."""
    h = t_fine - 76800.0
    h = (adc_h - (cal.h4 * 64.0 + cal.h5 / 16384.0 * h)) * (
        cal.h2 / 65536.0 * (1.0 + cal.h6 / 67108864.0 * h * (1.0 + cal.h3 / 67108864.0 * h)))
    h = h * (1.0 - cal.h1 * h / 524288.0)
    return min(max(h, 0.0), 100.0)


def measurement_time(osrs_t: int, osrs_p: int, osrs_h: int) -> float:
    """Maximum time (s) of one forced measurement at these oversampling ratios (datasheet 9.1):
    1.25 + 2.3·T + (2.3·P + 0.575) + (2.3·H + 0.575) ms."""
    return (1.25 + 2.3 * osrs_t + (2.3 * osrs_p + 0.575) + (2.3 * osrs_h + 0.575)) / 1000


def parse_data(block: bytes) -> tuple[int, int, int]:
    """(adc_P, adc_T, adc_H) from the 8 bytes at 0xF7..0xFE (20, 20 and 16 bits, big-endian)."""
    adc_p = (block[0] << 12) | (block[1] << 4) | (block[2] >> 4)
    adc_t = (block[3] << 12) | (block[4] << 4) | (block[5] >> 4)
    return adc_p, adc_t, (block[6] << 8) | block[7]


OSRS = {"type": "integer", "enum": list(OVERSAMPLING), "default": 1}


class BME280(I2CDriver):
    """A Bosch BME280 on I2C, one forced-mode measurement per read.

    Options: ``bus`` (default 1), ``address`` (0x76 default, 0x77),
    ``temperature_oversampling`` / ``pressure_oversampling`` / ``humidity_oversampling``
    (1, 2, 4, 8 or 16; default 1: Bosch's weather-monitoring setting; more lowers noise and
    lengthens the measurement, 9.3 ms at 1/1/1, 113 ms at 16/16/16).
    Sensors: ``temperature`` (°C, -40..85), ``humidity`` (%, 0..100), ``pressure`` (hPa,
    300..1100). Errors (``DriverError``): no answer at the address, another chip there (a BMP280
    has no humidity: chip id 0x58), a measurement that does not finish.
    """

    kind = "bme280"
    chip = "BME280"
    description = "Bosch BME280 temperature, humidity and pressure sensor (I2C)"
    options_schema = {
        "type": "object",
        "properties": {
            "bus": bus_option(),
            "address": address_option({0x76: "SDO to GND, most breakout boards", 0x77: "SDO to VDDIO, Adafruit"}),
            "temperature_oversampling": OSRS | {"description": "temperature oversampling ratio (samples per reading)"},
            "pressure_oversampling": OSRS | {"description": "pressure oversampling ratio (samples per reading)"},
            "humidity_oversampling": OSRS | {"description": "humidity oversampling ratio (samples per reading)"},
        },
        "additionalProperties": False,
    }

    def __init__(self, name, options, *, context):
        super().__init__(name, options, context=context)
        self.osrs = tuple(self.options.get(f"{q}_oversampling", 1) for q in ("temperature", "pressure", "humidity"))
        self.calibration: Calibration | None = None

    def setup(self, bus: Any) -> None:
        chip_id = bus.read_byte_data(self.address, REG_ID)
        if chip_id != CHIP_ID:
            other = {0x58: " (a BMP280: no humidity sensor)", 0x61: " (a BME680)"}.get(chip_id, "")
            raise DriverError(f"{self.where}: chip id 0x{chip_id:02X}{other}, not a BME280 (0x60)")
        bus.write_byte_data(self.address, REG_RESET, RESET_WORD)
        deadline = time.monotonic() + 0.05
        time.sleep(0.002)  # start-up time after a soft reset (datasheet table 1: 2 ms)
        while bus.read_byte_data(self.address, REG_STATUS) & STATUS_IM_UPDATE:  # NVM still being copied
            if time.monotonic() > deadline:
                raise DriverError(f"{self.where}: the trimming parameters are not loaded after reset")
            time.sleep(0.001)
        self.calibration = Calibration.from_registers(
            bytes(bus.read_i2c_block_data(self.address, REG_CALIB1, CALIB1_LEN)),
            bytes(bus.read_i2c_block_data(self.address, REG_CALIB2, CALIB2_LEN)))
        bus.write_byte_data(self.address, REG_CONFIG, 0x00)  # IIR filter off, no standby (forced mode)

    def _measure(self, bus: Any) -> dict[str, float]:
        t, p, h = (OVERSAMPLING[o] for o in self.osrs)
        bus.write_byte_data(self.address, REG_CTRL_HUM, h)  # effective after the ctrl_meas write below
        bus.write_byte_data(self.address, REG_CTRL_MEAS, t << 5 | p << 2 | MODE_FORCED)
        time.sleep(measurement_time(*self.osrs))
        for _ in range(20):
            if not bus.read_byte_data(self.address, REG_STATUS) & STATUS_MEASURING:
                break
            time.sleep(0.001)
        else:
            raise DriverError(f"{self.where}: the forced measurement did not finish")
        adc_p, adc_t, adc_h = parse_data(bytes(bus.read_i2c_block_data(self.address, REG_DATA, 8)))
        # After a reset all three hold 0x80000/0x80000/0x8000 (datasheet 5.4.7-5.4.9). One channel
        # alone at that value is a real reading (humidity near 66 %RH gives adc_H 0x8000), so only
        # all three together say that no measurement happened.
        if adc_t == SKIPPED_20 and adc_p == SKIPPED_20 and adc_h == SKIPPED_16:
            raise DriverError(f"{self.where}: the data registers hold their reset values (no measurement "
                              "happened: the chip was reset or lost power during the read)")
        assert self.calibration is not None
        celsius, t_fine = compensate_temperature(adc_t, self.calibration)
        return {"temperature": round(celsius, 2),
                "humidity": round(compensate_humidity(adc_h, t_fine, self.calibration), 2),
                "pressure": round(compensate_pressure(adc_p, t_fine, self.calibration) / 100, 2)}

    def read(self) -> dict[str, float]:
        """One forced measurement: ``{"temperature": °C, "humidity": %, "pressure": hPa}``."""
        return self.transfer(self._measure)

    def sensors(self) -> list[SensorSpec]:
        t_max = measurement_time(*self.osrs)
        every = round(t_max + 0.0005, 3)  # the hardware cannot measure faster (rounded up to the ms)
        return [
            SensorSpec("temperature", "air temperature (°C)", lambda: self.read()["temperature"], unit="°C",
                       min_interval=every, poll_interval=10.0, deadband=0.1,
                       value_schema={"type": "number", "minimum": -40, "maximum": 85}),
            SensorSpec("humidity", "relative humidity (%)", lambda: self.read()["humidity"], unit="%",
                       min_interval=every, poll_interval=10.0, deadband=0.5,
                       value_schema={"type": "number", "minimum": 0, "maximum": 100}),
            SensorSpec("pressure", "barometric pressure at the sensor, not reduced to sea level (hPa)",
                       lambda: self.read()["pressure"], unit="hPa", min_interval=every, poll_interval=30.0,
                       deadband=0.1, value_schema={"type": "number", "minimum": 300, "maximum": 1100}),
        ]
