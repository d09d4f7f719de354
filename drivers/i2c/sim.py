"""A simulated I2C bus with register-level models of the BME280, SHT3x, BH1750 and ADS1115.

:class:`SimulatedBus` offers the subset of smbus2's ``SMBus`` the drivers use
(``read_byte_data``, ``write_byte_data``, ``read_i2c_block_data``, ``write_i2c_block_data``,
``i2c_rdwr`` with ``i2c_msg``, ``close``) and turns each call into the byte transfers a real
bus carries: a write transfer (``chip.write(bytes)``) and a read transfer (``chip.read(n)``).
An address where no chip is attached raises ``OSError(EREMOTEIO)`` like the Pi's I2C
controller. Each chip model reads its physical inputs from an ``environment()`` callable
(``{"temperature": °C, "humidity": %, "pressure": hPa, "illuminance": lx, "ain": [V] * 4}``);
the default, :func:`greenhouse`, drifts slowly with the time of day.
"""

from __future__ import annotations

import errno
import math
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from edge_agent.drivers.i2c import bh1750, bme280, sht3x
from edge_agent.drivers.i2c.ads1115 import (
    DATA_RATE,
    FULL_SCALE,
    MODE_SINGLE,
    OS_START,
    REG_CONFIG,
    REG_CONVERSION,
)

Environment = Callable[[], Mapping[str, Any]]
I2C_M_RD = 0x0001


def greenhouse() -> dict[str, Any]:
    """A greenhouse's physical state now: slow swings (1-hour period) plus sensor noise."""
    phase = 2 * math.pi * time.time() / 3600
    return {
        "temperature": 22 + 3 * math.sin(phase) + random.gauss(0, 0.02),
        "humidity": 65 - 10 * math.sin(phase) + random.gauss(0, 0.2),
        "pressure": 1013.25 + 2 * math.sin(phase / 24) + random.gauss(0, 0.02),
        "illuminance": max(0.0, 12000 + 10000 * math.sin(phase) + random.gauss(0, 50)),
        # capacitive soil probes: about 2.8 V in dry air, 1.2 V in water
        "ain": [2.0 + 0.4 * math.sin(phase + k) + random.gauss(0, 0.002) for k in range(4)],
    }


class SimulatedChip:
    """A chip on the simulated bus: ``write(data)`` receives a write transfer, ``read(n)``
    answers a read transfer with ``n`` bytes; either raises ``OSError`` for a NACK."""

    def __init__(self, environment: Environment = greenhouse):
        self.environment = environment
        self.lock = threading.Lock()

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def read(self, length: int) -> bytes:
        raise NotImplementedError


def nack() -> OSError:
    return OSError(errno.EREMOTEIO, os.strerror(errno.EREMOTEIO))


class SimulatedBus:
    """An I2C bus with simulated chips attached by 7-bit address (see the module docstring)."""

    def __init__(self, chips: Mapping[int, SimulatedChip] | None = None):
        self.chips: dict[int, SimulatedChip] = dict(chips or {})
        self.transfers = 0  # how many transfers reached a chip (for tests)

    @classmethod
    def populated(cls, environment: Environment = greenhouse) -> SimulatedBus:
        """A bus with a BME280 at 0x76 and 0x77, an SHT3x at 0x44 and 0x45, a BH1750 at 0x23 and
        0x5C and an ADS1115 at 0x48..0x4B, all reading ``environment``."""
        chips: dict[int, SimulatedChip] = {}
        for addresses, model in (((0x76, 0x77), BME280Model), ((0x44, 0x45), SHT3xModel),
                                 ((0x23, 0x5C), BH1750Model), ((0x48, 0x49, 0x4A, 0x4B), ADS1115Model)):
            for address in addresses:
                chips[address] = model(environment)
        return cls(chips)

    def attach(self, address: int, chip: SimulatedChip) -> None:
        self.chips[address] = chip

    def detach(self, address: int) -> None:
        """Unplug the chip at ``address`` (its transfers then fail with errno 121)."""
        self.chips.pop(address, None)

    def _chip(self, address: int) -> SimulatedChip:
        chip = self.chips.get(address)
        if chip is None:
            raise nack()
        self.transfers += 1
        return chip

    def _write_read(self, address: int, register: int, length: int) -> list[int]:
        chip = self._chip(address)
        with chip.lock:
            chip.write(bytes([register]))
            return list(chip.read(length))

    def read_byte_data(self, i2c_addr: int, register: int, force: bool | None = None) -> int:
        return self._write_read(i2c_addr, register, 1)[0]

    def read_i2c_block_data(self, i2c_addr: int, register: int, length: int, force: bool | None = None) -> list[int]:
        if not 1 <= length <= 32:
            raise ValueError("Desired block length over 32 bytes")  # smbus2's own limit
        return self._write_read(i2c_addr, register, length)

    def write_byte_data(self, i2c_addr: int, register: int, value: int, force: bool | None = None) -> None:
        chip = self._chip(i2c_addr)
        with chip.lock:
            chip.write(bytes([register, value]))

    def write_i2c_block_data(self, i2c_addr: int, register: int, data: list[int], force: bool | None = None) -> None:
        chip = self._chip(i2c_addr)
        with chip.lock:
            chip.write(bytes([register, *data]))

    def i2c_rdwr(self, *messages: Any) -> None:
        for msg in messages:
            chip = self._chip(msg.addr)
            with chip.lock:
                if msg.flags & I2C_M_RD:
                    data = chip.read(msg.len)
                    for i, byte in enumerate(data):
                        msg.buf[i] = bytes([byte])
                else:
                    chip.write(bytes(msg))

    def close(self) -> None:
        """Nothing to release: the bus is shared by the drivers of one context."""


