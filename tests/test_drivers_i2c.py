"""I2C sensors (BME280, SHT3x, BH1750, ADS1115): datasheet maths, register handling against the
simulated chips, errors, and the four read through a running agent over real Mosquitto."""

from __future__ import annotations

import errno
import json
import os
import random
import subprocess
import sys

import jsonschema
import pytest
from smbus2 import i2c_msg

from edge_agent.drivers import driver_class
from edge_agent.drivers.base import DriverContext
from edge_agent.drivers.i2c import ads1115, bh1750, bme280, sht3x
from edge_agent.drivers.i2c.sim import (
    ADS1115Model,
    BH1750Model,
    BME280Model,
    SHT3xModel,
    SimulatedBus,
)
from edge_agent.errors import DriverError

from .agent_process import AgentProcess, write_config

ENV = {"temperature": 23.4, "humidity": 55.5, "pressure": 987.65, "illuminance": 1234.5,
       "ain": [0.5, 1.25, 2.0, 3.1]}


def bench(*chips: tuple[int, object]) -> tuple[DriverContext, SimulatedBus]:
    bus = SimulatedBus(dict(chips))
    return DriverContext(simulate=True, i2c_opener=lambda n: bus), bus


def fixed(**changes):
    env = ENV | changes
    return lambda: env


def sensor(driver, name):
    return next(s for s in driver.sensors() if s.name == name)


# --------------------------------------------------------------------------- BME280 maths

# Bosch's worked example (BMP280 datasheet BST-BMP280-DS001 section 3.12; BME280 shares the
# temperature and pressure formulas and the dig_T/dig_P layout): adc_T = 519888 gives
# t_fine = 128422 and 25.08 °C, adc_P = 415148 gives 100653.27 Pa.
DATASHEET = bme280.Calibration(27504, 26435, -1000, 36477, -10685, 3024, 2855, 140, -7, 15500, -14600, 6000,
                               75, 362, 0, 324, 50, 30)
# pimoroni/bme280-python's test vectors (double formulas, t_fine kept as a float there).
PIMORONI = bme280.Calibration(28009, 25654, 50, 39145, -10750, 3024, 5667, -120, -7, 15500, -14600, 6000,
                              75, 376, 0, 286, 50, 30)


def test_bme280_datasheet_example():
    celsius, t_fine = bme280.compensate_temperature(519888, DATASHEET)
    assert t_fine == 128422 and round(celsius, 2) == 25.08
    assert abs(bme280.compensate_pressure(415148, t_fine, DATASHEET) - 100653.27) < 0.05


def test_bme280_published_vectors():
    celsius, t_fine = bme280.compensate_temperature(529191, PIMORONI)
    assert round(celsius, 4) == round(24.7894877676, 4)
    assert abs(bme280.compensate_pressure(326816, t_fine, PIMORONI) - 100661.517564) < 0.01
    assert abs(bme280.compensate_humidity(30281, t_fine, PIMORONI) - 68.66996648709039) < 1e-4


def _cdiv(a: int, b: int) -> int:  # C's integer division truncates toward zero
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def int_temperature(adc_t, c):
    """Datasheet 4.2.3 BME280_compensate_T_int32: (0.01 °C, t_fine)."""
    var1 = (((adc_t >> 3) - (c.t1 << 1)) * c.t2) >> 11
    var2 = (((((adc_t >> 4) - c.t1) * ((adc_t >> 4) - c.t1)) >> 12) * c.t3) >> 14
    return ((var1 + var2) * 5 + 128) >> 8, var1 + var2


def int_pressure(adc_p, t_fine, c):
    """Datasheet 4.2.3 BME280_compensate_P_int64: Pa in Q24.8."""
    var1 = t_fine - 128000
    var2 = var1 * var1 * c.p6 + ((var1 * c.p5) << 17) + (c.p4 << 35)
    var1 = ((var1 * var1 * c.p3) >> 8) + ((var1 * c.p2) << 12)
    var1 = (((1 << 47) + var1) * c.p1) >> 33
    p = _cdiv((((1048576 - adc_p) << 31) - var2) * 3125, var1)
    var1 = (c.p9 * (p >> 13) * (p >> 13)) >> 25
    var2 = (c.p8 * p) >> 19
    return ((p + var1 + var2) >> 8) + (c.p7 << 4)


