"""Device drivers for edge-agent: one module per family, free of MQTT and MCP.

Writing a driver: :mod:`edge_agent.drivers.kit` (the public kit) and docs/writing-drivers.md.

Kinds: :data:`DRIVER_KINDS` maps edge-agent's own config ``kind`` names to ``"module:Class"``
(also declared as entry points in pyproject.toml; this table is what counts); other
distributions add kinds through the entry-point group ``edge_agent.drivers``
(:mod:`edge_agent.drivers.plugins`). :func:`driver_class` looks a kind up in both,
:func:`known_kinds` lists them, :func:`plugin_problems` says what is wrong with the installed
plugins.
"""

from __future__ import annotations

import importlib

from edge_agent.drivers.base import Driver, DriverContext, PinUse, SensorSpec, ToolSpec
from edge_agent.drivers.plugins import DriverPluginError, PluginKind, cached, load

# kind -> "module:Class"; imported lazily so a Pi without pyserial can still run GPIO drivers.
# Tests may register a kind by adding to it (it is looked up before the plugins).
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


def plugin_kinds(refresh: bool = False) -> dict[str, PluginKind]:
    """The kinds installed distributions declare (entry-point group ``edge_agent.drivers``),
    problems included; scanned once per process (``refresh``: scan again)."""
    return cached(set(DRIVER_KINDS), refresh)


def known_kinds() -> list[str]:
    """Every usable kind, sorted: the built-in ones and the plugins' without a problem found
    at discovery (a plugin may still fail to import: :func:`driver_class`)."""
    return sorted(set(DRIVER_KINDS) | {k for k, p in plugin_kinds().items() if p.problem is None})


def is_known(kind: str) -> bool:
    """True if ``kind`` is built in or an installed distribution declares it (even a broken
    one: using it fails that driver with the plugin's error, not the whole config)."""
    return kind in DRIVER_KINDS or kind in plugin_kinds()


def driver_class(kind: str) -> type[Driver]:
    """The class for a config ``kind``: the built-in table first, then the plugins.

    Raises:
        KeyError: unknown kind (the message lists the known ones).
        ImportError: a built-in kind's library (gpiozero, pyserial, smbus2) is not installed.
        DriverPluginError: the plugin kind cannot be used (does not import, not a ``Driver``,
            a name clash); the message names the distribution.
    """
    target = DRIVER_KINDS.get(kind)
    if target is not None:
        module, _, cls = target.partition(":")
        return getattr(importlib.import_module(module), cls)
    plugin = plugin_kinds().get(kind)
    if plugin is None:
        raise KeyError(f"unknown driver kind {kind!r}; known: {', '.join(known_kinds())}")
    return load(plugin)


def plugin_problems(kinds: set[str] | None = None) -> dict[str, str]:
    """``{kind: message}`` for installed plugin kinds that cannot be used (``kinds``: only
    those; default all). Imports each plugin to find out; the messages name the distribution."""
    out: dict[str, str] = {}
    for kind, plugin in sorted(plugin_kinds().items()):
        if kinds is not None and kind not in kinds:
            continue
        try:
            load(plugin)
        except DriverPluginError as exc:
            out[kind] = str(exc)
    return out


__all__ = ["DRIVER_KINDS", "Driver", "DriverContext", "DriverPluginError", "PinUse", "PluginKind", "SensorSpec",
           "ToolSpec", "driver_class", "is_known", "known_kinds", "plugin_kinds", "plugin_problems"]
