"""GPIO drivers against gpiozero's MockFactory: pin states, schemas, progress, cancel, errors."""

from __future__ import annotations

import threading
import time

import jsonschema
import pytest
from gpiozero.exc import GPIOPinInUse
from gpiozero.pins.mock import MockFactory, MockPWMPin

from edge_agent.drivers.base import DriverContext
from edge_agent.drivers.gpio import (
    DigitalOutput,
    Led,
    Motion,
    PirSimulator,
    PushButton,
    PwmLed,
    Relay,
    Servo,
    UltrasonicDistance,
)
from edge_agent.errors import DriverError


@pytest.fixture
def factory():
    f = MockFactory(pin_class=MockPWMPin)
    yield f
    f.reset()


@pytest.fixture
def ctx(factory, tmp_path):
    return DriverContext(simulate=True, pin_factory=factory, state_dir=str(tmp_path))


@pytest.fixture
def hw_ctx(factory, tmp_path):
    """Not simulating, but on mock pins: nothing drives the inputs except the test."""
    return DriverContext(simulate=False, pin_factory=factory, state_dir=str(tmp_path))


def tool(driver, name):
    return {t.name: t for t in driver.tools()}[name]


def sensor(driver, name):
    return {s.name: s for s in driver.sensors()}[name]


def rejects(schema, args) -> bool:
    try:
        jsonschema.validate(args, schema)
    except jsonschema.ValidationError:
        return True
    return False


class Progress:
    def __init__(self):
        self.calls = []

    def __call__(self, progress, total=None, message=None):
        self.calls.append((progress, total, message))

    @property
    def values(self):
        return [c[0] for c in self.calls]


def test_led_on_off_toggle_drive_the_pin(ctx, factory):
    led = Led("status_led", {"pin": 17}, context=ctx)
    pin = factory.pin(17)
    assert pin.state == 0 and sensor(led, "state").read() is False
    assert tool(led, "on").handler() == {"state": True}
    assert pin.state == 1 and sensor(led, "state").read() is True
    assert tool(led, "toggle").handler() == {"state": False}
    assert pin.state == 0
    tool(led, "on").handler()
    assert tool(led, "off").handler() == {"state": False} and pin.state == 0
    out = tool(led, "on").output_schema
    jsonschema.validate({"state": True}, out)
    assert tool(led, "on").annotations["idempotentHint"] is True
    assert tool(led, "toggle").annotations["idempotentHint"] is False
    led.close()
    led.close()


def test_led_active_low_and_pin_names(ctx, factory):
    led = Led("status_led", {"pin": "GPIO22", "active_high": False}, context=ctx)
    pin = factory.pin(22)
    assert pin.state == 1  # off = high on an active-low LED
    tool(led, "on").handler()
    assert pin.state == 0
    led.close()


def test_led_blink_reports_each_blink_and_restores_state(ctx, factory):
    led = Led("status_led", {"pin": 17}, context=ctx)
    pin = factory.pin(17)
    pin.clear_states()
    progress = Progress()
    spec = tool(led, "blink")
    assert spec.long_running
    result = spec.handler(times=3, on_time=0.05, off_time=0.05, progress=progress, cancel=threading.Event())
    assert result == {"blinks": 3, "cancelled": False, "state": False}
    assert progress.values == [1, 2, 3] and progress.calls[-1][1] == 3
    assert [s.state for s in pin.states] == [0, 1, 0, 1, 0, 1, 0]
    pin.assert_states_and_times([(0, 0), (0, 1), (0.05, 0), (0.05, 1), (0.05, 0), (0.05, 1), (0.05, 0)])
    jsonschema.validate(result, spec.output_schema)
    tool(led, "on").handler()
    result = spec.handler(times=1, on_time=0.05, off_time=0.05, progress=progress, cancel=threading.Event())
    assert result["state"] is True and pin.state == 1  # back on, as before
    led.close()


def test_led_blink_cancel_stops_early(ctx, factory):
    led = Led("status_led", {"pin": 17}, context=ctx)
    cancel = threading.Event()
    threading.Timer(0.25, cancel.set).start()
    progress = Progress()
    start = time.monotonic()
    result = tool(led, "blink").handler(times=100, on_time=0.05, off_time=0.05, progress=progress, cancel=cancel)
    assert time.monotonic() - start < 1.0
    assert result["cancelled"] is True and 1 <= result["blinks"] < 100
    assert progress.values == list(range(1, result["blinks"] + 1))
    assert factory.pin(17).state == 0
    led.close()


