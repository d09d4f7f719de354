"""Device drivers for edge-agent: one module per family, free of MQTT and MCP.

``DRIVER_KINDS`` maps a config ``kind`` to its driver class; :func:`driver_class` looks one up.
"""

from __future__ import annotations

import importlib

from edge_agent.drivers.base import Driver, DriverContext, PinUse, SensorSpec, ToolSpec

# kind -> "module:Class"; imported lazily so a Pi without pyserial can still run GPIO drivers.
DRIVER_KINDS: dict[str, str] = {
    "led": "edge_agent.drivers.gpio:Led",
    "pwm_led": "edge_agent.drivers.gpio:PwmLed",
    "relay": "edge_agent.drivers.gpio:Relay",
    "digital_output": "edge_agent.drivers.gpio:DigitalOutput",
    "button": "edge_agent.drivers.gpio:PushButton",
    "servo": "edge_agent.drivers.gpio:Servo",
    "distance": "edge_agent.drivers.gpio:UltrasonicDistance",
    "motion": "edge_agent.drivers.gpio:Motion",
    "ds18b20": "edge_agent.drivers.onewire:DS18B20",
    "system": "edge_agent.drivers.system:System",
    "nmea_gps": "edge_agent.drivers.serial:NmeaGps",
    "mpboard": "edge_agent.drivers.mpboard:MpBoard",
    "bme280": "edge_agent.drivers.i2c.bme280:BME280",
    "sht3x": "edge_agent.drivers.i2c.sht3x:SHT3x",
    "bh1750": "edge_agent.drivers.i2c.bh1750:BH1750",
    "ads1115": "edge_agent.drivers.i2c.ads1115:ADS1115",
}


def driver_class(kind: str) -> type[Driver]:
    """The class for a config ``kind``.

    Raises:
        KeyError: unknown kind (the message lists the known ones).
        ImportError: the kind's library (gpiozero, pyserial, smbus2) is not installed.
    """
    try:
        target = DRIVER_KINDS[kind]
    except KeyError:
        raise KeyError(f"unknown driver kind {kind!r}; known: {', '.join(sorted(DRIVER_KINDS))}") from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)


__all__ = ["DRIVER_KINDS", "Driver", "DriverContext", "PinUse", "SensorSpec", "ToolSpec", "driver_class"]
