"""The driver kit: everything a driver needs, in one import, for drivers in this repo and in
other packages (docs/writing-drivers.md shows a complete out-of-tree driver package).

A driver is a plain class. Subclass :class:`Driver`, set ``kind`` (the config ``kind``, also the
entry-point name in the group ``edge_agent.drivers``), ``description`` and ``options_schema``
(a JSON Schema object for the driver's config table, units in every property's description),
and return :class:`ToolSpec` (actions: MCP tools ``{driver}_{name}``) and :class:`SensorSpec`
(readings: MCP resources ``sensor://{driver}/{name}``) from ``tools()``/``sensors()``. The
runtime calls handlers and ``read()`` on a worker thread, one call at a time per driver.

Reach hardware only through the :class:`DriverContext` you are given:

- ``context.gpio_factory()``: the gpiozero pin factory (pass it as ``pin_factory=``);
- ``context.i2c_bus(n)``: an smbus2 ``SMBus``-like bus ``/dev/i2c-<n>``;
- ``context.serial_port(port, baudrate=..., timeout=...)``: an unopened pyserial port;
- ``context.sysfs_root`` / ``context.proc_root``: where ``/sys`` and ``/proc`` are;
- ``context.attach(model, **where)``: the device behind your interface; on hardware an
  :class:`Attachment` echoing ``where``, on a simulated context the model registered with
  :func:`simulated_model` (a thread that changes a file, drives a mock pin, feeds a pty).

The context's backend is chosen once where it is built (:meth:`DriverContext.hardware`,
:meth:`DriverContext.simulated`); a driver does not ask whether it is simulated.

Errors: raise :class:`ToolInputError` from a tool handler for an argument the hardware rejects
(the caller gets an ``isError`` result with your message; the driver stays healthy) and
:class:`DriverError` (or let ``OSError`` through) when the hardware fails (the runtime marks
the driver degraded, shows it in ``device://health`` and keeps serving). A constructor that
raises makes the driver ``failed``; the runtime retries it every 15 s.

Helpers: :func:`no_arguments` (input schema of a tool without arguments),
:func:`wait_or_cancel` (sleep in a long-running tool, stopping early when cancelled),
:data:`ProgressFn` (the ``progress`` callback of a long-running tool), :class:`FileModel` (a
simulated model that keeps a sysfs-like file changing).
"""

from __future__ import annotations

from edge_agent.drivers.base import (
    Attachment,
    Backend,
    Driver,
    DriverContext,
    PinUse,
    ProgressFn,
    SensorSpec,
    ToolSpec,
    no_arguments,
    simulated_model,
    wait_or_cancel,
)
from edge_agent.drivers.plugins import DriverPluginError
from edge_agent.drivers.simulation import FileModel
from edge_agent.errors import DriverError, ToolInputError

__all__ = [
    "Attachment",
    "Backend",
    "Driver",
    "DriverContext",
    "DriverError",
    "DriverPluginError",
    "FileModel",
    "PinUse",
    "ProgressFn",
    "SensorSpec",
    "ToolInputError",
    "ToolSpec",
    "no_arguments",
    "simulated_model",
    "wait_or_cancel",
]