def test_led_blink_schema_ranges(ctx):
    led = Led("status_led", {"pin": 17}, context=ctx)
    schema = tool(led, "blink").input_schema
    assert not rejects(schema, {"times": 5, "on_time": 0.05, "off_time": 10})
    for bad in ({"times": 0}, {"times": 101}, {"on_time": 0.01}, {"off_time": 11}, {"colour": "red"}):
        assert rejects(schema, bad), bad
    led.close()


def test_pwm_led_sets_duty_cycle(ctx, factory):
    light = PwmLed("grow_light", {"pin": 18, "frequency": 200}, context=ctx)
    pin = factory.pin(18)
    assert tool(light, "set").handler(brightness=0.5) == {"brightness": 0.5}
    assert pin.state == 0.5 and pin.frequency == 200
    assert sensor(light, "brightness").read() == 0.5 and sensor(light, "brightness").unit == ""
    assert tool(light, "off").handler() == {"brightness": 0.0} and pin.state == 0
    schema = tool(light, "set").input_schema
    assert rejects(schema, {"brightness": 1.5}) and rejects(schema, {"brightness": -0.1}) and rejects(schema, {})
    assert not rejects(schema, {"brightness": 1})
    light.close()


@pytest.mark.parametrize("cls", [Relay, DigitalOutput])
def test_relay_switches_and_is_destructive(cls, ctx, factory):
    relay = cls("pump_relay", {"pin": 27, "initial": True}, context=ctx)
    pin = factory.pin(27)
    assert pin.state == 1 and sensor(relay, "state").read() is True
    assert tool(relay, "off").handler() == {"state": False} and pin.state == 0
    assert tool(relay, "set").handler(state=True) == {"state": True} and pin.state == 1
    assert tool(relay, "on").handler() == {"state": True}
    assert all(t.annotations["destructiveHint"] is True for t in relay.tools())
    assert rejects(tool(relay, "set").input_schema, {"state": "on"})
    relay.close()
    assert pin.function == "input"  # released


def test_relay_active_low_starts_off(ctx, factory):
    relay = Relay("pump_relay", {"pin": 27, "active_high": False}, context=ctx)
    assert factory.pin(27).state == 1  # off on an active-low board = high
    tool(relay, "on").handler()
    assert factory.pin(27).state == 0
    relay.close()


def test_two_drivers_cannot_share_a_pin(ctx):
    relay = Relay("pump_relay", {"pin": 27}, context=ctx)
    with pytest.raises(GPIOPinInUse):
        Led("status_led", {"pin": 27}, context=ctx)
    relay.close()
    Led("status_led", {"pin": 27}, context=ctx).close()  # free again after close


def test_button_reads_the_pin(ctx, factory):
    button = PushButton("door_button", {"pin": 5, "bounce_time": 0.01}, context=ctx)
    pressed = sensor(button, "pressed")
    assert button.tools() == [] and pressed.poll_interval == 0.2
    assert pressed.read() is False
    factory.pin(5).drive_low()
    assert pressed.read() is True
    factory.pin(5).drive_high()
    assert pressed.read() is False
    button.close()


def test_servo_angle_maps_to_pulse_width(ctx, factory):
    servo = Servo("vent_servo", {"pin": 12}, context=ctx)
    pin = factory.pin(12)
    assert sensor(servo, "angle").read() is None  # starts detached
    assert tool(servo, "set_angle").handler(angle=0) == {"angle": 0}
    assert pin.frequency == 50 and pin.state == pytest.approx(0.0015 / 0.02)
    tool(servo, "set_angle").handler(angle=90)
    assert pin.state == pytest.approx(0.002 / 0.02)
    tool(servo, "set_angle").handler(angle=-45)
    assert pin.state == pytest.approx(0.00125 / 0.02)
    assert sensor(servo, "angle").read() == -45 and sensor(servo, "angle").unit == "°"
    assert tool(servo, "detach").handler() == {"angle": None}
    assert pin.state == 0 and pin.frequency is None and sensor(servo, "angle").read() is None
    assert all(t.annotations["destructiveHint"] for t in servo.tools())
    schema = tool(servo, "set_angle").input_schema
    assert rejects(schema, {"angle": 91}) and rejects(schema, {"angle": -90.5}) and not rejects(schema, {"angle": -90})
    servo.close()