def _invert(function: Callable[[int], float], target: float, low: int, high: int) -> int:
    """The raw value in low..high whose ``function`` (monotonic) is closest to ``target``."""
    rising = function(high) >= function(low)
    while high - low > 1:
        mid = (low + high) // 2
        if (function(mid) < target) == rising:
            low = mid
        else:
            high = mid
    return min((low, high), key=lambda raw: abs(function(raw) - target))


class BME280Model(SimulatedChip):
    """A BME280's registers: chip id, soft reset, ctrl_hum latched by ctrl_meas, forced mode
    (measuring for the datasheet's maximum time, then back to sleep), the trimming parameters of
    :data:`CALIBRATION`, and data registers holding the raw values whose compensation gives the
    environment's temperature, humidity and pressure (found by inverting the formulas)."""

    # The BMP280 datasheet's example trimming values (section 3.12) and a real chip's humidity set.
    CALIBRATION = bme280.Calibration(27504, 26435, -1000, 36477, -10685, 3024, 2855, 140, -7, 15500, -14600, 6000,
                                     75, 362, 0, 324, 50, 30)

    def __init__(self, environment: Environment = greenhouse, calibration: bme280.Calibration = CALIBRATION):
        super().__init__(environment)
        self.calibration = calibration
        self.pointer = 0
        self.regs = bytearray(256)
        block1, block2 = calibration.to_registers()
        self.regs[bme280.REG_CALIB1:bme280.REG_CALIB1 + len(block1)] = block1
        self.regs[bme280.REG_CALIB2:bme280.REG_CALIB2 + len(block2)] = block2
        self.regs[bme280.REG_ID] = bme280.CHIP_ID
        self._reset()

    def _reset(self) -> None:
        for reg in (bme280.REG_CTRL_HUM, bme280.REG_STATUS, bme280.REG_CTRL_MEAS, bme280.REG_CONFIG):
            self.regs[reg] = 0
        self.regs[0xF7:0xFF] = bytes([0x80, 0, 0, 0x80, 0, 0, 0x80, 0])
        self.osrs_h = 0
        self.done_at = 0.0
        self.pending: bytes | None = None

    def raw_values(self, celsius: float, humidity: float, hpa: float) -> tuple[int, int, int]:
        """(adc_T, adc_H, adc_P) that compensate to these physical values."""
        cal = self.calibration
        adc_t = _invert(lambda raw: bme280.compensate_temperature(raw, cal)[0], celsius, 0, 0xFFFFF)
        t_fine = bme280.compensate_temperature(adc_t, cal)[1]
        adc_h = _invert(lambda raw: bme280.compensate_humidity(raw, t_fine, cal), humidity, 0, 0xFFFF)
        adc_p = _invert(lambda raw: bme280.compensate_pressure(raw, t_fine, cal), hpa * 100, 0, 0xFFFFF)
        return adc_t, adc_h, adc_p

    def _convert(self, ctrl_meas: int) -> None:
        env = self.environment()
        adc_t, adc_h, adc_p = self.raw_values(env["temperature"], env["humidity"], env["pressure"])
        osrs_t, osrs_p = ctrl_meas >> 5, ctrl_meas >> 2 & 0b111
        if not osrs_t:
            adc_t = bme280.SKIPPED_20
        if not osrs_p:
            adc_p = bme280.SKIPPED_20
        if not self.osrs_h:
            adc_h = bme280.SKIPPED_16
        ratio = {0: 0, 1: 1, 2: 2, 3: 4, 4: 8}
        self.pending = bytes([adc_p >> 12, adc_p >> 4 & 0xFF, (adc_p & 0xF) << 4,
                              adc_t >> 12, adc_t >> 4 & 0xFF, (adc_t & 0xF) << 4, adc_h >> 8, adc_h & 0xFF])
        self.done_at = time.monotonic() + bme280.measurement_time(
            ratio.get(osrs_t, 16), ratio.get(osrs_p, 16), ratio.get(self.osrs_h, 16))

    def _settle(self) -> None:
        if self.pending is not None and time.monotonic() >= self.done_at:
            self.regs[0xF7:0xFF] = self.pending
            self.pending = None
            self.regs[bme280.REG_CTRL_MEAS] &= ~0b11  # forced mode ends in sleep mode

    def write(self, data: bytes) -> None:
        if not data:
            return
        self.pointer = data[0]
        for reg, value in zip(data[0::2], data[1::2]):  # writes are (register, value) pairs
            if reg == bme280.REG_RESET:
                if value == bme280.RESET_WORD:
                    self._reset()
            elif reg == bme280.REG_CTRL_HUM:
                self.regs[reg] = value & 0b111
            elif reg == bme280.REG_CTRL_MEAS:
                self.regs[reg] = value
                self.osrs_h = self.regs[bme280.REG_CTRL_HUM]  # ctrl_hum takes effect now
                if value & 0b11 in (0b01, 0b10):
                    self._convert(value)
            elif reg in (bme280.REG_CONFIG,):
                self.regs[reg] = value
            # calibration, id, status and data registers are read-only

    def read(self, length: int) -> bytes:
        self._settle()
        self.regs[bme280.REG_STATUS] = bme280.STATUS_MEASURING if self.pending is not None else 0
        out = bytes(self.regs[(self.pointer + i) & 0xFF] for i in range(length))
        self.pointer = (self.pointer + length) & 0xFF
        return out


