import pytest

from acme_leaf import LeafWetness
from edge_agent.drivers.kit import DriverContext, DriverError, ToolInputError


def test_simulated_probe(tmp_path):
    context = DriverContext.simulated(state_dir=str(tmp_path))
    probe = LeafWetness("leaf", {"dry_mv": 3000, "wet_mv": 1000}, context=context)
    try:
        (wetness,) = probe.sensors()
        assert wetness.unit == "%" and 0 <= wetness.read() <= 100
        (calibrate,) = probe.tools()
        assert calibrate.handler(dry_mv=2900, wet_mv=1100)["dry_mv"] == 2900
        with pytest.raises(ToolInputError, match="must be above"):
            calibrate.handler(dry_mv=1000, wet_mv=1200)
    finally:
        probe.close()
        context.close()


def test_hardware_files(tmp_path):
    adc = tmp_path / "bus" / "iio" / "devices" / "iio:device0"
    adc.mkdir(parents=True)
    (adc / "in_voltage0_raw").write_text("1000\n")
    (adc / "in_voltage_scale").write_text("2.0\n")  # 2000 mV: half way from dry to wet
    probe = LeafWetness("leaf", {}, context=DriverContext.hardware(sysfs_root=str(tmp_path)))
    assert probe.wetness() == 50.0
    (adc / "in_voltage0_raw").unlink()  # the ADC's driver went away
    with pytest.raises(DriverError, match="cannot read"):
        probe.wetness()
