"""Acme leaf-wetness probe for edge-agent: an analog probe on a Linux IIO ADC channel.

The ADC's kernel driver (MCP3008 ``mcp320x``, ADS1015 ``ti-ads1015``...) shows the channel as
``/sys/bus/iio/devices/iio:deviceN/in_voltageK_raw`` (counts) and ``in_voltage_scale`` (mV per
count). The probe's output falls from ``dry_mv`` (dry leaf) to ``wet_mv`` (soaked).
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

from edge_agent.drivers.kit import (
    Driver,
    DriverContext,
    DriverError,
    FileModel,
    SensorSpec,
    ToolInputError,
    ToolSpec,
    simulated_model,
)

MILLIVOLTS = {"type": "number", "minimum": 0, "maximum": 5000}


class LeafWetness(Driver):
    """Sensor ``wetness`` (%, 0 = dry .. 100 = soaked); tool ``calibrate`` (``dry_mv``,
    ``wet_mv`` in mV) -> ``{"dry_mv", "wet_mv", "wetness"}``. Raises ``DriverError`` when the
    ADC's files cannot be read, ``ToolInputError`` when ``dry_mv <= wet_mv``."""

    kind = "acme_leaf_wetness"  # = the entry point's name = the config's kind
    description = "Acme leaf-wetness probe on an IIO ADC channel"
    options_schema = {
        "type": "object",
        "properties": {
            "device": {"type": "string", "pattern": "^iio:device[0-9]+$", "default": "iio:device0",
                       "description": "the ADC, as listed under /sys/bus/iio/devices"},
            "channel": {"type": "integer", "minimum": 0, "maximum": 7, "default": 0,
                        "description": "the ADC input the probe is wired to"},
            "dry_mv": {**MILLIVOLTS, "default": 3000, "description": "probe output on a dry leaf (mV)"},
            "wet_mv": {**MILLIVOLTS, "default": 1000, "description": "probe output when soaked (mV)"},
        },
        "additionalProperties": False,
    }

    def __init__(self, name: str, options: Any, *, context: DriverContext):
        super().__init__(name, options, context=context)
        adc = os.path.join(context.sysfs_root, "bus", "iio", "devices", self.options.get("device", "iio:device0"))
        self.raw_path = os.path.join(adc, f"in_voltage{self.options.get('channel', 0)}_raw")
        self.scale_path = os.path.join(adc, "in_voltage_scale")
        self.dry_mv = float(self.options.get("dry_mv", 3000))
        self.wet_mv = float(self.options.get("wet_mv", 1000))
        # hardware: nothing happens; simulated: SimulatedProbe below writes the ADC's files
        self.probe = context.attach("acme_leaf_wetness", raw_path=self.raw_path, scale_path=self.scale_path)

    def millivolts(self) -> float:
        try:
            with open(self.raw_path) as raw, open(self.scale_path) as scale:
                return int(raw.read()) * float(scale.read())
        except (OSError, ValueError) as exc:
            raise DriverError(f"leaf probe {self.name}: cannot read {self.raw_path} ({exc}): "
                              "is the ADC's kernel driver loaded (dtoverlay=...)?") from exc

    def wetness(self) -> float:
        share = (self.dry_mv - self.millivolts()) / (self.dry_mv - self.wet_mv)
        return round(100 * min(1.0, max(0.0, share)), 1)

    def calibrate(self, dry_mv: float, wet_mv: float) -> dict[str, float]:
        if dry_mv <= wet_mv:
            raise ToolInputError(f"dry_mv ({dry_mv}) must be above wet_mv ({wet_mv}): the output falls as the leaf gets wet")
        self.dry_mv, self.wet_mv = dry_mv, wet_mv
        return {"dry_mv": dry_mv, "wet_mv": wet_mv, "wetness": self.wetness()}

    def tools(self) -> list[ToolSpec]:
        arguments = {"type": "object", "properties": {"dry_mv": MILLIVOLTS, "wet_mv": MILLIVOLTS},
                     "required": ["dry_mv", "wet_mv"], "additionalProperties": False}
        result = {"type": "object", "properties": {"dry_mv": MILLIVOLTS, "wet_mv": MILLIVOLTS,
                                                   "wetness": {"type": "number", "minimum": 0, "maximum": 100}},
                  "required": ["dry_mv", "wet_mv", "wetness"]}
        return [ToolSpec("calibrate", "Set the probe's dry and soaked outputs (mV).", arguments, self.calibrate,
                         result, annotations={"readOnlyHint": False, "destructiveHint": False, "idempotentHint": True})]

    def sensors(self) -> list[SensorSpec]:
        return [SensorSpec("wetness", "water on the leaf (%)", self.wetness, unit="%", poll_interval=30.0,
                           deadband=1.0, value_schema={"type": "number", "minimum": 0, "maximum": 100})]

    def close(self) -> None:
        self.probe.close()


class SimulatedProbe(FileModel):
    """The probe on a simulated ADC (1 mV per count): dew comes and goes once an hour."""

    def __init__(self, raw_path: str, scale_path: str):
        os.makedirs(os.path.dirname(scale_path), exist_ok=True)
        with open(scale_path, "w") as f:
            f.write("1.0\n")
        super().__init__(raw_path, lambda: f"{round(2000 + 800 * math.sin(time.time() * 2 * math.pi / 3600))}\n")


@simulated_model("acme_leaf_wetness")
def simulated_probe(context: DriverContext, **where: Any) -> SimulatedProbe:
    return SimulatedProbe(where["raw_path"], where["scale_path"])
