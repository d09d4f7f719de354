"""The device's MCP prompts: ready-made questions a person can ask about this device.

- ``device_health_report(focus?, detail?)``: a health report of the device or one driver, with
  the live health and the latest readings embedded.
- ``sensor_trend(sensor, samples?)``: explain a sensor's recent history.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from edge_agent.server import Prompt, PromptArgument

if TYPE_CHECKING:  # pragma: no cover
    from edge_agent.device.runtime import Agent


def _text(role: str, text: str) -> dict[str, Any]:
    return {"role": role, "content": {"type": "text", "text": text}}


def register(agent: "Agent") -> None:
    """Add the prompts to ``agent.registry``."""

    def drivers_like(prefix: str) -> list[str]:
        return [n for n in ["all", *agent.drivers] if n.startswith(prefix)]

    def sensors_like(prefix: str) -> list[str]:
        return [u for u in agent.channels if u.startswith(prefix) or u.split("://", 1)[-1].startswith(prefix)]

    async def health_report(args: dict[str, str]) -> tuple[str, list[dict[str, Any]]]:
        focus = args.get("focus", "all") or "all"
        detail = args.get("detail", "brief") or "brief"
        if focus != "all" and focus not in agent.drivers:
            raise ValueError(f"focus must be 'all' or a driver name ({', '.join(agent.drivers)}), not {focus!r}")
        if detail not in ("brief", "full"):
            raise ValueError("detail must be 'brief' or 'full'")
        health = agent.health()
        readings = {}
        for uri, ch in agent.channels.items():
            if focus != "all" and ch.driver != focus:
                continue
            readings[uri] = ch.last.to_json() if ch.last else {"error": ch.last_error or "not read yet"}
        if focus != "all":
            health["drivers"] = {focus: health["drivers"][focus]}
        dev = agent.config.device
        length = "in at most five short bullet points" if detail == "brief" else "in full, driver by driver"
        text = (
            f"You are checking the edge device {dev.server_name} ({dev.description}"
            f"{', at ' + dev.location if dev.location else ''}).\n"
            f"Write a health report {length}: say which hardware works and which fails (with the error), "
            "point out readings that look implausible or out of range for their unit, and recommend what a "
            "technician should check first.\n\n"
            f"Health (device://health):\n{json.dumps(health, indent=2, ensure_ascii=False)}\n\n"
            f"Latest readings:\n{json.dumps(readings, indent=2, ensure_ascii=False)}"
        )
        return f"Health report for {dev.server_name} ({focus})", [_text("user", text)]

    async def sensor_trend(args: dict[str, str]) -> tuple[str, list[dict[str, Any]]]:
        sensor = args["sensor"]
        uri = sensor if sensor.startswith("sensor://") else f"sensor://{sensor}"
        ch = agent.channels.get(uri)
        if ch is None:
            raise ValueError(f"unknown sensor {sensor!r}; known: {', '.join(agent.channels)}")
        try:
            n = int(args.get("samples", "30"))
        except ValueError:
            raise ValueError("samples must be an integer") from None
        history = ch.history_json(max(1, min(n, 1000)))
        text = (
            f"Here are the last {len(history['samples'])} updates of {uri} ({ch.description}, unit {ch.unit or 'none'}, "
            f"deadband {ch.deadband}). Describe the trend in two or three sentences, and flag jumps, "
            f"flat lines or gaps that suggest a sensor fault.\n\n{json.dumps(history, indent=2, ensure_ascii=False)}"
        )
        return f"Trend of {uri}", [_text("user", text)]

    def health_reads(args: dict[str, str]) -> list[str]:
        focus = args.get("focus", "all") or "all"
        return ["device://health", *(u for u, ch in agent.channels.items() if focus == "all" or ch.driver == focus)]

    def trend_reads(args: dict[str, str]) -> list[str]:
        sensor = args.get("sensor", "")
        uri = sensor if sensor.startswith("sensor://") else f"sensor://{sensor}"
        return [uri, f"{uri}/history"]

    agent.registry.add_prompt(Prompt(
        name="device_health_report", title="Device health report",
        description="Ask for a health report of this device (or one driver), with live health and readings embedded.",
        render=health_report, reads=health_reads,
        arguments=[
            PromptArgument("focus", "'all' (default) or one driver name", complete=drivers_like),
            PromptArgument("detail", "'brief' (default) or 'full'", complete=lambda p: [v for v in ("brief", "full") if v.startswith(p)]),
        ]))
    agent.registry.add_prompt(Prompt(
        name="sensor_trend", title="Sensor trend",
        description="Ask for an explanation of a sensor's recent history (e.g. soil_temp/temperature).",
        render=sensor_trend, reads=trend_reads,
        arguments=[
            PromptArgument("sensor", "driver/sensor or sensor:// URI", required=True, complete=sensors_like),
            PromptArgument("samples", "how many recent updates (default 30)"),
        ]))
