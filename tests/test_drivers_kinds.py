"""Every driver kind: registered, schemas documented, and the demo greenhouse runs simulated."""

from __future__ import annotations

import tomllib
from pathlib import Path

import jsonschema
import pytest
from gpiozero.pins.mock import MockFactory, MockPWMPin
from jsonschema import Draft202012Validator

from edge_agent.device.config import COMMON_DRIVER_KEYS as COMMON
from edge_agent.drivers import DRIVER_KINDS, driver_class
from edge_agent.drivers.base import DriverContext

DEMO = Path(__file__).resolve().parents[1] / "edge_agent" / "device" / "demo_drivers.toml"
KINDS = {"led", "pwm_led", "relay", "digital_output", "button", "servo", "distance", "motion", "ds18b20",
         "system", "nmea_gps", "mpboard", "bme280", "sht3x", "bh1750", "ads1115"}
DEMO_KINDS = KINDS - {"mpboard"}  # a board needs real hardware: no simulated backend


def demo_tables():
    return tomllib.loads(DEMO.read_text())["drivers"]


def test_all_kinds_registered():
    assert set(DRIVER_KINDS) == KINDS
    for kind in KINDS:
        assert driver_class(kind).kind == kind


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_options_schema_is_documented(kind):
    schema = driver_class(kind).options_schema
    Draft202012Validator.check_schema(schema)
    assert schema["additionalProperties"] is False and driver_class(kind).description
    assert not COMMON & set(schema["properties"])
    for key, prop in schema["properties"].items():
        assert prop.get("description"), f"{kind}.{key} has no description"


def test_demo_uses_every_kind_with_valid_options_and_distinct_pins():
    tables = demo_tables()
    assert {t["kind"] for t in tables} == DEMO_KINDS
    names = [t["name"] for t in tables]
    assert len(set(names)) == len(names)
    pins = []
    for t in tables:
        options = {k: v for k, v in t.items() if k not in COMMON}
        jsonschema.validate(options, driver_class(t["kind"]).options_schema)
        pins += [v for k, v in options.items() if k in ("pin", "trigger", "echo")]
    assert len(set(pins)) == len(pins) and 4 not in pins  # GPIO4 is the 1-Wire bus


def test_demo_greenhouse_runs_simulated(tmp_path):
    ctx = DriverContext(simulate=True, pin_factory=MockFactory(pin_class=MockPWMPin), state_dir=str(tmp_path))
    drivers = [driver_class(t["kind"])(t["name"], {k: v for k, v in t.items() if k not in COMMON}, context=ctx)
               for t in demo_tables()]
    try:
        for driver in drivers:
            for tool in driver.tools():
                Draft202012Validator.check_schema(tool.input_schema)
                assert tool.description and tool.annotations
            for sensor in driver.sensors():
                jsonschema.validate(sensor.read(), sensor.value_schema)
    finally:
        for driver in drivers:
            driver.close()
