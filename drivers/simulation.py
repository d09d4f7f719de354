"""The simulated backend: what a simulated :class:`~edge_agent.drivers.base.DriverContext`
puts behind a driver's interfaces, so the driver runs the code it runs on hardware.

- GPIO: one gpiozero ``MockFactory`` per backend, with PWM-capable pins whose state history
  is bounded (a simulated device runs for months).
- sysfs: a folder ``<state_dir>/simulated/sys`` that stands for ``/sys``; models write the
  files the kernel would (a DS18B20's ``w1_slave``, the SoC's thermal zone) and keep them
  changing.
- I2C: one :class:`edge_agent.drivers.i2c.sim.SimulatedBus` per bus number, with a BME280,
  SHT3x, BH1750 and ADS1115 at each of their addresses, shared by every driver.
- serial: pyserial, as on hardware; a device model (the GPS) is a pty the driver opens like
  a real port.
- device models: :meth:`DriverContext.attach` builds the model registered under its name
  with :func:`edge_agent.drivers.base.simulated_model` (the module defining a driver
  registers its models: ``pir`` and ``hcsr04`` in :mod:`.gpio`, ``ds18b20`` in
  :mod:`.onewire`, ``soc_thermal`` in :mod:`.system`, ``nmea_gps`` in :mod:`.serial`).
  A name without a model (``mpboard``) gets the real device.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Callable, ClassVar

from edge_agent.drivers.base import SIMULATED_MODELS, Attachment, Backend, DriverContext

log = logging.getLogger(__name__)


class SimulatedBackend(Backend):
    """Simulated devices for every interface (see the module docstring). ``state_dir``: a
    writable folder for simulator files. Thread-safe: drivers start on worker threads."""

    simulated: ClassVar[bool] = True

    def __init__(self, state_dir: str = "/tmp"):
        self.state_dir = state_dir
        self._lock = threading.Lock()
        self._factory: Any = None
        self.i2c_buses: dict[int, Any] = {}

    def default_sysfs_root(self, state_dir: str) -> str:
        """``<state_dir>/simulated/sys`` (created by the models that write into it)."""
        return os.path.join(state_dir, "simulated", "sys")

    def pin_factory(self) -> Any:
        """One ``MockFactory`` (bounded ``MockPWMPin`` histories) for all drivers of this
        backend, made on first use. Raises ``ImportError`` without gpiozero."""
        with self._lock:
            if self._factory is None:
                from edge_agent.drivers.gpio import simulated_factory

                self._factory = simulated_factory()
            return self._factory

    def open_i2c(self, number: int) -> Any:
        """The simulated bus ``number`` (populated on first use; ``close()`` does nothing)."""
        from edge_agent.drivers.i2c.sim import SimulatedBus

        with self._lock:
            if number not in self.i2c_buses:
                self.i2c_buses[number] = SimulatedBus.populated()
            return self.i2c_buses[number]

    def attach(self, context: DriverContext, model: str, where: dict[str, Any]) -> Any:
        """``SIMULATED_MODELS[model](context, **where)``, or an :class:`Attachment` (the real
        device) when no model of that name is registered."""
        factory = SIMULATED_MODELS.get(model)
        if factory is None:
            log.debug("no simulated %s: the real device is used", model)
            return Attachment(**where)
        return factory(context, **where)

    def close(self) -> None:
        """Close the shared pin factory (if one was made). Safe to call twice."""
        with self._lock:
            factory, self._factory = self._factory, None
        if factory is not None:
            factory.close()


class FileModel:
    """A sysfs file a simulated device keeps up to date: ``path`` gets ``text()`` now and then
    every ``interval`` s from a daemon thread, each time replaced atomically (a reader never
    sees half a file), until :meth:`close`."""

    def __init__(self, path: str, text: Callable[[], str], interval: float = 1.0, name: str = "sim-file"):
        self.path, self.text, self.interval = path, text, interval
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self._stop = threading.Event()
        self.write()
        self._thread: threading.Thread | None = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def write(self) -> None:
        """Write ``text()`` to ``path`` now (through a temporary file and a rename)."""
        folder, base = os.path.split(self.path)
        tmp = os.path.join(folder, f".{base}.tmp")
        with open(tmp, "w", encoding="ascii") as f:
            f.write(self.text())
        os.replace(tmp, self.path)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.write()
            except OSError as exc:  # the folder went away (a test's tmp_path): stop quietly
                log.debug("simulated %s: %s", self.path, exc)
                return

    def close(self) -> None:
        """Stop updating the file (it stays). Safe to call twice."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=2)
