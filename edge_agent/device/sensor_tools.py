"""Sensors as read-only tools, for MCP hosts that let a model call tools but not read resources.

Every sensor is the resource ``sensor://<driver>/<sensor>``. Many hosts and agent frameworks
only expose tools to the model, so this module mirrors the readings as tools (MCP 2025-11-25
``server/tools``: ``annotations.readOnlyHint``, ``outputSchema``, ``structuredContent``):

- ``<driver>_read`` for each driver with sensors (``soil_temp_read``): a fresh reading of each
  of its sensors, as ``resources/read`` gives it (the hardware is not read faster than the
  sensor's ``min_interval``);
- ``device_state``: every current reading of the device in one call (the polled value while
  it is younger than its poll interval, else a fresh read).

Each reading: ``{"driver", "sensor", "uri", "value", "unit", "timestamp" (RFC 3339 UTC),
"age_s" (s since it was taken), "stale" (true when the hardware read failed and the last
good value is shown, with ``error``, or the reading is older than ``STALE_AFTER`` poll
intervals)}``; ``value`` is null when the sensor never read.

On by default; a driver's ``sensor_tools = false`` (config) leaves its tool out and its
readings out of ``device_state``. RBAC: a reading is given only to a role that may read its
resource (``allowed_resources``); ``<driver>_read`` is neither listed nor callable (-32003) for a
role that may read none of the driver's sensors (``Tool.reads``), ``device_state`` leaves the
others out and says how many (``withheld``). The tools are read-only, so the viewer role may
call them.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from edge_agent.device.sensors import Reading, SensorChannel, iso
from edge_agent.errors import ToolInputError
from edge_agent.server import Tool, ToolContext

if TYPE_CHECKING:
    from edge_agent.device.runtime import Agent, DriverState

DEVICE_STATE = "device_state"
STALE_AFTER = 3  # poll intervals (and at least STALE_MIN_S) after which a reading counts as stale
STALE_MIN_S = 60.0
READ_ONLY = {"readOnlyHint": True, "destructiveHint": False, "idempotentHint": True, "openWorldHint": False}


def reading_schema(value_schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """JSON Schema of one reading (``value`` per ``value_schema``, or null)."""
    value: dict[str, Any] = {"description": "the reading, in unit; null if the sensor never read"}
    if value_schema:
        value["anyOf"] = [dict(value_schema), {"type": "null"}]
    return {
        "type": "object",
        "properties": {
            "driver": {"type": "string"},
            "sensor": {"type": "string"},
            "uri": {"type": "string", "description": "the resource this mirrors"},
            "value": value,
            "unit": {"type": "string", "description": "unit symbol (°C, m, %); empty for unitless"},
            "timestamp": {"type": ["string", "null"], "description": "when it was read (RFC 3339, UTC)"},
            "age_s": {"type": ["number", "null"], "description": "seconds since it was read (s)"},
            "stale": {"type": "boolean", "description": "true: not a fresh reading (see error, age_s)"},
            "error": {"type": "string", "description": "why the last hardware read failed"},
        },
        "required": ["driver", "sensor", "uri", "value", "unit", "timestamp", "age_s", "stale"],
    }


async def reading(agent: Agent, ch: SensorChannel, *, fresh: bool) -> dict[str, Any]:
    """One reading of ``ch`` as the tools return it (see the module docstring); never raises
    for a failed hardware read."""
    out: dict[str, Any] = {"driver": ch.driver, "sensor": ch.name, "uri": ch.uri, "unit": ch.unit}
    error = None
    got: Reading | None
    try:
        got, updated = await ch.get(fresh=fresh)
        if updated:
            agent.server.resource_updated(ch.uri)
    except Exception as exc:  # the last good value, marked stale
        got, error = ch.last, f"{type(exc).__name__}: {exc}"
    now = time.time()
    age = None if got is None else round(max(0.0, now - got.ts), 3)
    limit = max(STALE_MIN_S, STALE_AFTER * (ch.poll_interval or 0.0))
    out.update(value=None if got is None else got.value, timestamp=None if got is None else iso(got.ts), age_s=age,
               stale=error is not None or age is None or age > limit)
    if error is not None:
        out["error"] = error
    return out


def _role(agent: Agent, ctx: ToolContext) -> Any:
    session = agent.server.sessions.get(ctx.session_id)
    return session.role if session is not None else None


def driver_tool(agent: Agent, state: DriverState) -> Tool | None:
    """``<driver>_read`` for ``state``'s sensors, or None (no sensors, ``sensor_tools = false``,
    or the driver already has a tool of that name)."""
    dc = state.config
    name = f"{dc.name}_read"
    channels = list(state.channels)
    if not channels or not dc.sensor_tools or (name in agent.registry.tools
                                                and agent.registry.tools[name].meta.get("sensorTool") is None):
        return None

    async def read(arguments: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
        role = _role(agent, ctx)
        allowed = [ch for ch in channels if role is None or role.allows_resource(ch.uri)]
        if not allowed:
            raise ToolInputError(f"Forbidden: role {role.name!r} may not read the sensors of {dc.name} "
                                 f"({', '.join(ch.uri for ch in channels)})")
        readings = list(await asyncio.gather(*(reading(agent, ch, fresh=True) for ch in allowed)))
        out: dict[str, Any] = {"driver": dc.name, "readings": readings}
        if len(channels) == 1:  # one sensor: its reading at the top too ("what is the soil temperature?")
            out.update({k: v for k, v in readings[0].items() if k not in ("driver",)})
        return out

    properties: dict[str, Any] = {"driver": {"type": "string"},
                                  "readings": {"type": "array", "items": reading_schema()}}
    if len(channels) == 1:
        one = reading_schema(channels[0].value_schema)
        properties.update({k: v for k, v in one["properties"].items() if k != "driver"})
        properties["readings"] = {"type": "array", "items": one}
    units = ", ".join(f"{ch.name}" + (f" ({ch.unit})" if ch.unit else "") for ch in channels)
    return Tool(
        name=name, title=f"Read {dc.name}".replace("_", " "),
        description=(f"{dc.description or dc.name} ({dc.kind}): read {units} now. Read-only; the same readings "
                     f"as the resources sensor://{dc.name}/<sensor>, with unit, timestamp and staleness."),
        input_schema={"type": "object", "properties": {}, "additionalProperties": False},
        handler=read, output_schema={"type": "object", "properties": properties, "required": ["driver", "readings"]},
        annotations=dict(READ_ONLY), meta={"driver": dc.name, "kind": dc.kind, "sensorTool": True},
        reads=tuple(ch.uri for ch in channels))


def device_state_tool(agent: Agent) -> Tool:
    """``device_state``: every current reading of the drivers with ``sensor_tools`` on."""

    async def state(arguments: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
        role = _role(agent, ctx)
        shown, withheld = [], 0
        for ch in agent.channels.values():
            driver = agent.drivers.get(ch.driver)
            if driver is None or not driver.config.sensor_tools:
                continue
            if role is not None and not role.allows_resource(ch.uri):
                withheld += 1
                continue
            shown.append(ch)
        readings = list(await asyncio.gather(*(reading(agent, ch, fresh=False) for ch in shown)))
        return {"timestamp": iso(time.time()), "readings": readings, "withheld": withheld}

    return Tool(
        name=DEVICE_STATE, title="Device state",
        description=("Every current sensor reading of this device in one call: value, unit, timestamp, age (s) and "
                     "whether it is stale. Read-only; the same readings as the sensor://<driver>/<sensor> resources."),
        input_schema={"type": "object", "properties": {}, "additionalProperties": False}, handler=state,
        output_schema={"type": "object", "properties": {
            "timestamp": {"type": "string", "description": "when this was put together (RFC 3339, UTC)"},
            "readings": {"type": "array", "items": reading_schema()},
            "withheld": {"type": "integer", "description": "readings your role may not read, left out"}},
            "required": ["timestamp", "readings", "withheld"]},
        annotations=dict(READ_ONLY), meta={"sensorTool": True})