def int_humidity(adc_h, t_fine, c):
    """Datasheet 4.2.3 bme280_compensate_H_int32: %RH in Q22.10."""
    v = t_fine - 76800
    v = ((((adc_h << 14) - (c.h4 << 20) - (c.h5 * v)) + 16384) >> 15) * (
        ((((((v * c.h6) >> 10) * (((v * c.h3) >> 11) + 32768)) >> 10) + 2097152) * c.h2 + 8192) >> 14)
    v = v - (((((v >> 15) * (v >> 15)) >> 7) * c.h1) >> 4)
    return min(max(v, 0), 419430400) >> 12


def test_bme280_integer_formulas_agree_with_the_driver():
    assert int_temperature(519888, DATASHEET) == (2508, 128422)
    rng = random.Random(7)
    for cal in (DATASHEET, PIMORONI, BME280Model.CALIBRATION):
        for _ in range(300):
            adc_t, adc_p, adc_h = rng.randrange(400000, 600000), rng.randrange(250000, 450000), rng.randrange(20000, 45000)
            centi, t_fine = int_temperature(adc_t, cal)
            celsius, t_fine_d = bme280.compensate_temperature(adc_t, cal)
            if not -40 < celsius < 85:
                continue
            assert abs(centi / 100 - celsius) <= 0.011 and abs(t_fine - t_fine_d) <= 16  # 1/5120 °C units
            pa = bme280.compensate_pressure(adc_p, t_fine_d, cal)
            if 30000 < pa < 110000:
                assert abs(int_pressure(adc_p, t_fine, cal) / 256 - pa) < 1.0
            rh = bme280.compensate_humidity(adc_h, t_fine_d, cal)
            assert abs(int_humidity(adc_h, t_fine, cal) / 1024 - rh) < 0.02


def test_bme280_trimming_registers_layout():
    block1 = bytes.fromhex("706b436718fc7d8e43d6d00b270b8c00f9ff8c3cf8c67017") + bytes([0x00, 0x4B])
    block2 = bytes([0x6A, 0x01, 0x00, 0x14, 0x2A, 0x03, 0x1E])
    cal = bme280.Calibration.from_registers(block1, block2)
    assert (cal.t1, cal.t2, cal.t3) == (27504, 26435, -1000)
    assert (cal.p1, cal.p2, cal.p3, cal.p9) == (36477, -10685, 3024, 6000)
    assert (cal.h1, cal.h2, cal.h3, cal.h4, cal.h5, cal.h6) == (75, 362, 0, 0x14A, 0x032, 30)
    negative = bme280.Calibration.from_registers(block1, bytes([0x6A, 0x01, 0x00, 0xF0, 0x8F, 0xFF, 0xE2]))
    assert (negative.h4, negative.h5, negative.h6) == (-241, -8, -30)  # 0xF0F, 0xFF8: signed 12 bit
    assert bme280.Calibration.from_registers(*cal.to_registers()) == cal
    assert bme280.Calibration.from_registers(*negative.to_registers()) == negative


def test_bme280_measurement_time_is_the_datasheet_maximum():
    assert bme280.measurement_time(1, 1, 1) == pytest.approx(0.0093)  # datasheet 9.1: 9.3 ms
    assert bme280.measurement_time(16, 16, 16) == pytest.approx(0.1128)


# --------------------------------------------------------------------------- BME280 driver


