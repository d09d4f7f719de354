"""GPIO drivers on gpiozero: LEDs, relays, a button, a servo, an HC-SR04 and a PIR.

Each driver owns gpiozero devices built on ``context.gpio_factory()``: gpiozero's default
factory (lgpio on a Pi 5 / bookworm) on a device, a shared ``MockFactory`` with PWM-capable pins
on a simulated context. Simulated inputs behave like the hardware, through the backend's models
registered here: ``pir`` (:class:`PirSimulator`: the PIR sees motion now and then) and
``hcsr04`` (:class:`EchoSimulator`: the echo answers for a slowly drifting distance). Pins are BCM numbers (``17``)
or gpiozero pin names (``"GPIO17"``, ``"BOARD11"``); gpiozero reserves them, so two drivers
cannot own one line (``GPIOPinInUse``).
"""

from __future__ import annotations

import collections
import math
import os
import random
import threading
import time
import warnings
from typing import Any, Callable, Mapping

from gpiozero import (
    LED,
    PWMLED,
    AngularServo,
    Button,
    DigitalOutputDevice,
    DistanceSensor,
    MotionSensor,
)
from gpiozero.exc import PWMSoftwareFallback
from gpiozero.pins.mock import MockFactory, MockPWMPin, MockTriggerPin

from edge_agent.drivers.base import (
    Driver,
    DriverContext,
    PinUse,
    SensorSpec,
    ToolSpec,
    no_arguments,
    simulated_model,
    wait_or_cancel,
)
from edge_agent.errors import DriverError, ToolInputError

PIN_SCHEMA: dict[str, Any] = {
    "description": "GPIO pin: BCM number (17) or gpiozero pin name (\"GPIO17\", \"BOARD11\", \"J8:11\")",
    "anyOf": [
        {"type": "integer", "minimum": 0, "maximum": 27},
        {"type": "string", "pattern": "^((GPIO|BCM|BOARD|WPI)[0-9]{1,2}|J8:[0-9]{1,2})$"},
    ],
}
ACTIVE_HIGH_SCHEMA = {"type": "boolean", "default": True,
                      "description": "true if the load is on when the pin is high (3.3 V); false for active-low boards"}
STATE_OUTPUT = {
    "type": "object",
    "properties": {"state": {"type": "boolean", "description": "true when the output is on"}},
    "required": ["state"],
}
BOOL_VALUE = {"type": "boolean"}
SPEED_OF_SOUND = 343.26  # m/s in air at 20 °C, as gpiozero uses
SAFE_WRITE = {"readOnlyHint": False, "destructiveHint": False, "idempotentHint": True}
ACTUATOR_WRITE = {"readOnlyHint": False, "destructiveHint": True, "idempotentHint": True}


PIN_LOG_ENV = "EDGE_AGENT_SIM_PIN_LOG"


class _BoundedStates:
    """gpiozero's mock pins append every change to an unbounded ``states`` list (for test
    assertions); a simulated device runs for months, so keep only the last 256.

    With the environment variable ``EDGE_AGENT_SIM_PIN_LOG`` set to a file path, every change
    of a simulated output pin is also appended to that file as one line ``<Unix time s>
    <pin name> <value>`` (``1764540000.123456 GPIO27 1.0``): a test can then see the pin of an
    agent process it killed (off for testing only: the file grows with every change)."""

    def clear_states(self):
        super().clear_states()
        self.states = collections.deque(self.states, maxlen=256)

    def _change_state(self, value):
        changed = super()._change_state(value)
        path = os.environ.get(PIN_LOG_ENV)
        if changed and path and self._function == "output":
            with open(path, "a", encoding="ascii") as log:
                log.write(f"{time.time():.6f} {self.info.name} {float(value)}\n")
        return changed


class SimPWMPin(_BoundedStates, MockPWMPin):
    """The pin class of simulated devices: a ``MockPWMPin`` with bounded state history."""


def simulated_factory() -> MockFactory:
    """The gpiozero MockFactory simulated devices run on (bounded pin histories)."""
    return MockFactory(pin_class=SimPWMPin)


def pin_factory(context: DriverContext):
    """The gpiozero pin factory for ``context`` (``context.gpio_factory()``; ``None`` =
    gpiozero's default factory)."""
    return context.gpio_factory()


