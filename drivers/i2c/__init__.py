"""I2C sensor drivers through smbus2: BME280, SHT3x, BH1750 and ADS1115.

On a Raspberry Pi, bus 1 is on the header: SDA = GPIO2 (physical pin 3), SCL = GPIO3 (pin 5),
with 1.8 kΩ pull-ups to 3.3 V on the board. Enable it with ``dtparam=i2c_arm=on`` in
``/boot/firmware/config.txt`` (``raspi-config`` → Interface Options → I2C), put the agent's user
in the ``i2c`` group, and ``i2cdetect -y 1`` lists the addresses that answer.

The drivers get their bus from :meth:`DriverContext.i2c_bus` (``smbus2.SMBus(n)`` on hardware,
:class:`drivers.i2c.sim.SimulatedBus` when simulating): the same code runs on both. The bus is
opened and the chip set up on the first read, not when the driver starts, so an unplugged
sensor is a failed read (``DriverError`` naming the address and the wiring), retried on the
next read, never a crash.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

try:
    from smbus2 import i2c_msg
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError("the I2C drivers need smbus2: pip install 'edge-agent-mcp[i2c]'") from exc

from edge_agent.drivers.base import Driver, DriverContext, PinUse
from edge_agent.errors import DriverError

__all__ = ["I2CDriver", "address_option", "bus_option", "i2c_msg"]

T = TypeVar("T")

NO_ANSWER = {errno.EREMOTEIO, errno.ENXIO, errno.EIO, errno.ETIMEDOUT}


def bus_option() -> dict[str, Any]:
    """The ``bus`` option: the I2C bus number N of ``/dev/i2c-N``, default 1."""
    return {"type": "integer", "minimum": 0, "maximum": 255, "default": 1,
            "description": "I2C bus number N of /dev/i2c-N; 1 is the Pi header's SDA GPIO2 / SCL GPIO3"}


def address_option(addresses: Mapping[int, str]) -> dict[str, Any]:
    """The ``address`` option: one of ``addresses`` (7-bit address -> how the board selects it,
    checked by :meth:`I2CDriver.check_options` to name them in hex); the first is the default."""
    choices = ", ".join(f"0x{a:02X} ({why})" for a, why in addresses.items())
    return {"type": "integer", "default": next(iter(addresses)), "x-addresses": list(addresses),
            "description": f"7-bit I2C address, hex in TOML: {choices}"}


class I2CDriver(Driver):
    """Base of the I2C sensor drivers: options ``bus`` and ``address``, the bus opened lazily.

    Subclasses set ``chip`` (its name in messages) and implement :meth:`setup` (check the chip
    and configure it; called once per bus opening) and read through :meth:`transfer`.
    """

    chip: ClassVar[str] = ""

    def __init__(self, name: str, options: Mapping[str, Any], *, context: DriverContext):
        super().__init__(name, options, context=context)
        problems = self.check_options(self.options)
        if problems:
            raise ValueError(f"{self.kind} {name}: {problems[0][0]}: {problems[0][1]}")
        props = self.options_schema["properties"]
        self.bus_number: int = self.options.get("bus", props["bus"]["default"])
        self.address: int = self.options.get("address", props["address"]["default"])
        self._bus: Any = None
        self._ready = False
        # one transaction at a time on this chip: a command, the conversion wait and the read
        # must not interleave with another sensor's (temperature and humidity are read from two
        # worker threads; a chip asked for a new measurement mid-conversion NACKs the read)
        self._lock = threading.Lock()

    @property
    def where(self) -> str:
        """``"BME280 at 0x76 on /dev/i2c-1"``."""
        return f"{self.chip} at 0x{self.address:02X} on /dev/i2c-{self.bus_number}"

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> list[tuple[str, str]]:
        """``address`` must be one the chip can take: ``[("address", "0x40 is not ...")]``."""
        allowed = cls.options_schema["properties"]["address"]["x-addresses"]
        address = options.get("address", allowed[0])
        if address not in allowed:
            choices = " or ".join(f"0x{a:02X}" for a in allowed)
            return [("address", f"0x{address:02X} ({address}) is not an address the {cls.chip} takes: use {choices}")]
        return []

    @classmethod
    def pin_uses(cls, options: Mapping[str, Any]) -> list[PinUse]:
        """The I2C interface (bus 1: GPIO2/3, shared with the other I2C drivers) and the chip's
        address on its bus, claimed exclusively as the "port" ``/dev/i2c-N@0xAA``: two drivers
        at one address of one bus are a conflict."""
        props = cls.options_schema["properties"]
        bus = options.get("bus", props["bus"]["default"])
        address = options.get("address", props["address"]["default"])
        return [PinUse("address" if "address" in options else "bus" if "bus" in options else "", None,
                       "i2c" if bus == 1 else f"i2c-{bus}", f"/dev/i2c-{bus}@0x{address:02x}")]

    def setup(self, bus: Any) -> None:
        """Check the chip's identity and configure it (called before the first transfer after
        the bus is opened or after a failure). Raises ``DriverError`` or ``OSError``."""

    def transfer(self, work: Callable[[Any], T]) -> T:
        """Run ``work(bus)`` with the bus open and the chip set up; return its result.

        Raises ``DriverError``: the bus cannot be opened (I2C not enabled, no permission), the
        chip does not answer (errno 121 Remote I/O: unplugged, wrong address) or ``work`` raised
        ``DriverError`` (bad CRC, wrong chip). After any failure the next call opens the bus and
        sets the chip up again, so a replugged sensor recovers on its own.
        """
        with self._lock:
            return self._transfer(work)

    def _transfer(self, work: Callable[[Any], T]) -> T:
        if self._bus is None:
            try:
                self._bus = self.context.i2c_bus(self.bus_number)
            except FileNotFoundError:
                raise DriverError(f"{self.where}: /dev/i2c-{self.bus_number} does not exist: enable I2C "
                                  "(dtparam=i2c_arm=on in /boot/firmware/config.txt, or raspi-config → "
                                  "Interface Options → I2C) and reboot") from None
            except PermissionError:
                raise DriverError(f"{self.where}: no permission on /dev/i2c-{self.bus_number}: add the "
                                  "agent's user to the i2c group (sudo usermod -aG i2c USER)") from None
            except OSError as exc:
                raise DriverError(f"{self.where}: cannot open the bus: {exc}") from exc
        try:
            if not self._ready:
                self.setup(self._bus)
                self._ready = True
            return work(self._bus)
        except OSError as exc:
            self._ready = False
            if exc.errno in NO_ANSWER:
                raise DriverError(
                    f"{self.where}: no answer ({exc.strerror or exc}): check the wiring (VIN 3.3 V, GND, "
                    f"SDA GPIO2, SCL GPIO3 on bus 1), the address (i2cdetect -y {self.bus_number}) and "
                    "the sensor's power") from exc
            raise DriverError(f"{self.where}: I2C transfer failed: {exc}") from exc
        except DriverError:
            self._ready = False
            raise

    def close(self) -> None:
        with self._lock:
            bus, self._bus, self._ready = self._bus, None, False
        if bus is not None:
            bus.close()
