"""What a driver is: it declares tools and sensors; the runtime exposes them over MCP.

Drivers never import MQTT or MCP. A driver is a plain class that

- takes its instance ``name``, its validated ``options`` (the config table) and a
  :class:`DriverContext` (the backend: gpiozero pin factory, sysfs, I2C buses, serial ports,
  simulated device models), keyword-only;
- declares :class:`ToolSpec` (actions, with JSON Schemas carrying units and ranges from the
  datasheet) and :class:`SensorSpec` (readings, with units and the fastest rate the hardware
  allows);
- implements them as plain, synchronous Python callables. The runtime calls them from a worker
  thread (on the event loop thread when a spec is declared ``fast``), one call at a time per
  driver, so drivers need no locking of their own.

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

# ToolSpec.task_support values (MCP 2025-11-25 server/tools, Tool.execution.taskSupport).
TASK_SUPPORT = ("forbidden", "optional", "required")

# model name -> factory(context, **where) -> an object with close(); see simulated_model().
SIMULATED_MODELS: dict[str, Callable[..., Any]] = {}


def simulated_model(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``factory(context, **where)`` as the simulated device ``name`` (a decorator).

    A simulated context's :meth:`DriverContext.attach` calls it; the factory builds a software
    model of the device behind the driver's interface (it drives a mock pin, rewrites a sysfs
    file, feeds a pty, answers on a simulated I2C bus) and returns an object with ``close()``
    (stops the model; called twice must be safe) and whatever attributes the driver reads
    (the same names :class:`Attachment` echoes from ``where`` on hardware). Registering a name
    twice replaces the model. Returns the factory unchanged.
    """
    def register(factory: Callable[..., Any]) -> Callable[..., Any]:
        SIMULATED_MODELS[name] = factory
        return factory
    return register


class Attachment:
    """What :meth:`DriverContext.attach` returns on hardware: the real device is wired, so
    nothing is modelled. Its attributes are the keyword arguments ``attach`` got (``where``)
    and ``close()`` does nothing."""

    def __init__(self, **where: Any):
        self.__dict__.update(where)

    def __getattr__(self, name: str) -> Any:  # typed access to the echoed keywords
        raise AttributeError(f"{type(self).__name__} has no {name!r} (not given to attach)")

    def close(self) -> None:
        """Nothing to release: the device is real."""


class Backend:
    """The hardware backend: what a context reaches on a real device.

    ``simulated`` is False; gpiozero's default pin factory, the real ``/sys``, ``smbus2``, pyserial,
    and :meth:`attach` models nothing. :class:`edge_agent.drivers.simulation.SimulatedBackend`
    replaces each part by a model. A backend is chosen once, where the context is built.
    """

    simulated: ClassVar[bool] = False

    def default_sysfs_root(self, state_dir: str) -> str:
        """The folder that stands for ``/sys``: ``/sys`` itself."""
        return "/sys"

    def pin_factory(self) -> Any:
        """The gpiozero pin factory: ``None``, i.e. gpiozero's default (lgpio on a Pi 5)."""
        return None

    def open_i2c(self, number: int) -> Any:
        """``smbus2.SMBus(number)``, opened (the caller closes it). Raises ``OSError``
        (``FileNotFoundError``: no ``/dev/i2c-<number>``; ``PermissionError``) and
        ``ImportError`` (smbus2 not installed)."""
        import smbus2

        return smbus2.SMBus(number)

    def open_serial(self, port: str, **settings: Any) -> Any:
        """An unopened ``serial.Serial`` for ``port`` with pyserial ``settings`` (``baudrate``,
        ``timeout`` in s, ``exclusive``...): set ``dtr``/``rts`` if needed, then ``open()`` it or
        use it in ``with``. Raises ``ImportError`` (pyserial not installed)."""
        import serial

        port_obj = serial.Serial(**settings)
        port_obj.port = port
        return port_obj

    def attach(self, context: DriverContext, model: str, where: dict[str, Any]) -> Any:
        """The device ``model`` at ``where``: on hardware, an :class:`Attachment` echoing ``where``."""
        return Attachment(**where)

    def close(self) -> None:
        """Release what the backend opened (nothing on hardware)."""


