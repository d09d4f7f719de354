"""``edge-agent gateway --expose catalog``: a fleet a model can search, in four tools.

The flat mode (the default, :mod:`.server`) lists every device's tools, which is right for a
few devices and useless for thousands (1,000 devices x 4 tools is 4,000 tools; hosts cap tool
lists at about 100). In catalog mode the gateway offers instead:

- ``find_devices``: devices by name (MQTT filter or words), location, capability (what its
  tools do), sensor kind and unit, or free text; paged (``limit``, ``cursor``);
- ``describe_device``: one device's presence and whole catalog (tools with their input
  schemas, resources, templates, prompts);
- ``call_device_tool``: call one of a device's tools (routed like the flat mode's calls: the
  caller's replica, failover, timeouts);
- ``read_device``: read a device's sensors (its resources with ``_meta.unit``), all or some;

and the resource templates ``fleet://devices{?query,name,location,capability,sensor,unit}``,
``fleet://device/{+device}`` and ``fleet://readings/{+device}`` for the same reads.

Searching needs the devices' catalogs, which come from the catalog store by digest
(:mod:`.catalog`): for a fleet of a few device kinds, a search of 10,000 devices costs a few
``initialize`` the first time and none after. Results and errors are tool results
(``structuredContent`` plus the same JSON as text; ``isError`` with a message naming the
device), so a model reads them like any tool's.
"""

from __future__ import annotations

import json
import logging
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

import anyio
import mcp_types as types
import paho.mqtt.client as mqtt
from mcp import MCPError

from edge_agent.gateway.fleet import DeviceGone

if TYPE_CHECKING:
    from edge_agent.gateway.server import ClientState, Gateway

log = logging.getLogger(__name__)

INSTRUCTIONS = (
    "A fleet of devices (MCP servers on an MQTT broker) behind four tools. find_devices searches them by name, "
    "location, capability (what their tools do), sensor kind and unit; describe_device shows one device's "
    "tools (with input schemas) and sensors; read_device reads its sensors; call_device_tool calls one of its "
    "tools with the arguments its input schema asks for. Devices are named by their server-name "
    "(e.g. 'devices/greenhouse/gh-0001').")
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
FETCH_CONCURRENCY = 64
FIND_FIELDS = ("query", "name", "location", "capability", "sensor", "unit")
_SPLIT = re.compile(r"[\W_]+")  # words: letters and digits (any script)

_TEXT = {"type": "string"}
TOOLS: list[dict[str, Any]] = [
    {"name": "find_devices",
     "title": "Find devices",
     "description": (
         "Find devices by name, location, capability, sensor kind or unit (all given criteria must match; words "
         "match case-insensitively in any order). Returns each device's name, description, location, tools and "
         "sensors (uri, unit, kind), 'total' matches and a 'nextCursor' when there are more. Example: "
         "{\"location\": \"greenhouse\", \"sensor\": \"soil temperature\"}."),
     "inputSchema": {"type": "object", "additionalProperties": False, "properties": {
         "query": {**_TEXT, "description": "free words matched anywhere (name, description, location, tools, sensors)"},
         "name": {**_TEXT, "description": "server-name words, or an MQTT filter such as 'devices/greenhouse/#'"},
         "location": {**_TEXT, "description": "words of the device's location"},
         "capability": {**_TEXT, "description": "what a tool does: words of a tool's name, title or description"},
         "sensor": {**_TEXT, "description": "sensor kind: words of a sensor's name, uri, kind or description"},
         "unit": {**_TEXT, "description": "a sensor's unit, e.g. '°C', '%'"},
         "limit": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT,
                   "description": f"devices per answer (default {DEFAULT_LIMIT})"},
         "cursor": {**_TEXT, "description": "the nextCursor of the previous answer"}}},
     "annotations": {"readOnlyHint": True, "openWorldHint": True}},
    {"name": "describe_device",
     "title": "Describe a device",
     "description": "One device's presence (description, meta, replicas) and catalog: tools with input schemas, "
                    "resources (sensors have a unit), resource templates, prompts.",
     "inputSchema": {"type": "object", "additionalProperties": False, "required": ["device"],
                     "properties": {"device": {**_TEXT, "description": "the device's server-name"}}},
     "annotations": {"readOnlyHint": True, "openWorldHint": True}},
    {"name": "call_device_tool",
     "title": "Call a device's tool",
     "description": "Call one of a device's tools (see describe_device for its tools and their input schemas). "
                    "Returns the tool's own result.",
     "inputSchema": {"type": "object", "additionalProperties": False, "required": ["device", "tool"],
                     "properties": {"device": {**_TEXT, "description": "the device's server-name"},
                                    "tool": {**_TEXT, "description": "the tool's name on that device"},
                                    "arguments": {"type": "object", "description": "the tool's arguments"}}},
     "annotations": {"destructiveHint": True, "openWorldHint": True}},
    {"name": "read_device",
     "title": "Read a device's sensors",
     "description": "Read a device's sensors now: each reading with its uri, unit and value. 'sensors' narrows it "
                    "to sensors whose name, uri or kind contains those words (e.g. ['soil temperature']).",
     "inputSchema": {"type": "object", "additionalProperties": False, "required": ["device"],
                     "properties": {"device": {**_TEXT, "description": "the device's server-name"},
                                    "sensors": {"type": "array", "items": _TEXT,
                                                "description": "sensor names, uris or kinds (default: all)"}}},
     "annotations": {"readOnlyHint": True, "openWorldHint": True}},
]
TEMPLATES: list[dict[str, Any]] = [
    {"uriTemplate": "fleet://devices{?query,name,location,capability,sensor,unit}", "name": "find_devices",
     "title": "Find devices", "mimeType": "application/json",
     "description": "find_devices as a resource: the matching devices (first 1000)."},
    {"uriTemplate": "fleet://device/{+device}", "name": "describe_device", "title": "A device",
     "mimeType": "application/json", "description": "describe_device as a resource."},
    {"uriTemplate": "fleet://readings/{+device}", "name": "read_device", "title": "A device's readings",
     "mimeType": "application/json", "description": "read_device as a resource: all its sensors, read now."},
]
RESOURCES: list[dict[str, Any]] = [
    {"uri": "fleet://devices", "name": "devices", "title": "All devices", "mimeType": "application/json",
     "description": "Every online device (first 1000), as find_devices lists them."},
]