class SHT3xModel(SimulatedChip):
    """An SHT3x: 16-bit commands; a single-shot measurement (without clock stretching) is
    ready after the datasheet's maximum duration, and a read before that, or with nothing to
    read, is NACKed. ``corrupt_crc = True`` flips a bit of the next answer's humidity CRC."""

    def __init__(self, environment: Environment = greenhouse):
        super().__init__(environment)
        self.ready_at: float | None = None
        self.answer = b""
        self.corrupt_crc = False

    def write(self, data: bytes) -> None:
        if len(data) != 2:
            raise nack()
        command = data[0] << 8 | data[1]
        repeatability = {v: k for k, v in sht3x.SINGLE_SHOT.items()}.get(command)
        if command == sht3x.SOFT_RESET:
            self.ready_at, self.answer = None, b""
        elif repeatability is not None:
            env = self.environment()
            s_t = round((env["temperature"] + 45) * 65535 / 175)
            s_rh = round(env["humidity"] * 65535 / 100)
            self.answer = sht3x.with_crc(min(max(s_t, 0), 65535)) + sht3x.with_crc(min(max(s_rh, 0), 65535))
            self.ready_at = time.monotonic() + sht3x.DURATION[repeatability] * 0.8
        else:
            raise nack()

    def read(self, length: int) -> bytes:
        if self.ready_at is None or time.monotonic() < self.ready_at:
            raise nack()  # no measurement, or not finished: the sensor NACKs its read header
        answer, self.ready_at = bytearray(self.answer[:length]), None
        if self.corrupt_crc and len(answer) == 6:
            answer[5] ^= 0x01
            self.corrupt_crc = False
        return bytes(answer)


