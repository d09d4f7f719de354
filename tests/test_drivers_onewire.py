"""DS18B20 driver against a sysfs folder written like the kernel's w1_therm does."""

from __future__ import annotations

import time

import pytest

from edge_agent.drivers.base import DriverContext
from edge_agent.drivers.onewire import DS18B20, crc8, parse_w1_slave, w1_slave_text
from edge_agent.errors import DriverError

# A real read-out from a DS18B20 at 23.125 °C (12 bit).
GOOD = "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t=23125\n"
DEVICE = "28-00000a1b2c3d"


def write_device(root, device, text):
    folder = root / "bus" / "w1" / "devices" / device
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "w1_slave").write_text(text)


def thermometer(tmp_path, options=None, simulate=False):
    ctx = DriverContext(simulate=simulate, sysfs_root=str(tmp_path / "sys"), state_dir=str(tmp_path / "state"))
    return DS18B20("soil_temp", options or {}, context=ctx)


def temperature(driver):
    (spec,) = driver.sensors()
    assert spec.name == "temperature" and spec.unit == "°C"
    return spec.read()


def test_crc8_matches_a_real_scratchpad():
    assert crc8(bytes.fromhex("72014b467fff0e10")) == 0x57
    assert crc8(bytes.fromhex("72014b467fff0e1057")) == 0  # CRC over data + CRC is zero


def test_reads_the_named_device(tmp_path):
    write_device(tmp_path / "sys", DEVICE, GOOD)
    write_device(tmp_path / "sys", "28-000000000001", GOOD.replace("t=23125", "t=10000"))
    driver = thermometer(tmp_path, {"device_id": DEVICE})
    assert temperature(driver) == 23.125
    driver.close()
    driver.close()


def test_first_device_when_no_id_and_negative_values(tmp_path):
    write_device(tmp_path / "sys", "28-000000000002", w1_slave_text(-10.125))
    write_device(tmp_path / "sys", "28-000000000009", GOOD)
    assert temperature(thermometer(tmp_path)) == -10.125


@pytest.mark.parametrize("bits, interval, step", [(9, 0.094, 0.5), (10, 0.1875, 0.25), (11, 0.375, 0.125),
                                                  (12, 0.75, 0.0625)])
def test_resolution_sets_min_interval(tmp_path, bits, interval, step):
    write_device(tmp_path / "sys", DEVICE, w1_slave_text(21.3, bits))
    driver = thermometer(tmp_path, {"resolution_bits": bits})
    assert driver.sensors()[0].min_interval == interval
    value = temperature(driver)
    assert abs(value - round(value / step) * step) < 0.001 and abs(value - 21.3) < step  # kernel truncates to m°C


def test_crc_failure_is_an_error(tmp_path):
    write_device(tmp_path / "sys", DEVICE, GOOD.replace("YES", "NO"))
    with pytest.raises(DriverError, match="CRC check failed"):
        temperature(thermometer(tmp_path))


def test_power_on_value_is_an_error(tmp_path):
    write_device(tmp_path / "sys", DEVICE, w1_slave_text(85.0))
    with pytest.raises(DriverError, match="power-on value 85"):
        temperature(thermometer(tmp_path))


def test_bus_fault_is_an_error(tmp_path):
    write_device(tmp_path / "sys", DEVICE, "ff ff ff ff ff ff ff ff ff : crc=c9 YES\nff ff ff ff ff ff ff ff ff t=-62\n")
    with pytest.raises(DriverError, match="bus fault"):
        temperature(thermometer(tmp_path))


def test_missing_device_names_the_overlay(tmp_path):
    (tmp_path / "sys" / "bus" / "w1" / "devices").mkdir(parents=True)
    with pytest.raises(DriverError, match=r"DS18B20 28-00000a1b2c3d not found under .*dtoverlay=w1-gpio"):
        temperature(thermometer(tmp_path, {"device_id": DEVICE}))
    with pytest.raises(DriverError, match=r"no DS18B20 \(28-\*\) under .*dtoverlay=w1-gpio"):
        temperature(thermometer(tmp_path))


def test_garbage_is_an_error():
    with pytest.raises(DriverError, match="unreadable"):
        parse_w1_slave("", DEVICE)


def test_simulated_sensor_writes_valid_files_that_change(tmp_path):
    """The simulated backend's DS18B20 model writes the sysfs file the kernel would, under the
    context's sysfs root, and keeps rewriting it; the driver reads it like the real one."""
    driver = thermometer(tmp_path, simulate=True)
    assert driver.device_id.startswith("28-")
    path = tmp_path / "sys" / "bus" / "w1" / "devices" / driver.device_id / "w1_slave"
    first_inode = path.stat().st_ino
    assert path.read_text().splitlines()[0].endswith("YES")
    first = temperature(driver)
    assert 17 < first < 23
    time.sleep(1.2)
    assert path.stat().st_ino != first_inode  # replaced by the model's thread
    driver.close()
    driver.close()
    inode = path.stat().st_ino
    time.sleep(1.2)
    assert path.stat().st_ino == inode  # closed: the model stopped


def test_simulated_context_defaults_to_a_sysfs_under_state_dir(tmp_path):
    ctx = DriverContext.simulated(state_dir=str(tmp_path / "state"))
    driver = DS18B20("soil_temp", {"device_id": DEVICE}, context=ctx)
    try:
        assert driver.device_id == DEVICE
        assert (tmp_path / "state" / "simulated" / "sys" / "bus" / "w1" / "devices" / DEVICE / "w1_slave").exists()
        assert 17 < temperature(driver) < 23
    finally:
        driver.close()