def words(text: Any) -> list[str]:
    """Lowercase words of ``text``: its runs of letters and digits."""
    return [w for w in _SPLIT.split(str(text).lower()) if w]


def _has_words(wanted: list[str], haystack: list[str]) -> bool:
    """Every wanted word begins a word of the haystack ('temp' finds 'temperature', '2' finds
    'barn 2' but not 'x-0251')."""
    return all(any(h.startswith(w) for h in haystack) for w in wanted)


def is_sensor(resource: dict[str, Any]) -> bool:
    """A sensor: a resource whose ``_meta`` names a unit (the agent's and the simulated ones)."""
    meta = resource.get("_meta")
    return isinstance(meta, dict) and "unit" in meta


def _sensor_text(resource: dict[str, Any]) -> list[str]:
    meta = resource.get("_meta") or {}
    return words(" ".join(str(x) for x in (resource.get("uri"), resource.get("name"), resource.get("title"),
                                           resource.get("description"), meta.get("kind"), meta.get("driver")) if x))


def _tool_text(tool: dict[str, Any]) -> list[str]:
    return words(" ".join(str(x) for x in (tool.get("name"), tool.get("title"), tool.get("description")) if x))


def _result(value: dict[str, Any]) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": json.dumps(value, ensure_ascii=False)}], "structuredContent": value}


