"""What a server offers: tools, resources, resource templates, prompts. No I/O.

The runtime fills a :class:`Registry` from its drivers; the server core lists and calls what
is in it. Entries carry async callables so slow hardware never blocks the event loop.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping

TOOL_VERSION_META = "dev.edge-agent/toolVersion"
"""A tool's ``_meta`` key: its version (driver version + schema digest), see :meth:`Tool.version_tag`."""

# Source: MCP 2025-11-25 server/tools "Tool names": 1-128 chars of A-Z a-z 0-9 _ - .
TOOL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


@dataclass
class ToolContext:
    """Handed to a tool while it runs.

    ``progress(progress, total=None, message=None)`` sends ``notifications/progress`` when the
    caller asked for it (``_meta.progressToken``), else does nothing; values must increase.
    ``cancelled`` is set when the caller sends ``notifications/cancelled`` (a
    ``threading.Event``, so code in worker threads can poll it). ``log(level, message)`` sends
    ``notifications/message`` to the caller's session if its level allows.
    ``session_id``: the caller's session (mcp-client-id). ``deadline``: for destructive tools,
    the Unix time after which the command must not be executed (MQTT message expiry or
    ``_meta["dev.edge-agent/deadline"]``); a handler that waits (e.g. for a lock) re-checks it.
    """

    session_id: str
    progress: Callable[..., None]
    cancelled: threading.Event
    log: Callable[[str, str], None]
    meta: Mapping[str, Any] = field(default_factory=dict)
    deadline: float | None = None  # Unix s; set for destructive tools: re-check before actuating
    subject: str | None = None  # who a verified token says the caller is (this request's, else the session's)


ToolHandler = Callable[[dict[str, Any], ToolContext], Awaitable[Any]]


@dataclass
class Tool:
    """An MCP tool. ``handler(arguments, ctx)`` returns a dict (structured content, must match
    ``output_schema`` when one is given), a str (text content), ``None`` (empty success), or a
    full ``{"content": [...], "isError": ...}`` result when ``raw_result`` is True.
    ``unavailable``: a reason while the tool cannot run at all (calls answer ``isError``).
    ``warning``: a reason while its hardware fails now and then (shown, calls still tried).
    ``task_support``: ``execution.taskSupport`` (MCP 2025-11-25 tasks: ``"forbidden"``,
    ``"optional"``, ``"required"``), or None (not listed: forbidden).
    ``reads``: the resource URIs a read-only tool mirrors (the sensor tools): a role that may
    read none of them neither lists nor calls it.
    """

    name: str
    description: str
    input_schema: Mapping[str, Any]
    handler: ToolHandler
    title: str | None = None
    output_schema: Mapping[str, Any] | None = None
    annotations: Mapping[str, Any] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)
    unavailable: str | None = None
    warning: str | None = None
    task_support: str | None = None
    reads: tuple[str, ...] = ()
    version: str | None = None  # the driver's version: _meta["dev.edge-agent/toolVersion"] = version+schema digest

    def __post_init__(self) -> None:
        if not TOOL_NAME.match(self.name):
            raise ValueError(f"tool name {self.name!r} breaks MCP's rule [A-Za-z0-9_.-]{{1,128}}")

    def describe(self) -> dict[str, Any]:
        """The ``tools/list`` entry."""
        desc = self.description
        if self.unavailable:
            desc = f"[UNAVAILABLE: {self.unavailable}] {desc}"
        elif self.warning:
            desc = f"[DEGRADED: {self.warning}] {desc}"
        out: dict[str, Any] = {"name": self.name, "description": desc, "inputSchema": dict(self.input_schema)}
        if self.title:
            out["title"] = self.title
        if self.output_schema:
            out["outputSchema"] = dict(self.output_schema)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.task_support:
            out["execution"] = {"taskSupport": self.task_support}
        if self.meta or self.version is not None:
            meta = dict(self.meta)
            if self.version is not None:
                meta[TOOL_VERSION_META] = self.version_tag()
            out["_meta"] = meta
        return out

    def version_tag(self) -> str:
        """``{version}+{schema digest}``: the driver's version and the first 8 hex digits of
        the sha256 of the canonical JSON of ``[inputSchema, outputSchema]``, so a schema change
        without a version bump still shows (rolling upgrades, docs/architecture.md)."""
        cached = self.__dict__.get("_tag")
        if cached is not None and cached[0] is self.input_schema and cached[1] is self.output_schema:
            return str(cached[2])
        text = json.dumps([self.input_schema, self.output_schema], sort_keys=True, separators=(",", ":"), default=str)
        tag = f"{self.version}+{hashlib.sha256(text.encode()).hexdigest()[:8]}"
        self.__dict__["_tag"] = (self.input_schema, self.output_schema, tag)
        return tag