@dataclass
class DriverContext:
    """The backend a driver runs on, chosen once where the context is built.

    Build one with :meth:`hardware` or :meth:`simulated` (or ``DriverContext(simulate=...)``:
    the same). A driver never asks whether it is simulated: it reaches the world through the
    context, and the backend decides what answers:

    ======================  ==============================  ==================================
    driver asks             hardware                         simulated
    ======================  ==============================  ==================================
    :meth:`gpio_factory`    gpiozero's default (lgpio)      a shared ``MockFactory``
    ``sysfs_root``          ``/sys``                        ``<state_dir>/simulated/sys``
    ``proc_root``           ``/proc``                       ``/proc`` (the host's own)
    :meth:`i2c_bus`         ``smbus2.SMBus(n)``             a bus with a BME280, SHT3x,
                                                            BH1750 and ADS1115 on it
    :meth:`serial_port`     pyserial                        pyserial (a model's pty)
    :meth:`attach`          :class:`Attachment` (nothing)   the registered model: a PIR that
                                                            sees motion, a DS18B20 sysfs file
                                                            that changes, a GPS on a pty...
    ======================  ==============================  ==================================

    Fields: ``simulate`` (which backend ``__post_init__`` picks when ``backend`` is not given;
    read it only for hardware no backend here covers), ``pin_factory`` (a gpiozero pin factory
    shared by all GPIO drivers; ``None`` = the backend's), ``sysfs_root`` (the folder that
    stands for ``/sys``; empty = the backend's), ``proc_root`` (stands for ``/proc``),
    ``state_dir`` (a writable folder for simulator files), ``i2c_opener`` (``bus number ->
    SMBus-like``, overrides the backend: tests pass a simulated bus), ``serial_opener``
    (``(port, **pyserial settings) -> unopened Serial``, overrides the backend).
    ``dataclasses.replace`` keeps the backend (and so its simulated buses and pin factory).
    """

    simulate: bool = False
    pin_factory: Any = None
    sysfs_root: str = ""
    proc_root: str = "/proc"
    state_dir: str = "/tmp"
    i2c_opener: Callable[[int], Any] | None = None
    serial_opener: Callable[..., Any] | None = None
    backend: Backend | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.backend is None:
            if self.simulate:
                from edge_agent.drivers.simulation import SimulatedBackend

                self.backend = SimulatedBackend(self.state_dir)
            else:
                self.backend = Backend()
        self.simulate = self.backend.simulated
        if not self.sysfs_root:
            self.sysfs_root = self.backend.default_sysfs_root(self.state_dir)

    @classmethod
    def hardware(cls, **fields: Any) -> DriverContext:
        """A context on the real devices (``fields``: any of the dataclass fields)."""
        return cls(backend=Backend(), **fields)

    @classmethod
    def simulated(cls, state_dir: str = "/tmp", **fields: Any) -> DriverContext:
        """A context on simulated devices; simulator files go under ``state_dir``."""
        from edge_agent.drivers.simulation import SimulatedBackend

        return cls(backend=SimulatedBackend(state_dir), state_dir=state_dir, **fields)

    @property
    def _backend(self) -> Backend:
        assert self.backend is not None  # set by __post_init__
        return self.backend

    def gpio_factory(self) -> Any:
        """The gpiozero pin factory GPIO devices are built on: ``pin_factory`` if set, else the
        backend's (``None`` = gpiozero's default on hardware; a shared ``MockFactory`` with
        PWM-capable pins when simulated)."""
        return self.pin_factory if self.pin_factory is not None else self._backend.pin_factory()

    def i2c_bus(self, number: int) -> Any:
        """An open I2C bus ``/dev/i2c-<number>`` with smbus2's ``SMBus`` interface.

        ``i2c_opener(number)`` when set; else the backend's: ``smbus2.SMBus(number)`` on
        hardware (the caller closes it), the simulated bus ``number`` when simulated (one per
        backend, populated with a simulated BME280, SHT3x, BH1750 and ADS1115 at each of their
        addresses; its ``close()`` does nothing). Raises ``OSError`` (``FileNotFoundError``: no
        such bus, I2C not enabled; ``PermissionError``: the user is not in the ``i2c`` group)
        and ``ImportError`` (smbus2 not installed).
        """
        if self.i2c_opener is not None:
            return self.i2c_opener(number)
        return self._backend.open_i2c(number)

    def serial_port(self, port: str, **settings: Any) -> Any:
        """An unopened pyserial ``Serial`` on ``port`` (a device path) with ``settings``
        (``baudrate`` bit/s, ``timeout``/``write_timeout`` s, ``exclusive``): ``serial_opener``
        when set, else the backend's. Use it in ``with`` or call ``open()``, which raises
        ``serial.SerialException`` when the port is missing or busy. Raises ``ImportError``
        (pyserial not installed)."""
        if self.serial_opener is not None:
            return self.serial_opener(port, **settings)
        return self._backend.open_serial(port, **settings)

    def attach(self, model: str, **where: Any) -> Any:
        """The device ``model`` the driver talks to, at ``where`` (pins, paths, ids, ranges).

        Hardware: an :class:`Attachment` whose attributes are ``where`` (the real device is
        there). Simulated: the model registered with :func:`simulated_model` under ``model``,
        built as ``factory(self, **where)``, or an :class:`Attachment` when none is registered
        (e.g. a MicroPython board: the real one is used). Either way the driver reads the same
        attributes and calls ``close()`` when it closes. Models raise ``DriverError`` when
        ``where`` cannot be simulated.
        """
        return self._backend.attach(self, model, where)

    def close(self) -> None:
        """Release the backend's shared parts (a simulated pin factory). Safe to call twice."""
        self._backend.close()


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
    ``fast``: the handler returns within tens of microseconds and never waits (a GPIO line
    write or read through gpiozero: no sleep, no bus transaction, no file or serial I/O); the
    runtime then calls it on the event loop thread instead of a worker thread, which saves two
    thread hand-offs per call. Still one call at a time per driver. Ignored with
    ``long_running``. Default False: a worker thread.

    Jobs (MCP 2025-11-25 tasks, ``basic/utilities/tasks``): a long-running action a client may
    start and check on later (run the pump for 10 minutes) declares ``task_support``
    ``"optional"`` (a plain call or a task) or ``"required"`` (only as a task); the default
    ``"forbidden"`` is a plain tool. A job must be ``long_running`` (it polls ``cancel``) and
    gives ``stop``: a callable without arguments that puts the hardware in its safe state at
    once (relay off, servo detached, LED off), from any thread, safe to call at any time and
    twice. The runtime calls it when the task is cancelled, when the job overruns its planned
    end, when the handler fails, and at start for a job an agent crash left running.
    ``duration(**arguments)``: the job's planned length in seconds (the pump's ``seconds``);
    the task then has a hard end ``started + duration``, enforced by the runtime even if the
    handler hangs. ``resumable``: after an agent restart a job still before its end is run
    again, with the same arguments and ``started_at`` (Unix s of the first start), and must
    finish by the original end (the pump runs on for what is left); a job that is not
    resumable is stopped at restart and its task fails.
    """

    name: str
    description: str
    input_schema: Mapping[str, Any]
    handler: Callable[..., Any]
    output_schema: Mapping[str, Any] | None = None
    title: str | None = None
    annotations: Mapping[str, Any] = field(default_factory=dict)
    long_running: bool = False
    fast: bool = False
    task_support: str = "forbidden"
    stop: Callable[[], Any] | None = None
    duration: Callable[..., float] | None = None
    resumable: bool = False

    def __post_init__(self) -> None:
        if self.task_support not in TASK_SUPPORT:
            raise ValueError(f"tool {self.name}: task_support must be one of {', '.join(TASK_SUPPORT)}, "
                             f"not {self.task_support!r}")
        if self.job and not self.long_running:
            raise ValueError(f"tool {self.name}: a job (task_support {self.task_support}) must be long_running")

    @property
    def job(self) -> bool:
        """True if the tool may run as a task (``task_support`` is not ``"forbidden"``)."""
        return self.task_support != "forbidden"


@dataclass(frozen=True)
class SensorSpec:
    """A reading a driver offers, exposed as the MCP resource ``sensor://{driver}/{name}``.

    ``read()`` returns a number, a bool, a string or a flat ``dict`` of fields (a GPS fix) and
    raises ``DriverError``/``OSError`` on failure. ``unit``: the unit symbol (``°C``, ``m``,
    ``%``, ``s``, ``B``; empty for unitless). ``min_interval``: seconds; the hardware must not
    be read more often (DS18B20: 0.75 s at 12 bit). ``poll_interval``: default seconds between
    polls (config overrides; ``None`` = only on demand). ``deadband``: default absolute change
    below which a new reading does not count as an update (numbers only; config overrides).
    ``value_schema``: JSON Schema of ``read()``'s value. ``fast``: ``read()`` returns within tens
    of microseconds and never waits (a GPIO level through gpiozero), so the runtime calls it on
    the event loop thread (see :attr:`ToolSpec.fast`); default False: a worker thread.
    """

    name: str
    description: str
    read: Callable[[], Any]
    unit: str = ""
    min_interval: float = 0.0
    poll_interval: float | None = 5.0
    deadband: float = 0.0
    value_schema: Mapping[str, Any] = field(default_factory=lambda: {"type": "number"})
    fast: bool = False


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