def test_bme280_reads_the_simulated_chip_in_forced_mode():
    chip = BME280Model(fixed())
    ctx, _ = bench((0x77, chip))
    driver = driver_class("bme280")("air", {"address": 0x77, "temperature_oversampling": 2,
                                            "humidity_oversampling": 4}, context=ctx)
    assert abs(sensor(driver, "temperature").read() - 23.4) <= 0.01
    assert abs(sensor(driver, "humidity").read() - 55.5) <= 0.02
    assert abs(sensor(driver, "pressure").read() - 987.65) <= 0.01
    assert {s.name: s.unit for s in driver.sensors()} == {"temperature": "°C", "humidity": "%", "pressure": "hPa"}
    ctrl_meas = chip.regs[bme280.REG_CTRL_MEAS]
    assert ctrl_meas >> 5 == 0b010 and ctrl_meas >> 2 & 7 == 0b001 and ctrl_meas & 3 == 0  # back to sleep
    assert chip.regs[bme280.REG_CTRL_HUM] == 0b011
    driver.close()


def test_bme280_a_real_reading_equal_to_a_reset_value_is_a_reading():
    """adc_H 0x8000 is what a reset leaves in the humidity registers, and also what the chip
    measures near 66 %RH: only all three channels at their reset values mean "no measurement"
    (a CI run once failed a greenhouse humidity read this way)."""
    chip = BME280Model(fixed())
    t_fine = bme280.compensate_temperature(chip.raw_values(ENV["temperature"], 50, 1000)[0], chip.calibration)[1]
    humidity = bme280.compensate_humidity(0x8000, t_fine, chip.calibration)
    assert 60 < humidity < 70
    chip = BME280Model(fixed(humidity=humidity))
    assert chip.raw_values(ENV["temperature"], humidity, ENV["pressure"])[1] == 0x8000
    ctx, _ = bench((0x77, chip))
    driver = driver_class("bme280")("air", {"address": 0x77}, context=ctx)
    assert sensor(driver, "humidity").read() == pytest.approx(humidity, abs=0.01)
    driver.close()

    class PowerLoss(BME280Model):  # the chip loses power during the measurement
        def _convert(self, ctrl_meas: int) -> None:
            super()._convert(ctrl_meas)
            self.pending = bytes([0x80, 0, 0, 0x80, 0, 0, 0x80, 0])

    ctx, _ = bench((0x77, PowerLoss(fixed())))
    driver = driver_class("bme280")("air", {"address": 0x77}, context=ctx)
    with pytest.raises(DriverError, match="reset values"):
        sensor(driver, "humidity").read()
    driver.close()


def test_bme280_other_chip_and_unplugged_and_recovery():
    chip = BME280Model(fixed())
    chip.regs[bme280.REG_ID] = 0x58
    ctx, bus = bench((0x76, chip))
    driver = driver_class("bme280")("air", {}, context=ctx)
    with pytest.raises(DriverError, match="0x58 .a BMP280: no humidity sensor"):
        sensor(driver, "temperature").read()
    chip.regs[bme280.REG_ID] = bme280.CHIP_ID
    assert sensor(driver, "temperature").read() == pytest.approx(23.4, abs=0.01)
    bus.detach(0x76)
    with pytest.raises(DriverError, match=r"BME280 at 0x76 on /dev/i2c-1: no answer .*SDA GPIO2") as exc:
        sensor(driver, "humidity").read()
    assert isinstance(exc.value.__cause__, OSError) and exc.value.__cause__.errno == errno.EREMOTEIO
    bus.attach(0x76, BME280Model(fixed(temperature=-5.0)))  # replugged: set up again
    assert sensor(driver, "temperature").read() == pytest.approx(-5.0, abs=0.01)


# --------------------------------------------------------------------------- SHT3x


def test_sht3x_crc_datasheet_vector():
    assert sht3x.crc8(bytes([0xBE, 0xEF])) == 0x92
    assert sht3x.with_crc(0xBEEF) == bytes([0xBE, 0xEF, 0x92])


def test_sht3x_conversion_and_every_crc_checked():
    data = sht3x.with_crc(0x6666) + sht3x.with_crc(0x8000)
    t, rh = sht3x.parse_measurement(data)
    assert t == pytest.approx(-45 + 175 * 0x6666 / 65535) and rh == pytest.approx(100 * 0x8000 / 65535)
    for i, word in ((2, "temperature"), (5, "humidity")):
        bad = bytearray(data)
        bad[i] ^= 0x10
        with pytest.raises(DriverError, match=f"CRC mismatch on the {word} word"):
            sht3x.parse_measurement(bytes(bad))
    bad = bytearray(data)
    bad[0] ^= 0x01  # a flipped data bit is caught too
    with pytest.raises(DriverError, match="CRC mismatch on the temperature word"):
        sht3x.parse_measurement(bytes(bad))