ReadFn = Callable[[], Awaitable["ResourceContents"]]
# A read returns (text, mime_type) or a list of MCP contents dicts.
ResourceContents = Any


@dataclass
class Resource:
    """An MCP resource with a fixed URI. ``read()`` returns text (sent with ``mime_type``).
    ``meta`` goes to ``_meta`` (this project puts ``unit`` there for sensors).
    """

    uri: str
    name: str
    read: ReadFn
    description: str = ""
    title: str | None = None
    mime_type: str = "application/json"
    meta: Mapping[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"uri": self.uri, "name": self.name, "mimeType": self.mime_type}
        if self.description:
            out["description"] = self.description
        if self.title:
            out["title"] = self.title
        if self.meta:
            out["_meta"] = dict(self.meta)
        return out


@dataclass
class ResourceTemplate:
    """A parameterised resource (RFC 6570 level 1: ``{var}`` segments; query strings allowed
    on the concrete URI). ``read(uri, variables)`` returns text; raise ``KeyError`` for a URI
    that matches the shape but names nothing (answered as resource-not-found).
    """

    uri_template: str
    name: str
    read: Callable[[str, dict[str, str]], Awaitable[str]]
    description: str = ""
    title: str | None = None
    mime_type: str = "application/json"
    complete: Callable[[str, str], list[str]] | None = None  # (variable, prefix) -> values

    def __post_init__(self) -> None:
        pattern = re.escape(self.uri_template)
        pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/?#]+)", pattern)
        self._regex = re.compile("^" + pattern + r"(?:\?(?P<_query>.*))?$")

    def match(self, uri: str) -> dict[str, str] | None:
        """The template variables if ``uri`` has this template's shape (plus ``_query``)."""
        m = self._regex.match(uri)
        if not m:
            return None
        return {k: v for k, v in m.groupdict().items() if v is not None}

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"uriTemplate": self.uri_template, "name": self.name, "mimeType": self.mime_type}
        if self.description:
            out["description"] = self.description
        if self.title:
            out["title"] = self.title
        return out


@dataclass
class PromptArgument:
    name: str
    description: str = ""
    required: bool = False
    complete: Callable[[str], list[str]] | None = None  # prefix -> values (completion/complete)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "required": self.required}


@dataclass
class Prompt:
    """An MCP prompt. ``render(arguments)`` returns ``(description, messages)`` where messages
    are MCP ``PromptMessage`` dicts (``{"role": "user", "content": {"type": "text", ...}}``);
    it raises ``ValueError`` for a bad argument value (answered with -32602).
    ``reads(arguments)``: the resource URIs the rendered prompt embeds; a role limited to some
    resources may get the prompt only if it may read each of them (None: undeclared, so such
    a role is refused).
    """

    name: str
    description: str
    render: Callable[[dict[str, str]], Awaitable[tuple[str, list[dict[str, Any]]]]]
    arguments: list[PromptArgument] = field(default_factory=list)
    title: str | None = None
    reads: Callable[[dict[str, str]], list[str]] | None = None

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "description": self.description,
                               "arguments": [a.describe() for a in self.arguments]}
        if self.title:
            out["title"] = self.title
        return out


class Registry:
    """The tools, resources, resource templates and prompts a server offers, in insertion order."""

    def __init__(self) -> None:
        self.tools: dict[str, Tool] = {}
        self.resources: dict[str, Resource] = {}
        self.templates: list[ResourceTemplate] = []
        self.prompts: dict[str, Prompt] = {}

    def add_tool(self, tool: Tool) -> None:
        """Raises ValueError on a duplicate name."""
        if tool.name in self.tools:
            raise ValueError(f"duplicate tool name {tool.name!r}")
        self.tools[tool.name] = tool

    def add_resource(self, resource: Resource) -> None:
        if resource.uri in self.resources:
            raise ValueError(f"duplicate resource URI {resource.uri!r}")
        self.resources[resource.uri] = resource

    def add_template(self, template: ResourceTemplate) -> None:
        self.templates.append(template)

    def add_prompt(self, prompt: Prompt) -> None:
        if prompt.name in self.prompts:
            raise ValueError(f"duplicate prompt name {prompt.name!r}")
        self.prompts[prompt.name] = prompt

    def find_template(self, uri: str) -> tuple[ResourceTemplate, dict[str, str]] | None:
        for template in self.templates:
            variables = template.match(uri)
            if variables is not None:
                return template, variables
        return None
