"""Role-based access control on the device: which client may call which method, tool, resource.

Roles have the shape the MCP-over-MQTT spec gives for ``meta.rbac.roles`` in the online
message (``name``, ``description``, ``allowed_methods``, ``allowed_tools``,
``allowed_resources``); the spec leaves enforcement open, and this module enforces them. Each
session's role comes from the first rule whose glob matches its mcp-client-id (the broker's
ACL binds client ids to authenticated users, see ``docs/security.md``), else the default role.
No I/O.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

ALWAYS = ("initialize", "notifications/initialized", "ping", "notifications/cancelled")
READ_METHODS = ("ping", "notifications/initialized", "tools/list", "tools/call", "resources/list",
                "resources/templates/list", "resources/read", "resources/subscribe", "resources/unsubscribe",
                "prompts/list", "prompts/get", "completion/complete", "logging/setLevel")
FORBIDDEN = -32003  # implementation-defined server error (JSON-RPC -32000..-32099)


@dataclass(frozen=True)
class Role:
    """``allowed_tools``: ``"all"``, ``"read_only"`` (tools whose annotations say
    ``readOnlyHint: true``) or a list of tool names / globs. ``allowed_resources``: ``"all"`` or
    a list of URIs / globs (``sensor://soil_temp/*``). ``allowed_methods``: JSON-RPC methods."""

    name: str
    description: str = ""
    allowed_methods: tuple[str, ...] = READ_METHODS
    allowed_tools: str | tuple[str, ...] = "read_only"
    allowed_resources: str | tuple[str, ...] = "all"

    def allows_method(self, method: str) -> bool:
        return method in ALWAYS or method in self.allowed_methods

    def allows_tool(self, name: str, annotations: Mapping[str, Any] | None) -> bool:
        if self.allowed_tools == "all":
            return True
        if self.allowed_tools == "read_only":
            return bool((annotations or {}).get("readOnlyHint"))
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.allowed_tools)

    def allows_resource(self, uri: str) -> bool:
        if self.allowed_resources == "all":
            return True
        return any(fnmatch.fnmatchcase(uri, pattern) for pattern in self.allowed_resources)

    def advertise(self, tools: Iterable[tuple[str, Mapping[str, Any] | None]]) -> dict[str, Any]:
        """This role in the spec's ``meta.rbac.roles`` shape (``read_only`` expanded to names)."""
        if self.allowed_tools in ("all",):
            tools_out: Any = "all"
        else:
            tools_out = sorted(n for n, ann in tools if self.allows_tool(n, ann))
        methods = list(dict.fromkeys(["notifications/initialized", *self.allowed_methods]))
        resources: Any = "all" if self.allowed_resources == "all" else list(self.allowed_resources)
        return {"name": self.name, "description": self.description, "allowed_methods": methods,
                "allowed_tools": tools_out, "allowed_resources": resources}


VIEWER = Role("viewer", "Read-only: lists, reads, subscriptions and read-only tools", READ_METHODS, "read_only", "all")
OPERATOR = Role("operator", "Everything, actuators included", READ_METHODS, "all", "all")


@dataclass
class Policy:
    """Roles, rules (``(client-id glob, role name)``, first match wins) and the default role.

    ``Policy.open()`` (no ``[rbac]`` in the config) gives every client the operator role.
    """

    roles: dict[str, Role] = field(default_factory=lambda: {"viewer": VIEWER, "operator": OPERATOR})
    rules: list[tuple[str, str]] = field(default_factory=list)
    default: str = "viewer"
    enabled: bool = True

    @classmethod
    def open(cls) -> "Policy":
        return cls(enabled=False, default="operator")

    def role_for(self, client_id: str) -> Role:
        for pattern, role in self.rules:
            if fnmatch.fnmatchcase(client_id, pattern):
                return self.roles[role]
        return self.roles[self.default]

    def advertise(self, tools: Iterable[tuple[str, Mapping[str, Any] | None]]) -> dict[str, Any] | None:
        """``{"roles": [...]}`` for the online message's ``meta.rbac``; None when disabled."""
        if not self.enabled:
            return None
        tools = list(tools)
        return {"roles": [r.advertise(tools) for r in self.roles.values()]}
