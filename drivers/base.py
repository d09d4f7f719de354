"""What a driver is: it declares tools and sensors; the runtime exposes them over MCP.

Drivers never import MQTT or MCP. A driver is a plain class that

- takes its instance ``name``, its validated ``options`` (the config table) and a
  :class:`DriverContext` (the backend: gpiozero pin factory, whether hardware is simulated,
  where sysfs is), keyword-only;
- declares :class:`ToolSpec` (actions, with JSON Schemas carrying units and ranges from the
  datasheet) and :class:`SensorSpec` (readings, with units and the fastest rate the hardware
  allows);
- implements them as plain, synchronous Python callables. The runtime calls them from a worker
  thread, one call at a time per driver, so drivers need no locking of their own.

Errors: a handler raises :class:`edge_agent.errors.ToolInputError` for an argument the
hardware rejects (the caller sees an ``isError`` result with the message) and
:class:`edge_agent.errors.DriverError` (or ``OSError``) when the hardware fails (the runtime
marks the driver failed, logs it and shows it in the health resource; the agent keeps serving).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping

# progress(progress, total=None, message=None): progress must increase on each call.
ProgressFn = Callable[..., None]


@dataclass
class DriverContext:
    """The backend a driver runs on.

    ``simulate``: True on a machine without the hardware: gpiozero's MockFactory, a pty that
    emits NMEA sentences, a temporary sysfs folder. ``pin_factory``: the gpiozero pin factory
    shared by all GPIO drivers (a ``MockFactory`` when simulating, else gpiozero's default,
    ``None``). ``sysfs_root``: the folder that stands for ``/sys`` (``/sys`` on a real device).
    ``proc_root``: the folder that stands for ``/proc``. ``state_dir``: a writable folder the
    driver may use for simulator files. ``i2c_opener``: ``bus number -> SMBus-like object``
    overriding :meth:`i2c_bus` (tests pass a simulated bus); ``i2c_sim_buses``: the simulated
    buses, shared by every driver on this context (and on copies made with
    ``dataclasses.replace``).
    """

    simulate: bool = False
    pin_factory: Any = None
    sysfs_root: str = "/sys"
    proc_root: str = "/proc"
    state_dir: str = "/tmp"
    i2c_opener: Callable[[int], Any] | None = None
    i2c_sim_buses: dict[int, Any] = field(default_factory=dict, repr=False)

    def i2c_bus(self, number: int) -> Any:
        """An open I2C bus ``/dev/i2c-<number>`` with smbus2's ``SMBus`` interface.

        ``i2c_opener(number)`` when set; else, when simulating, the simulated bus ``number``
        (one per context, populated with a simulated BME280, SHT3x, BH1750 and ADS1115 at each of
        their addresses; its ``close()`` does nothing); else ``smbus2.SMBus(number)``, which
        the caller closes. Raises ``OSError`` (``FileNotFoundError``: no such bus, I2C not
        enabled; ``PermissionError``: the user is not in the ``i2c`` group) and ``ImportError``
        (smbus2 not installed).
        """
        if self.i2c_opener is not None:
            return self.i2c_opener(number)
        if self.simulate:
            from edge_agent.drivers.i2c.sim import SimulatedBus

            if number not in self.i2c_sim_buses:
                self.i2c_sim_buses.setdefault(number, SimulatedBus.populated())
            return self.i2c_sim_buses[number]
        import smbus2

        return smbus2.SMBus(number)


@dataclass(frozen=True)
class ToolSpec:
    """An action a driver offers, exposed as the MCP tool ``{driver}_{name}``.

    ``name``: ``[a-z0-9_]+``, short (``on``, ``set``, ``sweep``). ``input_schema``: a JSON Schema
    object; put units in property descriptions and hardware ranges in ``minimum``/``maximum``.
    A tool without arguments uses ``{"type": "object", "additionalProperties": False}``.
    ``handler(**arguments)`` gets validated arguments and returns a JSON-serialisable ``dict``
    matching ``output_schema`` (then sent as ``structuredContent``), or ``None``.
    ``annotations``: MCP tool annotations (``readOnlyHint``, ``destructiveHint``,
    ``idempotentHint``, ``openWorldHint``). ``long_running``: the handler also receives
    ``progress`` (a :data:`ProgressFn`) and ``cancel`` (a ``threading.Event`` it must poll and
    stop early on, returning what it did so far).
    """

    name: str
    description: str
    input_schema: Mapping[str, Any]
    handler: Callable[..., Any]
    output_schema: Mapping[str, Any] | None = None
    title: str | None = None
    annotations: Mapping[str, Any] = field(default_factory=dict)
    long_running: bool = False


@dataclass(frozen=True)
class SensorSpec:
    """A reading a driver offers, exposed as the MCP resource ``sensor://{driver}/{name}``.

    ``read()`` returns a number, a bool, a string or a flat ``dict`` of fields (a GPS fix) and
    raises ``DriverError``/``OSError`` on failure. ``unit``: the unit symbol (``°C``, ``m``,
    ``%``, ``s``, ``B``; empty for unitless). ``min_interval``: seconds; the hardware must not
    be read more often (DS18B20: 0.75 s at 12 bit). ``poll_interval``: default seconds between
    polls (config overrides; ``None`` = only on demand). ``deadband``: default absolute change
    below which a new reading does not count as an update (numbers only; config overrides).
    ``value_schema``: JSON Schema of ``read()``'s value.
    """

    name: str
    description: str
    read: Callable[[], Any]
    unit: str = ""
    min_interval: float = 0.0
    poll_interval: float | None = 5.0
    deadband: float = 0.0
    value_schema: Mapping[str, Any] = field(default_factory=lambda: {"type": "number"})


@dataclass(frozen=True)
class PinUse:
    """A GPIO pin (or a Pi interface) a driver's configuration claims; ``edge-agent check``
    reports two claims of one pin (:mod:`edge_agent.drivers.pins`).

    ``key``: the option that sets it (``"pin"``, ``"trigger"``, ``"port"``). ``pin``: as
    configured (``17``, ``"GPIO17"``, ``"BOARD11"``); ``None`` = the interface's own pins.
    ``interface``: ``"gpio"`` (gpiozero owns the line: exclusive, needs a pin factory), or a
    kernel interface the driver needs: ``"1-wire"``, ``"uart"``, ``"i2c"``, ``"spi"`` (drivers
    may share one). ``port``: what the driver opens exclusively when not simulated (a serial
    device path such as ``/dev/ttyUSB0``, or any name, e.g. ``/dev/i2c-1@0x76``), or ``None``.
    """

    key: str
    pin: Any = None
    interface: str = "gpio"
    port: str | None = None


class Driver:
    """Base class of every driver. Subclasses set ``kind`` and ``options_schema``.

    ``options_schema`` is a JSON Schema (object) for the driver's config table, without the
    common keys ``kind``, ``name``, ``poll_interval``, ``deadband`` (the runtime owns those).
    It is what ``edge-agent check`` validates, so give every property a ``description`` with
    its unit.
    """

    kind: ClassVar[str] = ""
    description: ClassVar[str] = ""
    options_schema: ClassVar[Mapping[str, Any]] = {"type": "object"}

    def __init__(self, name: str, options: Mapping[str, Any], *, context: DriverContext):
        self.name = name
        self.options = dict(options)
        self.context = context

    @classmethod
    def pin_uses(cls, options: Mapping[str, Any]) -> list[PinUse]:
        """The pins, interfaces and serial ports ``options`` (already schema-valid) claim.
        Default: none. Must not touch hardware."""
        return []

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Problems the constructor would raise for schema-valid ``options``, found without
        touching hardware: ``[(option key or "", message)]``. Default: none."""
        return []

    def tools(self) -> list[ToolSpec]:
        """The driver's actions (default: none)."""
        return []

    def sensors(self) -> list[SensorSpec]:
        """The driver's readings (default: none)."""
        return []

    def close(self) -> None:
        """Release pins, ports and threads. Must be safe to call twice."""


def no_arguments() -> dict[str, Any]:
    """The input schema of a tool without arguments."""
    return {"type": "object", "properties": {}, "additionalProperties": False}


def wait_or_cancel(cancel: threading.Event | None, seconds: float) -> bool:
    """Sleep ``seconds``; return True early if ``cancel`` is set."""
    if cancel is None:
        threading.Event().wait(seconds)
        return False
    return cancel.wait(seconds)