def test_sht3x_reads_and_reports_a_corrupted_crc():
    chip = SHT3xModel(fixed())
    ctx, _ = bench((0x45, chip))
    driver = driver_class("sht3x")("air2", {"address": 0x45, "repeatability": "medium"}, context=ctx)
    assert sensor(driver, "temperature").read() == pytest.approx(23.4, abs=0.01)
    assert sensor(driver, "humidity").read() == pytest.approx(55.5, abs=0.01)
    assert sensor(driver, "temperature").min_interval == 0.006
    chip.corrupt_crc = True
    with pytest.raises(DriverError, match="SHT3x at 0x45 on /dev/i2c-1: CRC mismatch on the humidity word"):
        sensor(driver, "humidity").read()
    assert sensor(driver, "humidity").read() == pytest.approx(55.5, abs=0.01)


def test_sht3x_read_before_the_measurement_is_nacked():
    chip = SHT3xModel(fixed())
    bus = SimulatedBus({0x44: chip})
    bus.i2c_rdwr(i2c_msg.write(0x44, [0x24, 0x00]))
    early = i2c_msg.read(0x44, 6)
    with pytest.raises(OSError) as exc:
        bus.i2c_rdwr(early)
    assert exc.value.errno == errno.EREMOTEIO


@pytest.mark.parametrize("kind,address", [("sht3x", 0x44), ("bme280", 0x76)])
def test_sensors_of_one_chip_read_from_two_threads_never_interleave(kind, address):
    """The runtime reads each sensor in a worker thread: temperature and humidity of one chip
    at the same moment. A command-wait-read sequence interleaved with the other's command makes
    the chip NACK (the demo's canopy SHT3x failed with "no answer" this way)."""
    import threading

    ctx = DriverContext.simulated("/tmp")
    driver = driver_class(kind)("chip", {"address": address}, context=ctx)
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def read(name: str) -> None:
        start.wait()
        for _ in range(30):
            try:
                sensor(driver, name).read()
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

    threads = [threading.Thread(target=read, args=(n,)) for n in ("temperature", "humidity")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors[:3]


# --------------------------------------------------------------------------- BH1750


def test_bh1750_opcodes_and_conversion():
    assert bh1750.mtreg_bytes(69) == (0x42, 0x65)  # datasheet: 01000_010, 011_00101
    assert bh1750.mtreg_bytes(31) == (0x40, 0x7F) and bh1750.mtreg_bytes(254) == (0x47, 0x7E)
    with pytest.raises(ValueError):
        bh1750.mtreg_bytes(30)
    assert bh1750.to_lux(1200) == pytest.approx(1000)
    assert bh1750.to_lux(1200, "high2") == pytest.approx(500)
    assert bh1750.to_lux(2400, "high", 138) == pytest.approx(1000)
    assert bh1750.to_lux(0xFFFF) == pytest.approx(54612.5)


@pytest.mark.parametrize("options", [{}, {"mode": "high2"}, {"mtreg": 138}, {"mtreg": 31, "address": 0x5C}])
def test_bh1750_reads_the_simulated_chip(options):
    chip = BH1750Model(fixed())
    ctx, _ = bench((options.get("address", 0x23), chip))
    driver = driver_class("bh1750")("light", options, context=ctx)
    step = bh1750.to_lux(1, options.get("mode", "high"), options.get("mtreg", 69))
    assert abs(driver.read() - 1234.5) <= step
    assert chip.mtreg == options.get("mtreg", 69) and not chip.powered  # one-time mode powered down
    assert sensor(driver, "illuminance").min_interval == round(0.18 * options.get("mtreg", 69) / 69, 3)


# --------------------------------------------------------------------------- ADS1115


def test_ads1115_config_word_bits():
    assert ads1115.config_word(0, 2.048, 128) == 0xC583  # AIN0/GND, ±2.048 V, single-shot, 128 SPS
    assert ads1115.config_word(3, 6.144, 860) == 0xF1E3
    word = ads1115.config_word(2, 0.256, 8)
    assert word >> 15 == 1 and word >> 12 & 7 == 0b110 and word >> 9 & 7 == 0b101
    assert word >> 8 & 1 == 1 and word >> 5 & 7 == 0 and word & 0b11 == 0b11 and word & 0b11100 == 0
    with pytest.raises(ValueError):
        ads1115.config_word(4, 2.048, 128)
    assert ads1115.to_volts(0x7FFF, 4.096) == pytest.approx(4.096 * 32767 / 32768)
    assert ads1115.to_volts(0xFFFF, 4.096) == pytest.approx(-0.000125)


def test_ads1115_moisture_calibration():
    assert ads1115.moisture_percent(2.8, 2.8, 1.2) == 0
    assert ads1115.moisture_percent(1.2, 2.8, 1.2) == 100
    assert ads1115.moisture_percent(2.0, 2.8, 1.2) == pytest.approx(50)
    assert ads1115.moisture_percent(3.3, 2.8, 1.2) == 0 and ads1115.moisture_percent(0.5, 2.8, 1.2) == 100
    assert ads1115.moisture_percent(1.5, 1.0, 2.0) == pytest.approx(50)  # resistive probe: higher when wet
    with pytest.raises(ValueError):
        ads1115.moisture_percent(1.0, 2.0, 2.0)


def test_ads1115_honours_mux_and_gain():
    chip = ADS1115Model(fixed())
    ctx, _ = bench((0x49, chip))
    driver = driver_class("ads1115")("soil", {"address": 0x49, "data_rate": 860, "channels": [
        {"channel": 0, "full_scale": 0.512}, {"channel": 1, "full_scale": 2.048},
        {"channel": 2, "name": "bed", "dry_voltage": 2.8, "wet_voltage": 1.2}, {"channel": 3, "full_scale": 2.048}]},
        context=ctx)
    assert sensor(driver, "ain0").read() == pytest.approx(0.5, abs=0.512 / 32768)
    assert sensor(driver, "ain1").read() == pytest.approx(1.25, abs=2.048 / 32768)
    assert sensor(driver, "bed").read() == pytest.approx(2.0, abs=4.096 / 32768)
    assert sensor(driver, "bed_moisture").read() == pytest.approx(50, abs=0.1)
    assert sensor(driver, "bed_moisture").unit == "%" and sensor(driver, "bed").unit == "V"
    assert chip.regs[ads1115.REG_CONFIG] >> 9 & 7 == 0b001  # the last conversion ran at ±4.096 V
    with pytest.raises(DriverError, match=r"AIN3 is at the end of the ±2.048 V range"):
        sensor(driver, "ain3").read()
    assert chip.conversions == 5


def test_ads1115_default_channels_and_option_checks():
    ctx, _ = bench((0x48, ADS1115Model(fixed())))
    driver = driver_class("ads1115")("adc", {}, context=ctx)
    assert [s.name for s in driver.sensors()] == ["ain0", "ain1", "ain2", "ain3"]
    assert [round(s.read(), 3) for s in driver.sensors()] == [0.5, 1.25, 2.0, 3.1]
    cls = driver_class("ads1115")
    assert cls.check_options({"channels": [{"channel": 1}, {"channel": 1}]})[0][0] == "channels"
    assert cls.check_options({"channels": [{"channel": 0, "name": "a_moisture"},
                                           {"channel": 1, "name": "a", "dry_voltage": 2, "wet_voltage": 1}]})
    assert cls.check_options({"channels": [{"channel": 0, "dry_voltage": 2, "wet_voltage": 2}]}) == [
        ("channels[0].wet_voltage", "dry_voltage and wet_voltage must differ")]
    with pytest.raises(ValueError, match="must differ"):
        cls("adc", {"channels": [{"channel": 0, "dry_voltage": 2, "wet_voltage": 2}]}, context=ctx)
    assert cls.check_options({"channels": [{"channel": 0, "dry_voltage": 2.5}]}) == [
        ("channels[0].wet_voltage",
         "dry_voltage is given, so wet_voltage is needed too (the soil-moisture calibration takes both)")]
    assert cls.check_options({"address": 0x50}) == [
        ("address", "0x50 (80) is not an address the ADS1115 takes: use 0x48 or 0x49 or 0x4A or 0x4B")]
    with pytest.raises(ValueError, match="0x50"):
        cls("adc", {"address": 0x50}, context=ctx)


# --------------------------------------------------------------------------- all four


@pytest.mark.parametrize("kind, address", [("bme280", 0x76), ("sht3x", 0x44), ("bh1750", 0x23), ("ads1115", 0x48)])
def test_unplugged_sensor_is_a_driver_error(kind, address):
    ctx, _ = bench()
    driver = driver_class(kind)("x", {}, context=ctx)  # starting touches no hardware
    for spec in driver.sensors():
        with pytest.raises(DriverError, match=rf"at 0x{address:02X} on /dev/i2c-1: no answer .*i2cdetect -y 1"):
            spec.read()
    driver.close()


def test_missing_bus_names_the_fix():
    ctx = DriverContext(simulate=False)  # the real smbus2: this machine has no /dev/i2c-250
    driver = driver_class("sht3x")("x", {"bus": 250}, context=ctx)
    with pytest.raises(DriverError, match=r"/dev/i2c-250 does not exist: enable I2C \(dtparam=i2c_arm=on"):
        driver.read()
    driver.close()


def test_pin_uses_claim_the_i2c_pins_and_the_address():
    from edge_agent.drivers.base import PinUse

    assert driver_class("bme280").pin_uses({}) == [PinUse("", None, "i2c", "/dev/i2c-1@0x76")]
    assert driver_class("ads1115").pin_uses({"bus": 3, "address": 0x4B}) == [
        PinUse("address", None, "i2c-3", "/dev/i2c-3@0x4b")]


def test_simulated_context_shares_one_populated_bus_per_number(tmp_path):
    ctx = DriverContext(simulate=True, state_dir=str(tmp_path))
    drivers = [driver_class(k)(k, {}, context=ctx) for k in ("bme280", "sht3x", "bh1750", "ads1115")]
    try:
        values = {f"{d.kind}/{s.name}": s.read() for d in drivers for s in d.sensors()}
        for d in drivers:
            for s in d.sensors():
                jsonschema.validate(values[f"{d.kind}/{s.name}"], s.value_schema)
        assert abs(values["bme280/temperature"] - values["sht3x/temperature"]) < 0.5  # one greenhouse
        assert ctx.i2c_bus(1) is ctx.i2c_bus(1) and ctx.i2c_bus(1).transfers > 0
    finally:
        for d in drivers:
            d.close()


def test_check_rejects_bad_i2c_options(tmp_path):
    cfg = write_config(tmp_path / "agent.toml", server_name="devices/bench/i2c", server_id="i2c-check", drivers="""
[[drivers]]
kind = "bme280"
name = "air"
address = 0x40

[[drivers]]
kind = "ads1115"
name = "soil"
bus = 300
channels = [{channel = 0, dry_voltage = 2.8}]

[[drivers]]
kind = "sht3x"
name = "canopy"
channels = 2
""")
    done = subprocess.run([sys.executable, "-m", "edge_agent", "check", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stdout
    assert "drivers.soil.bus" in done.stderr and "drivers.canopy" in done.stderr
    assert "Traceback" not in done.stderr
    fixed = cfg.read_text().replace("bus = 300", "bus = 1").replace("channels = 2\n", "")
    cfg.write_text(fixed)
    done = subprocess.run([sys.executable, "-m", "edge_agent", "check", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stdout
    assert "drivers.air.address: 0x40 (64) is not an address the BME280 takes: use 0x76 or 0x77" in done.stderr
    assert "drivers.soil.channels[0].wet_voltage: dry_voltage is given, so wet_voltage is needed" in done.stderr


def test_check_reports_address_conflicts_and_the_i2c_pins(tmp_path):
    cfg = tmp_path / "agent.toml"
    cfg.write_text("""
[device]
server_name = "devices/bench/i2c"
simulate = false
state_dir = "%s"

[broker]
urls = ["mqtt://127.0.0.1:1"]

[[drivers]]
kind = "bme280"
name = "air"

[[drivers]]
kind = "bme280"
name = "air2"
address = 0x76

[[drivers]]
kind = "bme280"
name = "air_bus3"
bus = 3

[[drivers]]
kind = "led"
name = "lamp"
pin = 2
""" % (tmp_path / "state"))
    done = subprocess.run([sys.executable, "-m", "edge_agent", "check", "--config", str(cfg)], capture_output=True,
                          text=True, timeout=60, check=False, env={**os.environ, "GPIOZERO_PIN_FACTORY": "mock"})
    assert done.returncode == 2, done.stdout
    assert "drivers.air2.address: /dev/i2c-1@0x76 is used in multiple places: drivers.air" in done.stderr
    assert "drivers.lamp.pin: GPIO2 is used in multiple places: drivers.air" in done.stderr
    assert "air_bus3" not in done.stderr  # the same address on another bus is another device
    assert "2 problem(s) found" in done.stderr


# --------------------------------------------------------------------------- through the agent

NAME, SID = "devices/bench/i2c-pi", "bench-i2c-pi"
DRIVERS = """
[[drivers]]
kind = "bme280"
name = "air"

[[drivers]]
kind = "sht3x"
name = "canopy"
address = 0x45

[[drivers]]
kind = "bh1750"
name = "light"

[[drivers]]
kind = "ads1115"
name = "soil"
channels = [{channel = 0, name = "bed1", dry_voltage = 2.8, wet_voltage = 1.2}]

[[drivers]]
kind = "sht3x"
name = "unplugged"
simulate = false
bus = 250
"""


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_four_i2c_sensors_through_the_agent(broker, tmp_path):
    from mcp import MCPError

    from edge_agent.cloud import connect

    cfg = write_config(tmp_path / "agent.toml", server_name=NAME, server_id=SID, drivers=DRIVERS)
    agent = AgentProcess(cfg, broker.url, SID, NAME).start()
    try:
        async with connect(broker.url, NAME) as session:
            expected = {"sensor://air/temperature": ("°C", -40, 85), "sensor://air/humidity": ("%", 0, 100),
                        "sensor://air/pressure": ("hPa", 300, 1100), "sensor://canopy/temperature": ("°C", -45, 130),
                        "sensor://canopy/humidity": ("%", 0, 100), "sensor://light/illuminance": ("lx", 0, 1e6),
                        "sensor://soil/bed1": ("V", 0, 4.096), "sensor://soil/bed1_moisture": ("%", 0, 100)}
            for uri, (unit, low, high) in expected.items():
                reading = json.loads((await session.read_resource(uri)).contents[0].text)
                assert reading["unit"] == unit and low <= reading["value"] <= high, (uri, reading)
            air = json.loads((await session.read_resource("sensor://air/temperature")).contents[0].text)
            canopy = json.loads((await session.read_resource("sensor://canopy/temperature")).contents[0].text)
            assert abs(air["value"] - canopy["value"]) < 0.5  # the same simulated greenhouse
            with pytest.raises(MCPError, match="/dev/i2c-250 does not exist"):
                await session.read_resource("sensor://unplugged/temperature")
            health = json.loads((await session.read_resource("device://health")).contents[0].text)
            unplugged = health["drivers"]["unplugged"]
            assert unplugged["status"] == "degraded" and "/dev/i2c-250 does not exist" in unplugged["error"]
            assert all(health["drivers"][d]["status"] == "ok" for d in ("air", "canopy", "light", "soil"))
            await session.send_ping()  # the agent keeps serving
    finally:
        agent.stop()
    assert "Traceback" not in agent.log()
