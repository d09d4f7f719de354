"""Device drivers for edge-agent: one module per family, free of MQTT and MCP.

``DRIVER_KINDS`` maps a config ``kind`` to its driver class; :func:`driver_class` looks one up.
"""

from __future__ import annotations

import importlib

from .base import Driver, DriverContext, PinUse, SensorSpec, ToolSpec

# kind -> "module:Class"; imported lazily so a Pi without pyserial can still run GPIO drivers.
DRIVER_KINDS: dict[str, str] = {
    "led": "drivers.gpio:Led",
    "pwm_led": "drivers.gpio:PwmLed",
    "relay": "drivers.gpio:Relay",
    "digital_output": "drivers.gpio:DigitalOutput",
    "button": "drivers.gpio:PushButton",
    "servo": "drivers.gpio:Servo",
    "distance": "drivers.gpio:UltrasonicDistance",
    "motion": "drivers.gpio:Motion",
    "ds18b20": "drivers.onewire:DS18B20",
    "system": "drivers.system:System",
    "nmea_gps": "drivers.serial:NmeaGps",
    "mpboard": "drivers.mpboard:MpBoard",
}


def driver_class(kind: str) -> type[Driver]:
    """The class for a config ``kind``.

    Raises:
        KeyError: unknown kind (the message lists the known ones).
        ImportError: the kind's library (gpiozero, pyserial) is not installed.
    """
    try:
        target = DRIVER_KINDS[kind]
    except KeyError:
        raise KeyError(f"unknown driver kind {kind!r}; known: {', '.join(sorted(DRIVER_KINDS))}") from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)


__all__ = ["DRIVER_KINDS", "Driver", "DriverContext", "PinUse", "SensorSpec", "ToolSpec", "driver_class"]