def test_servo_range_comes_from_options(ctx, factory):
    servo = Servo("vent_servo", {"pin": 12, "min_angle": 0, "max_angle": 180,
                                 "min_pulse_width": 0.0005, "max_pulse_width": 0.0025}, context=ctx)
    schema = tool(servo, "set_angle").input_schema
    assert not rejects(schema, {"angle": 180}) and rejects(schema, {"angle": -1})
    tool(servo, "set_angle").handler(angle=180)
    assert factory.pin(12).state == pytest.approx(0.0025 / 0.02)
    servo.close()
    with pytest.raises(ValueError, match="min_angle and max_angle"):
        Servo("vent_servo", {"pin": 12, "min_angle": 10, "max_angle": 10}, context=ctx)


def test_servo_sweep_steps_and_reports_progress(ctx, factory):
    servo = Servo("vent_servo", {"pin": 12}, context=ctx)
    progress = Progress()
    spec = tool(servo, "sweep")
    result = spec.handler(**{"from": 90, "to": -90, "step_deg": 45, "dwell": 0.02},
                          progress=progress, cancel=threading.Event())
    assert result == {"angle": -90, "steps": 4, "total": 4, "cancelled": False}
    assert progress.values == [1, 2, 3, 4] and {c[1] for c in progress.calls} == {4}
    duties = [round(s.state, 4) for s in factory.pin(12).states[1:]]
    assert duties == [0.1, 0.0875, 0.075, 0.0625, 0.05]
    jsonschema.validate(result, spec.output_schema)
    assert rejects(spec.input_schema, {"from": 0, "to": 100}) and rejects(spec.input_schema, {"to": 0})
    assert rejects(spec.input_schema, {"from": 0, "to": 10, "step_deg": 0})
    servo.close()


def test_servo_sweep_cancel(ctx):
    servo = Servo("vent_servo", {"pin": 12}, context=ctx)
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    progress = Progress()
    start = time.monotonic()
    result = tool(servo, "sweep").handler(**{"from": -90, "to": 90, "step_deg": 1, "dwell": 0.1},
                                          progress=progress, cancel=cancel)
    assert time.monotonic() - start < 1.0
    assert result["cancelled"] is True and 1 <= result["steps"] < result["total"] == 180
    assert result["angle"] == -90 + result["steps"]
    assert progress.values == list(range(1, result["steps"] + 1))
    servo.close()


def test_distance_simulated_echo(ctx):
    water = UltrasonicDistance("water_level", {"trigger": 23, "echo": 24, "max_distance": 2}, context=ctx)
    distance = sensor(water, "distance")
    assert distance.unit == "m" and distance.min_interval == 0.06
    value = distance.read()
    assert value == pytest.approx(water.target.distance(), abs=0.1)
    assert 0 <= value <= 2
    hcsr04 = water.sensor
    water.close()
    water.close()
    # gpiozero's queue thread may sample once more after close: it must learn the sensor is gone
    # (ReferenceError ends that thread quietly), not die on an AttributeError
    with pytest.raises(ReferenceError):
        hcsr04._read()


@pytest.mark.filterwarnings("ignore::gpiozero.exc.PWMSoftwareFallback", "ignore::gpiozero.exc.DistanceSensorNoEcho")
def test_distance_without_echo_is_an_error(hw_ctx):
    water = UltrasonicDistance("water_level", {"trigger": 23, "echo": 24}, context=hw_ctx)
    with pytest.raises(DriverError, match=r"HC-SR04 water_level .*no echo"):
        sensor(water, "distance").read()
    water.close()


def test_motion_follows_the_pir_output(hw_ctx, factory):
    pir = Motion("motion", {"pin": 6}, context=hw_ctx)
    motion = sensor(pir, "motion")
    time.sleep(0.15)
    assert motion.read() is False
    factory.pin(6).drive_high()
    time.sleep(0.25)
    assert motion.read() is True
    factory.pin(6).drive_low()
    time.sleep(0.25)
    assert motion.read() is False
    pir.close()


def test_pir_simulator_sees_motion_now_and_then(factory):
    pin = factory.pin(6)
    stop = threading.Event()
    PirSimulator(pin, stop, idle=(0.02, 0.05), hold=(0.05, 0.05), seed=1)
    time.sleep(0.4)
    stop.set()
    assert [s.state for s in pin.states[1:4]] == [True, False, True]


def test_motion_driver_simulates(ctx):
    pir = Motion("motion", {"pin": 6}, context=ctx)
    assert sensor(pir, "motion").read() in (True, False)
    pir.close()
    pir.close()