def _options_schema(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


class _GpioDriver(Driver):
    """Holds the gpiozero devices (and simulator threads) a driver opened; closes them once."""

    PIN_KEYS: tuple[str, ...] = ("pin",)  # the options that name GPIO pins

    @classmethod
    def pin_uses(cls, options) -> list[PinUse]:
        return [PinUse(key, options[key]) for key in cls.PIN_KEYS if key in options]

    @classmethod
    def check_options(cls, options) -> list[tuple[str, str]]:
        """Builds the driver on a private gpiozero MockFactory (no hardware, no files) and
        reports what its constructor (or gpiozero) refuses."""
        driver = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                driver = cls("check", options, context=DriverContext(
                    simulate=True, pin_factory=MockFactory(pin_class=MockPWMPin)))
        except Exception as exc:  # noqa: BLE001 - whatever run would hit
            return [("", f"run would refuse this {cls.kind}: {exc}")]
        finally:
            if driver is not None:
                driver.close()
                driver.factory.close()
        return []

    def __init__(self, name: str, options: Mapping[str, Any], *, context: DriverContext):
        super().__init__(name, options, context=context)
        self.factory = pin_factory(context)
        self._devices: list[Any] = []
        self._stop = threading.Event()

    def _open(self, device):
        self._devices.append(device)
        return device

    def close(self) -> None:
        self._stop.set()
        while self._devices:
            self._devices.pop().close()


class Led(_GpioDriver):
    """A LED (or any on/off indicator) on one GPIO pin, via ``gpiozero.LED``.

    Tools: ``on``, ``off``, ``toggle`` -> ``{"state": bool}``; ``blink`` (long-running; ``times``
    1..100, ``on_time``/``off_time`` 0.05..10 s; progress after each blink; cancellable; the LED
    returns to its previous state) -> ``{"blinks": int, "cancelled": bool, "state": bool}``.
    Sensor ``state`` (bool, polled every 1 s).
    """

    kind = "led"
    description = "LED on a GPIO pin (on, off, toggle, blink)"
    options_schema = _options_schema({"pin": PIN_SCHEMA, "active_high": ACTIVE_HIGH_SCHEMA}, ["pin"])

    def __init__(self, name, options, *, context):
        super().__init__(name, options, context=context)
        self.led = self._open(LED(self.options["pin"], active_high=self.options.get("active_high", True),
                                  initial_value=False, pin_factory=self.factory))

    def _state(self) -> dict[str, bool]:
        return {"state": bool(self.led.is_lit)}

    def _set(self, on: bool) -> dict[str, bool]:
        self.led.on() if on else self.led.off()
        return self._state()

    def _toggle(self) -> dict[str, bool]:
        self.led.toggle()
        return self._state()

    def _blink(self, times: int = 3, on_time: float = 0.5, off_time: float = 0.5, *, progress, cancel):
        before = self.led.is_lit
        done, cancelled = 0, False
        for i in range(1, times + 1):
            self.led.on()
            cancelled = wait_or_cancel(cancel, on_time)
            self.led.off()
            if cancelled:
                break
            done = i
            progress(i, times, f"blink {i}/{times}")
            if i < times and wait_or_cancel(cancel, off_time):
                cancelled = True
                break
        self._set(before)
        return {"blinks": done, "cancelled": cancelled, "state": bool(self.led.is_lit)}

    def tools(self) -> list[ToolSpec]:
        seconds = {"type": "number", "minimum": 0.05, "maximum": 10}
        blink_in = {
            "type": "object",
            "properties": {
                "times": {"type": "integer", "minimum": 1, "maximum": 100, "default": 3,
                          "description": "number of blinks"},
                "on_time": {**seconds, "default": 0.5, "description": "seconds on per blink (s)"},
                "off_time": {**seconds, "default": 0.5, "description": "seconds off between blinks (s)"},
            },
            "additionalProperties": False,
        }
        blink_out = {
            "type": "object",
            "properties": {"blinks": {"type": "integer", "description": "blinks completed"},
                           "cancelled": {"type": "boolean"},
                           "state": {"type": "boolean", "description": "LED state afterwards (as before)"}},
            "required": ["blinks", "cancelled", "state"],
        }
        return [
            ToolSpec("on", "Turn the LED on.", no_arguments(), lambda: self._set(True), STATE_OUTPUT,
                     annotations=SAFE_WRITE, fast=True),
            ToolSpec("off", "Turn the LED off.", no_arguments(), lambda: self._set(False), STATE_OUTPUT,
                     annotations=SAFE_WRITE, fast=True),
            ToolSpec("toggle", "Invert the LED.", no_arguments(), self._toggle, STATE_OUTPUT,
                     annotations={**SAFE_WRITE, "idempotentHint": False}, fast=True),
            ToolSpec("blink", "Blink the LED `times` times, then restore its state; reports progress per blink. "
                     "May run as a task (MCP tasks): stopping it turns the LED off.",
                     blink_in, self._blink, blink_out, annotations={**SAFE_WRITE, "idempotentHint": False},
                     long_running=True, task_support="optional", stop=self.led.off,
                     duration=lambda times=3, on_time=0.5, off_time=0.5: times * (on_time + off_time)),
        ]

    def sensors(self) -> list[SensorSpec]:
        return [SensorSpec("state", "true when the LED is lit", lambda: bool(self.led.is_lit),
                           poll_interval=1.0, value_schema=BOOL_VALUE, fast=True)]


class PwmLed(_GpioDriver):
    """A dimmable LED (or LED driver input) on a PWM pin, via ``gpiozero.PWMLED``.

    Tools: ``set`` (``brightness`` 0..1 duty fraction) and ``off`` -> ``{"brightness": float}``.
    Sensor ``brightness`` (fraction 0..1, unit ``""``).
    """

    kind = "pwm_led"
    description = "Dimmable LED on a PWM pin (brightness 0..1)"
    options_schema = _options_schema({
        "pin": PIN_SCHEMA,
        "active_high": ACTIVE_HIGH_SCHEMA,
        "frequency": {"type": "number", "minimum": 1, "maximum": 10000, "default": 100,
                      "description": "PWM frequency (Hz)"},
    }, ["pin"])

    def __init__(self, name, options, *, context):
        super().__init__(name, options, context=context)
        self.led = self._open(PWMLED(self.options["pin"], active_high=self.options.get("active_high", True),
                                     frequency=self.options.get("frequency", 100), pin_factory=self.factory))

    def _brightness(self) -> float:
        return round(float(self.led.value), 4)

    def _set(self, brightness: float) -> dict[str, float]:
        if not 0 <= brightness <= 1:
            raise ToolInputError(f"brightness {brightness} is outside 0..1")
        self.led.value = brightness
        return {"brightness": self._brightness()}

    def tools(self) -> list[ToolSpec]:
        out = {"type": "object", "properties": {"brightness": {"type": "number", "minimum": 0, "maximum": 1}},
               "required": ["brightness"]}
        set_in = {"type": "object", "properties": {"brightness": {
            "type": "number", "minimum": 0, "maximum": 1,
            "description": "duty fraction: 0 = off, 1 = full brightness"}},
            "required": ["brightness"], "additionalProperties": False}
        return [
            ToolSpec("set", "Set the brightness (PWM duty fraction 0..1).", set_in, self._set, out,
                     annotations=SAFE_WRITE, fast=True),
            ToolSpec("off", "Turn the light off (brightness 0).", no_arguments(), lambda: self._set(0.0), out,
                     annotations=SAFE_WRITE, fast=True),
        ]

    def sensors(self) -> list[SensorSpec]:
        return [SensorSpec("brightness", "PWM duty fraction 0..1", self._brightness, unit="",
                           poll_interval=1.0, deadband=0.01,
                           value_schema={"type": "number", "minimum": 0, "maximum": 1}, fast=True)]


class DigitalOutput(_GpioDriver):
    """A plain on/off output, via ``gpiozero.DigitalOutputDevice``.

    Tools ``on``, ``off``, ``set`` (``state`` bool) -> ``{"state": bool}``; all destructive (they
    switch a load). ``run`` (``seconds`` 0.1..86400): on for ``seconds``, then off, a job (MCP
    task, resumable: after an agent restart it runs on until the original end; cancelled or
    stopped: off at once) -> ``{"state": bool, "ran_s": float, "cancelled": bool}``.
    Sensor ``state`` (bool, polled every 1 s). ``initial``: the state set at start.
    """

    kind = "digital_output"
    description = "On/off GPIO output"
    options_schema = _options_schema({
        "pin": PIN_SCHEMA,
        "active_high": ACTIVE_HIGH_SCHEMA,
        "initial": {"type": "boolean", "default": False, "description": "state set when the driver starts"},
    }, ["pin"])

    def __init__(self, name, options, *, context):
        super().__init__(name, options, context=context)
        self.output = self._open(DigitalOutputDevice(
            self.options["pin"], active_high=self.options.get("active_high", True),
            initial_value=self.options.get("initial", False), pin_factory=self.factory))

    def _set(self, state: bool) -> dict[str, bool]:
        self.output.on() if state else self.output.off()
        return {"state": bool(self.output.value)}

    def _off(self) -> None:
        self.output.off()

    def _run(self, seconds: float, *, progress, cancel, started_at: float | None = None) -> dict[str, Any]:
        """On until ``started_at + seconds`` (Unix s; ``started_at`` defaults to now), then off."""
        start = time.time() if started_at is None else started_at
        end = start + seconds
        cancelled = False
        try:
            if time.time() < end:
                self.output.on()
                while not cancelled:
                    left = end - time.time()
                    if left <= 0:
                        break
                    cancelled = wait_or_cancel(cancel, min(left, 1.0))
                    progress(round(min(seconds, time.time() - start), 1), seconds,
                             f"on for {min(seconds, time.time() - start):.0f}/{seconds:g} s")
        finally:
            self.output.off()
        return {"state": bool(self.output.value), "ran_s": round(min(seconds, time.time() - start), 3),
                "cancelled": cancelled}

    def tools(self) -> list[ToolSpec]:
        set_in = {"type": "object", "properties": {"state": {"type": "boolean", "description": "true = on"}},
                  "required": ["state"], "additionalProperties": False}
        run_in = {"type": "object", "properties": {"seconds": {
            "type": "number", "minimum": 0.1, "maximum": 86400,
            "description": "how long to stay on (s), then off"}}, "required": ["seconds"], "additionalProperties": False}
        run_out = {"type": "object", "properties": {
            "state": {"type": "boolean", "description": "state afterwards (false: off)"},
            "ran_s": {"type": "number", "description": "seconds it was on (s)"},
            "cancelled": {"type": "boolean"}}, "required": ["state", "ran_s", "cancelled"]}
        return [
            ToolSpec("on", "Switch on.", no_arguments(), lambda: self._set(True), STATE_OUTPUT,
                     annotations=ACTUATOR_WRITE, fast=True),
            ToolSpec("off", "Switch off.", no_arguments(), lambda: self._set(False), STATE_OUTPUT,
                     annotations=ACTUATOR_WRITE, fast=True),
            ToolSpec("set", "Switch to `state`.", set_in, self._set, STATE_OUTPUT, annotations=ACTUATOR_WRITE,
                     fast=True),
            ToolSpec("run", "Switch on for `seconds`, then off. Best run as a task (MCP tasks): it ends on time "
                     "even if the link drops or the agent restarts; cancelling it switches off at once.",
                     run_in, self._run, run_out, annotations={**ACTUATOR_WRITE, "idempotentHint": False},
                     long_running=True, task_support="optional", stop=self._off,
                     duration=lambda seconds: seconds, resumable=True),
        ]

    def sensors(self) -> list[SensorSpec]:
        return [SensorSpec("state", "true when switched on", lambda: bool(self.output.value),
                           poll_interval=1.0, value_schema=BOOL_VALUE, fast=True)]


class Relay(DigitalOutput):
    """A relay module coil (pump, heater, fan): a :class:`DigitalOutput`. Many relay boards are
    active-low (``active_high = false``)."""

    kind = "relay"
    description = "Relay on a GPIO pin (switches a load: pump, fan, heater)"


class PushButton(_GpioDriver):
    """A push button or switch to ground (or 3.3 V), via ``gpiozero.Button``.

    Sensor ``pressed`` (bool, polled every 0.2 s). No tools. In simulation nothing presses it;
    drive the mock pin (``factory.pin(n).drive_low()`` with the pull-up).
    """

    kind = "button"
    description = "Push button or switch on a GPIO pin"
    options_schema = _options_schema({
        "pin": PIN_SCHEMA,
        "pull_up": {"type": "boolean", "default": True,
                    "description": "true: internal pull-up, button to GND; false: pull-down, button to 3.3 V"},
        "bounce_time": {"type": "number", "minimum": 0, "maximum": 1,
                        "description": "debounce time (s); omit for none"},
    }, ["pin"])

    def __init__(self, name, options, *, context):
        super().__init__(name, options, context=context)
        self.button = self._open(Button(self.options["pin"], pull_up=self.options.get("pull_up", True),
                                        bounce_time=self.options.get("bounce_time"), pin_factory=self.factory))

    def sensors(self) -> list[SensorSpec]:
        return [SensorSpec("pressed", "true while the button is pressed", lambda: bool(self.button.is_pressed),
                           poll_interval=0.2, value_schema=BOOL_VALUE, fast=True)]


class Servo(_GpioDriver):
    """A hobby servo (SG90, MG996R) on a PWM pin at 50 Hz, via ``gpiozero.AngularServo``.

    Pulse widths ``min_pulse_width``..``max_pulse_width`` (s; 1..2 ms per the SG90 datasheet) map
    to ``min_angle``..``max_angle`` (°). The servo starts detached (no pulses, limp) until moved.
    Tools: ``set_angle`` (``angle`` °) -> ``{"angle"}``; ``sweep`` (long-running: ``from``, ``to``
    °, ``step_deg`` °, ``dwell`` s; progress per step; cancellable) -> ``{"angle", "steps",
    "total", "cancelled"}``; ``detach`` -> ``{"angle": null}``. Sensor ``angle`` (°; null while
    detached).
    Raises ``ValueError`` at start if ``min_angle == max_angle`` or the pulse widths are not
    increasing.
    """

    kind = "servo"
    description = "Hobby servo on a PWM pin (angle in degrees)"
    options_schema = _options_schema({
        "pin": PIN_SCHEMA,
        "min_angle": {"type": "number", "minimum": -360, "maximum": 360, "default": -90,
                      "description": "angle at min_pulse_width (°)"},
        "max_angle": {"type": "number", "minimum": -360, "maximum": 360, "default": 90,
                      "description": "angle at max_pulse_width (°)"},
        "min_pulse_width": {"type": "number", "minimum": 0.0003, "maximum": 0.003, "default": 0.001,
                            "description": "pulse width at min_angle (s)"},
        "max_pulse_width": {"type": "number", "minimum": 0.0003, "maximum": 0.003, "default": 0.002,
                            "description": "pulse width at max_angle (s)"},
    }, ["pin"])

    @classmethod
    def check_options(cls, options) -> list[tuple[str, str]]:
        lo, hi = options.get("min_angle", -90), options.get("max_angle", 90)
        min_pw, max_pw = options.get("min_pulse_width", 0.001), options.get("max_pulse_width", 0.002)
        out = []
        if lo == hi:
            out.append(("max_angle", f"equals min_angle ({lo}°): the servo would have no range; make them differ "
                                     "(min_angle > max_angle turns the other way)"))
        if min_pw >= max_pw:
            out.append(("max_pulse_width", f"must be greater than min_pulse_width ({min_pw} s), got {max_pw} s: "
                                           "the pulse range is empty"))
        return out or super().check_options(options)

    def __init__(self, name, options, *, context):
        super().__init__(name, options, context=context)
        o = self.options
        self.min_angle, self.max_angle = o.get("min_angle", -90), o.get("max_angle", 90)
        min_pw, max_pw = o.get("min_pulse_width", 0.001), o.get("max_pulse_width", 0.002)
        if self.min_angle == self.max_angle:
            raise ValueError(f"servo {name}: min_angle and max_angle must differ")
        if min_pw >= max_pw:
            raise ValueError(f"servo {name}: min_pulse_width must be less than max_pulse_width")
        self.lo, self.hi = sorted((self.min_angle, self.max_angle))
        self.servo = self._open(AngularServo(
            o["pin"], initial_angle=None, min_angle=self.min_angle, max_angle=self.max_angle,
            min_pulse_width=min_pw, max_pulse_width=max_pw, pin_factory=self.factory))

    def _angle(self) -> float | None:
        angle = self.servo.angle
        return None if angle is None else round(angle, 3)

    def _check(self, what: str, angle: float) -> float:
        if not self.lo <= angle <= self.hi:
            raise ToolInputError(f"{what} {angle}° is outside {self.lo}..{self.hi}°")
        return angle

    def _set_angle(self, angle: float) -> dict[str, Any]:
        self.servo.angle = self._check("angle", angle)
        return {"angle": self._angle()}

    def _sweep(self, to: float, step_deg: float = 5.0, dwell: float = 0.2, *, progress, cancel, **args):
        start = self._check("from", args["from"])
        self._check("to", to)
        if step_deg <= 0:
            raise ToolInputError("step_deg must be positive")
        total = max(1, math.ceil(abs(to - start) / step_deg - 1e-9))
        direction = 1 if to >= start else -1
        steps, cancelled = 0, False
        for i in range(total + 1):
            if i and cancel is not None and cancel.is_set():  # a stop() may have detached it: stay so
                cancelled = True
                break
            angle = to if i == total else start + direction * step_deg * i
            self.servo.angle = angle
            if i:
                steps = i
                progress(i, total, f"{angle:g}°")
            if i < total and wait_or_cancel(cancel, dwell):
                cancelled = True
                break
        return {"angle": self._angle(), "steps": steps, "total": total, "cancelled": cancelled}

    def _sweep_duration(self, to: float, step_deg: float = 5.0, dwell: float = 0.2, **args: Any) -> float:
        """Planned seconds of a sweep: one ``dwell`` per step."""
        steps = max(1, math.ceil(abs(to - args["from"]) / step_deg - 1e-9)) if step_deg > 0 else 1
        return steps * dwell

    def _detach(self) -> dict[str, Any]:
        self.servo.detach()
        return {"angle": None}

    def tools(self) -> list[ToolSpec]:
        lo, hi = self.lo, self.hi
        angle = {"type": "number", "minimum": lo, "maximum": hi}
        angle_out = {"type": "object", "properties": {"angle": {"type": ["number", "null"],
                                                                "description": "angle (°); null = detached"}},
                     "required": ["angle"]}
        set_in = {"type": "object", "properties": {"angle": {**angle, "description": f"target angle {lo}..{hi} (°)"}},
                  "required": ["angle"], "additionalProperties": False}
        sweep_in = {
            "type": "object",
            "properties": {
                "from": {**angle, "description": "start angle (°)"},
                "to": {**angle, "description": "end angle (°)"},
                "step_deg": {"type": "number", "exclusiveMinimum": 0, "maximum": hi - lo, "default": 5,
                             "description": "angle change per step (°)"},
                "dwell": {"type": "number", "minimum": 0.02, "maximum": 10, "default": 0.2,
                          "description": "pause after each step (s)"},
            },
            "required": ["from", "to"],
            "additionalProperties": False,
        }
        sweep_out = {"type": "object", "properties": {
            "angle": {"type": ["number", "null"], "description": "final angle (°)"},
            "steps": {"type": "integer"}, "total": {"type": "integer"}, "cancelled": {"type": "boolean"}},
            "required": ["angle", "steps", "total", "cancelled"]}
        move = {"readOnlyHint": False, "destructiveHint": True}
        return [
            ToolSpec("set_angle", f"Move the servo to `angle` ({lo}..{hi}°).", set_in, self._set_angle, angle_out,
                     annotations={**move, "idempotentHint": True}),
            ToolSpec("sweep", "Move from `from` to `to` in `step_deg` steps, pausing `dwell` s per step. "
                     "May run as a task (MCP tasks): stopping it detaches the servo where it is.",
                     sweep_in, self._sweep, sweep_out, annotations={**move, "idempotentHint": False},
                     long_running=True, task_support="optional", stop=self.servo.detach,
                     duration=self._sweep_duration),
            ToolSpec("detach", "Stop sending pulses: the servo goes limp and holds no position.",
                     no_arguments(), self._detach, angle_out,
                     annotations={**move, "idempotentHint": True}),
        ]

    def sensors(self) -> list[SensorSpec]:
        return [SensorSpec("angle", "commanded servo angle; null while detached", self._angle, unit="°",
                           poll_interval=1.0, deadband=0.5, value_schema={"type": ["number", "null"]})]


class _SimEchoPin(MockTriggerPin):
    """A mock HC-SR04 trigger pin whose echo pulse lasts as long as sound takes to travel to
    ``distance()`` metres and back."""

    def __init__(self, factory, info, echo_pin=None, distance: Callable[[], float] = lambda: 1.0):
        super().__init__(factory, info, echo_pin=echo_pin)
        self.distance = distance

    def _echo(self):
        self.echo_time = 2 * self.distance() / SPEED_OF_SOUND
        super()._echo()


class _SimEchoPWMPin(_BoundedStates, _SimEchoPin, MockPWMPin):
    """The same, for a MockFactory whose pins are ``MockPWMPin`` (gpiozero insists pins agree)."""


class _HCSR04(DistanceSensor):
    """gpiozero's DistanceSensor that also remembers when an echo last came back (monotonic s)."""

    last_echo: float | None = None

    def _read(self):
        if getattr(self, "_trigger", None) is None:
            # closed while gpiozero's queue thread still samples: ReferenceError is how that
            # thread learns its parent is gone (gpiozero.mixins.GPIOQueue.fill); without it the
            # thread dies on an AttributeError at every stop
            raise ReferenceError("distance sensor closed")
        try:
            value = super()._read()
        except AttributeError:
            if getattr(self, "_trigger", None) is None:  # closed during this read
                raise ReferenceError("distance sensor closed") from None
            raise
        if value is not None:
            self.last_echo = time.monotonic()
        return value


class UltrasonicDistance(_GpioDriver):
    """An HC-SR04 ultrasonic range finder (trigger + echo pins), via ``gpiozero.DistanceSensor``.

    Sensor ``distance`` (m, 0..``max_distance``; readings beyond are clamped to it), the median of
    the last 5 pings; ``min_interval`` 0.06 s (the datasheet's 60 ms measurement cycle). The echo
    pin needs a 5 V -> 3.3 V divider (or use an HC-SR04P). Raises ``DriverError`` when no echo
    came back for 1 s. Simulated: the distance drifts slowly around half ``max_distance``.
    """

    kind = "distance"
    description = "HC-SR04 ultrasonic distance sensor"
    options_schema = _options_schema({
        "trigger": {**PIN_SCHEMA, "description": "pin wired to TRIG (BCM number or name)"},
        "echo": {**PIN_SCHEMA, "description": "pin wired to ECHO through a 5 V -> 3.3 V divider"},
        "max_distance": {"type": "number", "minimum": 0.05, "maximum": 4, "default": 2,
                         "description": "largest distance expected (m); the HC-SR04 ranges 0.02..4 m"},
    }, ["trigger", "echo"])
    PIN_KEYS = ("trigger", "echo")
    ECHO_TIMEOUT = 1.0  # s without an echo before a reading is an error

    def __init__(self, name, options, *, context):
        super().__init__(name, options, context=context)
        self.max_distance = self.options.get("max_distance", 2)
        trigger, echo = self.options["trigger"], self.options["echo"]
        self._t0 = time.monotonic()
        # hardware: the sensor itself; simulated: an EchoSimulator on the mock trigger pin
        self.target = context.attach("hcsr04", factory=self.factory, trigger=trigger, echo=echo,
                                     max_distance=self.max_distance, owner=name)
        with warnings.catch_warnings():
            # gpiozero falls back to software timing on pins without PWM: harmless here
            warnings.simplefilter("ignore", PWMSoftwareFallback)
            self.sensor = self._open(_HCSR04(echo, trigger, queue_len=5, partial=True,
                                             max_distance=self.max_distance, pin_factory=self.factory))

    def _distance(self) -> float:
        deadline = time.monotonic() + self.ECHO_TIMEOUT
        while self.sensor.last_echo is None and time.monotonic() < deadline:
            time.sleep(0.02)
        last = self.sensor.last_echo
        age = time.monotonic() - (last if last is not None else self._t0)
        if last is None or age > self.ECHO_TIMEOUT:
            raise DriverError(
                f"HC-SR04 {self.name} (trigger {self.options['trigger']}, echo {self.options['echo']}): "
                f"no echo for {age:.1f} s: check the 5 V supply, the wiring and the divider on ECHO")
        return round(self.sensor.distance, 3)

    def sensors(self) -> list[SensorSpec]:
        return [SensorSpec("distance", "distance to the nearest object (m)", self._distance, unit="m",
                           min_interval=0.06, poll_interval=2.0, deadband=0.01,
                           value_schema={"type": "number", "minimum": 0, "maximum": self.max_distance})]


class EchoSimulator:
    """An HC-SR04 in front of a slowly moving target, on a gpiozero ``MockFactory``: the trigger
    pin becomes a mock trigger pin whose echo pulse lasts as long as sound takes to travel to
    :meth:`distance` (m) and back. Raises ``DriverError`` when ``factory`` is not a
    ``MockFactory`` or the trigger pin is already in use."""

    def __init__(self, factory: Any, trigger: Any, echo: Any, max_distance: float = 2.0, owner: str = "distance"):
        if not isinstance(factory, MockFactory):
            raise DriverError(f"distance {owner}: simulation needs a gpiozero MockFactory")
        self.max_distance = max_distance
        self._t0 = time.monotonic()
        pwm = issubclass(factory.pin_class, MockPWMPin)
        pin = factory.pin(trigger, pin_class=_SimEchoPWMPin if pwm else _SimEchoPin, echo_pin=factory.pin(echo))
        if not isinstance(pin, _SimEchoPin):
            raise DriverError(f"distance {owner}: trigger pin {trigger} is already used by another device")
        pin.distance = self.distance

    def distance(self, now: float | None = None) -> float:
        """The target distance (m) at monotonic time ``now``: a slow 5-minute swing around half
        ``max_distance``."""
        t = (time.monotonic() if now is None else now) - self._t0
        return self.max_distance * (0.5 + 0.2 * math.sin(2 * math.pi * t / 300))

    def close(self) -> None:
        """Nothing to stop: the pin closes with the sensor."""


@simulated_model("hcsr04")
def _simulated_hcsr04(context: DriverContext, **where: Any) -> EchoSimulator:
    return EchoSimulator(where["factory"], where["trigger"], where["echo"], where.get("max_distance", 2.0),
                         where.get("owner", "distance"))


class PirSimulator:
    """Drives a mock input pin like an HC-SR501 PIR: idle for ``idle`` (s, uniform range), then
    high for ``hold`` (s, the module's hold time), repeatedly, on a daemon thread until ``stop``
    is set or :meth:`close` is called."""

    def __init__(self, pin, stop: threading.Event | None = None, idle=(5.0, 30.0), hold=(3.0, 6.0), seed=None):
        self.pin, self.idle, self.hold = pin, idle, hold
        self.stop = stop if stop is not None else threading.Event()
        self.random = random.Random(seed)
        self.thread = threading.Thread(target=self._run, name="pir-sim", daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Stop driving the pin. Safe to call twice."""
        self.stop.set()

    def _run(self) -> None:
        while not self.stop.wait(self.random.uniform(*self.idle)):
            self.pin.drive_high()
            if self.stop.wait(self.random.uniform(*self.hold)):
                break
            self.pin.drive_low()


@simulated_model("pir")
def _simulated_pir(context: DriverContext, **where: Any) -> PirSimulator:
    return PirSimulator(where["pin"])


class Motion(_GpioDriver):
    """A PIR motion sensor (HC-SR501, AM312) with an active-high output, via
    ``gpiozero.MotionSensor`` sampled at 10 Hz.

    Sensor ``motion`` (bool, polled every 0.5 s). Simulated: a thread reports motion now and
    then (idle 5..30 s, then 3..6 s of motion).
    """

    kind = "motion"
    description = "PIR motion sensor (HC-SR501) on a GPIO pin"
    options_schema = _options_schema({"pin": PIN_SCHEMA}, ["pin"])

    def __init__(self, name, options, *, context):
        super().__init__(name, options, context=context)
        self.sensor = self._open(MotionSensor(self.options["pin"], pull_up=False, pin_factory=self.factory))
        # hardware: the PIR drives the pin; simulated: a PirSimulator does
        self._open(context.attach("pir", pin=self.sensor.pin))

    def sensors(self) -> list[SensorSpec]:
        return [SensorSpec("motion", "true while the PIR reports motion", lambda: bool(self.sensor.motion_detected),
                           poll_interval=0.5, value_schema=BOOL_VALUE)]