class BH1750Model(SimulatedChip):
    """A BH1750: opcodes power down/on, reset, MTreg, one-time H-resolution modes (then power
    down). A measurement command is ignored while powered down; a read returns the data register
    (the previous result until the measurement is done)."""

    def __init__(self, environment: Environment = greenhouse):
        super().__init__(environment)
        self.powered = False
        self.mtreg = bh1750.DEFAULT_MTREG
        self.data = 0
        self.pending: tuple[float, int] | None = None

    def _settle(self) -> None:
        if self.pending is not None and time.monotonic() >= self.pending[0]:
            self.data, self.pending = self.pending[1], None

    def write(self, data: bytes) -> None:
        self._settle()
        for opcode in data:
            if opcode == 0x00:
                self.powered = False
            elif opcode == bh1750.POWER_ON:
                self.powered = True
            elif opcode == 0x07 and self.powered:
                self.data = 0
            elif opcode & 0xF8 == 0x40:
                self.mtreg = (self.mtreg & 0x1F) | (opcode & 0x07) << 5
            elif opcode & 0xE0 == 0x60:
                self.mtreg = (self.mtreg & 0xE0) | (opcode & 0x1F)
            elif opcode in bh1750.ONE_TIME.values() and self.powered:
                mode = "high2" if opcode == bh1750.ONE_TIME["high2"] else "high"
                lux = self.environment()["illuminance"]
                count = round(lux * 1.2 * self.mtreg / bh1750.DEFAULT_MTREG * (2 if mode == "high2" else 1))
                self.pending = (time.monotonic() + 0.120 * self.mtreg / bh1750.DEFAULT_MTREG, min(count, 0xFFFF))
                self.powered = False  # one-time modes power down after the measurement

    def read(self, length: int) -> bytes:
        self._settle()
        return bytes([self.data >> 8, self.data & 0xFF][:length])


class ADS1115Model(SimulatedChip):
    """An ADS1115: pointer register, config (reset 0x8583) and conversion registers; writing
    OS = 1 in single-shot mode converts the MUX input (single-ended or differential, from the
    environment's ``ain`` volts) at the PGA full scale, clipped to the 16-bit range, and the
    config reads OS = 0 for 1/data_rate s."""

    def __init__(self, environment: Environment = greenhouse):
        super().__init__(environment)
        self.pointer = 0
        self.regs = {0: 0, 1: 0x8583, 2: 0x8000, 3: 0x7FFF}
        self.pending: tuple[float, int] | None = None
        self.conversions = 0

    def _settle(self) -> None:
        if self.pending is not None and time.monotonic() >= self.pending[0]:
            self.regs[REG_CONVERSION], self.pending = self.pending[1], None

    def _start(self, config: int) -> None:
        ain = self.environment()["ain"]
        mux = config >> 12 & 0b111
        positive, negative = {0: (0, 1), 1: (0, 3), 2: (1, 3), 3: (2, 3)}.get(mux, (mux - 4, None))
        volts = ain[positive] - (ain[negative] if negative is not None else 0.0)
        full_scale = {v: k for k, v in FULL_SCALE.items()}.get(config >> 9 & 0b111, 0.256)
        code = min(max(round(volts / full_scale * 32768), -32768), 32767) & 0xFFFF
        rate = {v: k for k, v in DATA_RATE.items()}[config >> 5 & 0b111]
        self.pending = (time.monotonic() + 1 / rate, code)
        self.conversions += 1

    def write(self, data: bytes) -> None:
        self._settle()
        if not data:
            return
        self.pointer = data[0] & 0b11
        if len(data) >= 3 and self.pointer != REG_CONVERSION:
            value = data[1] << 8 | data[2]
            if self.pointer == REG_CONFIG:
                self.regs[REG_CONFIG] = value & ~OS_START
                if value & OS_START and value & MODE_SINGLE and self.pending is None:
                    self._start(value)
            else:
                self.regs[self.pointer] = value

    def read(self, length: int) -> bytes:
        self._settle()
        value = self.regs[self.pointer]
        if self.pointer == REG_CONFIG and self.pending is None:
            value |= OS_START  # OS reads 1 when no conversion is running
        return bytes([value >> 8, value & 0xFF] * (length // 2 + 1))[:length]