def _error(message: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": message}], "isError": True}


class CatalogView:
    """The catalog-mode handlers of a :class:`~edge_agent.gateway.server.Gateway`."""

    def __init__(self, gateway: "Gateway"):
        self.gw = gateway
        self.fleet = gateway.fleet

    def handlers(self) -> dict[str, Any]:
        return dict(on_list_tools=self._list_tools, on_call_tool=self._call_tool,
                    on_list_resources=self._list_resources, on_list_resource_templates=self._list_templates,
                    on_read_resource=self._read_resource)

    # -- lists ----------------------------------------------------------------------------------

    async def _list_tools(self, ctx: Any, params: Any) -> dict[str, Any]:
        return {"tools": TOOLS}

    async def _list_resources(self, ctx: Any, params: Any) -> dict[str, Any]:
        return {"resources": RESOURCES}

    async def _list_templates(self, ctx: Any, params: Any) -> dict[str, Any]:
        return {"resourceTemplates": TEMPLATES}

    # -- catalogs -------------------------------------------------------------------------------

    async def _catalogs(self, client: "ClientState", names: list[str]) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """The catalog of each of ``names``: known ones at once, the others fetched (by digest:
        one initialize per unknown digest, the rest wait for it). Returns (catalogs, unreachable)."""
        out: dict[str, dict[str, Any]] = {}
        missing = []
        for name in names:
            known = self.fleet.catalog_of(name)
            if known is not None:
                out[name] = known
            else:
                missing.append(name)
        unreachable: list[str] = []
        limit = anyio.Semaphore(FETCH_CONCURRENCY)

        async def fetch(name: str) -> None:
            async with limit:
                tried: set[str] = set()
                while True:
                    try:
                        replica = self.gw._replica_for(client, name, tried)
                    except MCPError:
                        unreachable.append(name)
                        return
                    try:
                        out[name] = await self.fleet.catalog(replica)
                        return
                    except DeviceGone:
                        self.gw._unbind(client, replica)
                        tried.add(replica.server_id)
                    except MCPError as exc:
                        log.warning("catalog of %s: %s", name, exc)
                        unreachable.append(name)
                        return

        if missing:
            async with anyio.create_task_group() as tg:
                for name in missing:
                    tg.start_soon(fetch, name)
        return out, sorted(unreachable)

    def _summary(self, name: str, catalog: dict[str, Any]) -> dict[str, Any]:
        replicas = self.fleet.replicas_of(name)
        presence = replicas[0].presence if replicas else None
        meta = presence.meta if presence else {}
        entry: dict[str, Any] = {"device": name, "description": presence.description if presence else ""}
        if isinstance(meta.get("location"), str):
            entry["location"] = meta["location"]
        if len(replicas) > 1:
            entry["replicas"] = len(replicas)
        entry["tools"] = [t.get("name") for t in catalog.get("tools", [])]
        entry["sensors"] = [{k: v for k, v in (("uri", r.get("uri")), ("unit", (r.get("_meta") or {}).get("unit")),
                                               ("kind", (r.get("_meta") or {}).get("kind"))) if v is not None}
                            for r in catalog.get("resources", []) if is_sensor(r)]
        return entry

    # -- find -----------------------------------------------------------------------------------

    async def find(self, client: "ClientState", criteria: dict[str, Any]) -> dict[str, Any]:
        """find_devices: see the tool's description. Raises ValueError for a bad argument."""
        await self.fleet.ready.wait()
        limit = criteria.get("limit", DEFAULT_LIMIT)
        if not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit must be an integer 1..{MAX_LIMIT}")
        cursor = criteria.get("cursor")
        try:
            start = int(cursor) if cursor else 0
        except ValueError:
            raise ValueError(f"invalid cursor {cursor!r}") from None
        text = {k: str(criteria[k]) for k in FIND_FIELDS if criteria.get(k) not in (None, "")}
        names = self.fleet.server_names()
        name = text.get("name")
        if name is not None:
            if "+" in name or "#" in name:
                names = [n for n in names if mqtt.topic_matches_sub(name, n)]
            else:
                wanted = words(name)
                names = [n for n in names if _has_words(wanted, words(n))]
        if "location" in text:
            wanted = words(text["location"])
            names = [n for n in names if _has_words(wanted, words(self._meta(n).get("location", "")))]
        catalogs, unreachable = await self._catalogs(client, names)
        capability = words(text.get("capability", ""))
        sensor = words(text.get("sensor", ""))
        unit = "".join(text.get("unit", "").split()).lower()
        query = words(text.get("query", ""))
        matches = []
        for n in names:
            catalog = catalogs.get(n)
            if catalog is None:
                continue
            if capability and not any(_has_words(capability, _tool_text(t)) for t in catalog["tools"]):
                continue
            if sensor or unit:
                def fits(r: dict[str, Any]) -> bool:
                    if not is_sensor(r):
                        return False
                    if unit and "".join(str(r["_meta"].get("unit") or "").split()).lower() != unit:
                        return False
                    return not sensor or _has_words(sensor, _sensor_text(r))
                if not any(fits(r) for r in catalog["resources"]):
                    continue
            summary = self._summary(n, catalog)
            if query and not _has_words(query, words(json.dumps(summary, ensure_ascii=False))):
                continue
            matches.append(summary)
        out: dict[str, Any] = {"devices": matches[start:start + limit], "total": len(matches)}
        if start + limit < len(matches):
            out["nextCursor"] = str(start + limit)
        if unreachable:
            out["unreachable"] = unreachable[:50]
        gap = self.fleet.retained.gap
        if gap:
            out["warning"] = gap
        return out

    def _meta(self, name: str) -> dict[str, Any]:
        replicas = self.fleet.replicas_of(name)
        return replicas[0].presence.meta if replicas else {}

    # -- one device -----------------------------------------------------------------------------

    def _device(self, args: dict[str, Any]) -> str:
        name = args.get("device")
        if not isinstance(name, str) or not name:
            raise ValueError("'device' (a server-name) is required")
        if not self.fleet.replicas_of(name):
            raise ValueError(f"no device named {name!r} is online (find_devices lists them)")
        return name

    async def describe(self, client: "ClientState", name: str) -> dict[str, Any]:
        catalogs, _ = await self._catalogs(client, [name])
        if name not in catalogs:
            raise ValueError(f"{name}: its catalog could not be read (offline or not answering)")
        catalog = catalogs[name]
        replicas = self.fleet.replicas_of(name)
        presence = replicas[0].presence if replicas else None
        return {"device": name, "description": presence.description if presence else "",
                "meta": presence.meta if presence else {}, "replicas": [r.server_id for r in replicas],
                "tools": catalog["tools"], "resources": catalog["resources"],
                "resourceTemplates": catalog["resourceTemplates"], "prompts": catalog["prompts"]}

    async def read(self, ctx: Any, client: "ClientState", name: str, which: list[str] | None) -> dict[str, Any]:
        catalogs, _ = await self._catalogs(client, [name])
        if name not in catalogs:
            raise ValueError(f"{name}: its catalog could not be read (offline or not answering)")
        sensors = [r for r in catalogs[name]["resources"] if is_sensor(r)]
        if which:
            wanted = [words(w) for w in which]
            sensors = [r for r in sensors if any(_has_words(w, _sensor_text(r)) for w in wanted)]
        readings: list[dict[str, Any]] = []
        for r in sensors:
            uri = str(r.get("uri"))
            entry: dict[str, Any] = {"uri": uri, "name": r.get("title") or r.get("name"),
                                     "unit": (r.get("_meta") or {}).get("unit")}
            try:
                result, _ = await self.gw._forward(ctx, client, name, "resources/read", {"uri": uri}, retry=True)
            except MCPError as exc:
                entry["error"] = exc.error.message
                readings.append(entry)
                continue
            contents = result.get("contents") or []
            text = contents[0].get("text") if contents and isinstance(contents[0], dict) else None
            try:
                value = json.loads(text) if isinstance(text, str) else None
            except ValueError:
                value = text
            if isinstance(value, dict) and "value" in value:
                entry.update({k: v for k, v in value.items() if k not in entry or entry[k] is None})
            else:
                entry["value"] = value
            readings.append(entry)
        return {"device": name, "readings": readings}

    # -- tools/call -----------------------------------------------------------------------------

    async def _call_tool(self, ctx: Any, params: types.CallToolRequestParams) -> dict[str, Any]:
        client = self.gw.client_of(ctx)
        args = dict(params.arguments or {})
        try:
            if params.name == "find_devices":
                return _result(await self.find(client, args))
            if params.name == "describe_device":
                await self.fleet.ready.wait()
                return _result(await self.describe(client, self._device(args)))
            if params.name == "read_device":
                await self.fleet.ready.wait()
                which = args.get("sensors")
                if which is not None and (not isinstance(which, list) or not all(isinstance(w, str) for w in which)):
                    raise ValueError("'sensors' must be a list of strings")
                return _result(await self.read(ctx, client, self._device(args), which))
            if params.name == "call_device_tool":
                await self.fleet.ready.wait()
                name = self._device(args)
                tool = args.get("tool")
                arguments = args.get("arguments") or {}
                if not isinstance(tool, str) or not tool:
                    raise ValueError("'tool' (the device's tool name) is required")
                if not isinstance(arguments, dict):
                    raise ValueError("'arguments' must be an object")
                result, _ = await self.gw._forward(ctx, client, name, "tools/call",
                                                   {"name": tool, "arguments": arguments}, retry=False)
                self.gw._rewrite_content(name, result.get("content"))
                return result
        except ValueError as exc:
            return _error(str(exc))
        except MCPError as exc:
            return _error(exc.error.message)
        raise MCPError(code=types.INVALID_PARAMS, message=f"unknown tool {params.name!r} (catalog mode: "
                       + ", ".join(t["name"] for t in TOOLS) + ")")

    # -- resources ------------------------------------------------------------------------------

    async def _read_resource(self, ctx: Any, params: types.ReadResourceRequestParams) -> dict[str, Any]:
        uri = str(params.uri)
        client = self.gw.client_of(ctx)
        parts = urlsplit(uri)
        try:
            if parts.scheme != "fleet":
                raise KeyError(uri)
            await self.fleet.ready.wait()
            if parts.netloc == "devices" and parts.path in ("", "/"):
                query = {k: v[-1] for k, v in parse_qs(parts.query).items() if k in FIND_FIELDS}
                value = await self.find(client, {**query, "limit": MAX_LIMIT})
            elif parts.netloc in ("device", "readings") and len(parts.path) > 1:
                name = self._device({"device": unquote(parts.path[1:])})
                if parts.netloc == "device":
                    value = await self.describe(client, name)
                else:
                    value = await self.read(ctx, client, name, None)
            else:
                raise KeyError(uri)
        except KeyError:
            raise MCPError(code=-32002, message=f"resource {uri} not found", data={"uri": uri}) from None
        except ValueError as exc:
            raise MCPError(code=types.INVALID_PARAMS, message=str(exc)) from None
        return {"contents": [{"uri": uri, "mimeType": "application/json",
                              "text": json.dumps(value, ensure_ascii=False)}]}
