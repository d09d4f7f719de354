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
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from edge_agent.core.jsonrpc import FORBIDDEN
from edge_agent.core.methods import KNOWN, LIFECYCLE_NOTIFICATIONS, OPEN, READ

# The methods of the READ access class in the core's method table (what the viewer role gets
# when it lists no methods). A server that adds a READ method extends it without an edit here.
READ_METHODS = tuple(name for name, rules in KNOWN.items() if rules[3] in (OPEN, READ) and name != "initialize")
__all__ = ["FORBIDDEN", "OPERATOR", "READ_METHODS", "VIEWER", "Admission", "Policy", "Role"]


@dataclass(frozen=True)
class Role:
    """``allowed_tools``: ``"all"``, ``"read_only"`` (tools whose annotations say
    ``readOnlyHint: true``) or a list of tool names / globs. ``allowed_resources``: ``"all"`` or
    a list of URIs / globs (``sensor://soil_temp/*``). ``allowed_methods``: JSON-RPC methods."""

    name: str
    description: str = ""
    allowed_methods: tuple[str, ...] | None = None  # None: every method of the READ (and OPEN) class
    allowed_tools: str | tuple[str, ...] = "read_only"
    allowed_resources: str | tuple[str, ...] = "all"

    def allows_method(self, method: str, access: str = READ) -> bool:
        """May this role call ``method`` (of access class ``access``, from the core's method
        table)? The lifecycle (OPEN) always; else the listed methods, or with no list every
        READ method."""
        if access == OPEN or method in LIFECYCLE_NOTIFICATIONS:
            return True
        if self.allowed_methods is None:
            return access == READ
        return method in self.allowed_methods

    def allows_tool(self, name: str, annotations: Mapping[str, Any] | None) -> bool:
        if self.allowed_tools == "all":
            return True
        if self.allowed_tools == "read_only":
            return bool((annotations or {}).get("readOnlyHint"))
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.allowed_tools)

    def allows_resource(self, uri: str) -> bool:
        """May this role read ``uri``? ``"all"``, or one of ``allowed_resources`` matches it as a
        URI glob (:func:`uri_glob`: ``*`` within one path segment, ``**`` across segments,
        never into a query or fragment). A URI with a query (``sensor://a/b/history?limit=5``, a
        template instantiation) is allowed only if its part before ``?`` is."""
        if self.allowed_resources == "all":
            return True
        base = uri.split("#", 1)[0].split("?", 1)[0]
        return any(uri_glob(pattern).fullmatch(base) is not None for pattern in self.allowed_resources)

    def advertise(self, tools: Iterable[tuple[str, Mapping[str, Any] | None]]) -> dict[str, Any]:
        """This role in the spec's ``meta.rbac.roles`` shape (``read_only`` expanded to names)."""
        if self.allowed_tools in ("all",):
            tools_out: Any = "all"
        else:
            tools_out = sorted(n for n, ann in tools if self.allows_tool(n, ann))
        listed = READ_METHODS if self.allowed_methods is None else self.allowed_methods
        methods = list(dict.fromkeys(["notifications/initialized", *listed]))
        resources: Any = "all" if self.allowed_resources == "all" else list(self.allowed_resources)
        return {"name": self.name, "description": self.description, "allowed_methods": methods,
                "allowed_tools": tools_out, "allowed_resources": resources}


_GLOBS: dict[str, re.Pattern[str]] = {}


def uri_glob(pattern: str) -> re.Pattern[str]:
    """A resource-URI glob as a regex: ``**`` matches any characters but ``?`` and ``#``
    (across ``/``), ``*`` any but ``/ ? #`` (one path segment); everything else, ``?``
    included, is literal. ``sensor://*/temperature`` matches ``sensor://soil/temperature`` but
    not ``sensor://soil/x/history?q=/temperature`` (before, ``*`` swallowed the query)."""
    rx = _GLOBS.get(pattern)
    if rx is None:
        parts = re.split(r"(\*\*|\*)", pattern)
        rx = re.compile("".join("[^?#]*" if p == "**" else "[^/?#]*" if p == "*" else re.escape(p) for p in parts))
        if len(_GLOBS) < 1024:
            _GLOBS[pattern] = rx
    return rx


VIEWER = Role("viewer", "Read-only: lists, reads, subscriptions and read-only tools", None, "read_only", "all")
OPERATOR = Role("operator", "Everything, actuators included", None, "all", "all")


@dataclass(frozen=True)
class Admission:
    """Who an ``initialize`` (or a 2026-07-28 request) is from: its ``role`` (None: no role
    check), the ``subject`` a verified token vouches for (None: unauthenticated) and when that
    token ``expires`` (Unix s, None without a token)."""

    role: Role | None
    subject: str | None = None
    expires: float | None = None


@dataclass
class Policy:
    """Roles, rules (``(client-id glob, role name)``, first match wins) and the default role,
    and the token verifier of ``[auth]`` (``verifier``: a :class:`~edge_agent.server.tokens.Verifier`;
    ``token_required``: refuse a client without a token).

    ``Policy.open()`` (no ``[rbac]`` in the config) checks no role at all: :meth:`role_for`
    gives None, so a method added to the server is open to every client at once.
    """

    roles: dict[str, Role] = field(default_factory=lambda: {"viewer": VIEWER, "operator": OPERATOR})
    rules: list[tuple[str, str]] = field(default_factory=list)
    default: str = "viewer"
    enabled: bool = True
    verifier: Any = None
    token_required: bool = False

    def admit(self, client_id: str, params: Any, now: float | None = None) -> Admission:
        """The :class:`Admission` of a client from the ``params`` of its ``initialize`` (or of a
        request, under MCP 2026-07-28): with a token in ``params._meta["dev.edge-agent/token"]``
        and a verifier, the token's subject and the first of its roles this device knows
        (else the default role); without one, the client-id rules (:meth:`role_for`).

        Raises:
            TokenError: a token is required and missing, or the token is refused (the
                message says why; see :meth:`edge_agent.server.tokens.Verifier.verify`).
        """
        from edge_agent.server.tokens import TOKEN_META, TokenError

        meta = params.get("_meta") if isinstance(params, dict) else None
        token = meta.get(TOKEN_META) if isinstance(meta, dict) else None
        if token is None or self.verifier is None:
            if self.token_required:
                raise TokenError(f"this device requires a signed token in params._meta[{TOKEN_META!r}]")
            return Admission(self.role_for(client_id))
        claims = self.verifier.verify(token, client_id, now)
        return Admission(self.role_for_claims(claims.roles), claims.subject, claims.expires)

    def role_for_claims(self, roles: Iterable[str]) -> Role | None:
        """The first of ``roles`` (a token's claim) this policy knows, else the default role;
        None when the policy is disabled (no role check)."""
        if not self.enabled:
            return None
        for name in roles:
            if name in self.roles:
                return self.roles[name]
        return self.roles[self.default]

    @classmethod
    def open(cls) -> "Policy":
        return cls(enabled=False, default="operator")

    def role_for(self, client_id: str) -> Role | None:
        """The role of ``client_id``: the first matching rule's, else the default; None when
        the policy is disabled (no role check)."""
        if not self.enabled:
            return None
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
