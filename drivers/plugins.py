"""Driver kinds from other distributions: the entry-point group ``edge_agent.drivers``.

A package adds a kind by declaring, in its ``pyproject.toml``::

    [project.entry-points."edge_agent.drivers"]
    soil_probe = "acme_edge.soil:SoilProbe"

(name = the config ``kind``, value = ``module:Class``, a :class:`~edge_agent.drivers.kit.Driver`
subclass whose ``kind`` is that name). ``pip install`` it next to edge-agent and the kind
exists; nothing here is edited.

Rules (docs/writing-drivers.md):

- The built-in table (:data:`edge_agent.drivers.DRIVER_KINDS`) is authoritative for edge-agent's
  own kinds. edge-agent declares them in the same group (so tools listing the group see them; a
  test keeps the two equal), but entry points whose value lies in ``edge_agent.`` are skipped:
  a checkout run without installing, or stale metadata of an older install, cannot change a
  built-in kind, and a device whose config uses only built-in kinds never scans the installed
  distributions (importing ``importlib.metadata`` and the scan cost ~25 ms on a laptop).
- Discovery happens once per process, on the first lookup of a kind that is not built in (or
  by :func:`problems`); nothing is imported until a kind is used, so a broken plugin hurts
  only the drivers that use it.
- A kind name must match ``[a-z][a-z0-9_]*``; a name clashing with a built-in kind is refused
  (the built-in stays); a name two distributions both declare is refused for both.
- Loading a kind raises :class:`DriverPluginError` naming the distribution when the module
  does not import, the attribute is missing, or it is not a ``Driver`` subclass for that kind.
"""

from __future__ import annotations

import importlib
import re
import threading
from dataclasses import dataclass
from typing import Any

from edge_agent.drivers.base import Driver
from edge_agent.errors import EdgeAgentError

GROUP = "edge_agent.drivers"
KIND_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
OWN_PREFIX = "edge_agent."


class DriverPluginError(EdgeAgentError, LookupError):
    """A driver kind from another distribution cannot be used: ``kind``, ``distribution``
    (``"name version"``) and the reason in the message, which names both."""

    def __init__(self, kind: str, distribution: str, message: str):
        super().__init__(message)
        self.kind, self.distribution = kind, distribution


@dataclass(frozen=True)
class PluginKind:
    """One kind an installed distribution declares: ``target`` (``"module:Class"``),
    ``distribution`` (``"name version"``) and ``problem`` (why it cannot be used, or None)."""

    kind: str
    target: str
    distribution: str
    problem: str | None = None


_lock = threading.Lock()
_found: dict[str, PluginKind] | None = None


def _label(ep: Any) -> str:
    dist = getattr(ep, "dist", None)
    return f"{dist.name} {dist.version}" if dist is not None else "an unknown distribution"


def discover(builtin: set[str]) -> dict[str, PluginKind]:
    """Scan the installed distributions' entry points in :data:`GROUP` (no import of their
    code): ``{kind: PluginKind}``, problems included. ``builtin``: the built-in kind names."""
    from importlib.metadata import entry_points

    found: dict[str, PluginKind] = {}
    for ep in entry_points(group=GROUP):
        kind, target, dist = ep.name, ep.value.strip(), _label(ep)
        if target.startswith(OWN_PREFIX):
            continue  # edge-agent's own: the built-in table is authoritative
        problem = None
        if not KIND_NAME.match(kind):
            problem = (f"driver kind {kind!r} from {dist}: not a valid kind name (lower-case letters, digits "
                       "and '_', starting with a letter)")
        elif kind in builtin:
            problem = (f"driver kind {kind!r} from {dist} ({target}) clashes with edge-agent's built-in kind "
                       f"{kind!r}: the built-in is used; rename the entry point in {dist.split()[0]}")
        if kind in found:
            other = found[kind]
            if (other.target, other.distribution) == (target, dist):
                continue  # the same metadata seen twice (an egg-info next to a dist-info)
            problem = (f"driver kind {kind!r} is declared by both {other.distribution} ({other.target}) and "
                       f"{dist} ({target}): uninstall one of them")
        found[kind] = PluginKind(kind, target, dist, problem)
    return found


def cached(builtin: set[str], refresh: bool = False) -> dict[str, PluginKind]:
    """The installed plugin kinds (discovered once per process; ``refresh`` scans again)."""
    global _found
    with _lock:
        if _found is None or refresh:
            _found = discover(builtin)
        return _found


def load(plugin: PluginKind) -> type[Driver]:
    """Import ``plugin``'s class. Raises :class:`DriverPluginError` (naming the distribution)
    for a discovery problem, a module that does not import (whatever it raised), a missing
    attribute, or an object that is not a ``Driver`` subclass whose ``kind`` is the entry
    point's name."""
    kind, dist = plugin.kind, plugin.distribution
    if plugin.problem:
        raise DriverPluginError(kind, dist, plugin.problem)
    module_name, _, attr = plugin.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - third-party code may raise anything while importing
        raise DriverPluginError(kind, dist, f"driver kind {kind!r} from {dist}: cannot import {module_name} "
                                            f"({type(exc).__name__}: {exc})") from exc
    obj: Any = module
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part, None)
    if obj is None or obj is module:
        raise DriverPluginError(kind, dist, f"driver kind {kind!r} from {dist}: {module_name} has no "
                                            f"{attr or '(class)'!s} (entry point {plugin.target!r})")
    if not (isinstance(obj, type) and issubclass(obj, Driver)):
        raise DriverPluginError(kind, dist, f"driver kind {kind!r} from {dist}: {plugin.target} is not a "
                                            "subclass of edge_agent.drivers.kit.Driver")
    if obj.kind != kind:
        raise DriverPluginError(kind, dist, f"driver kind {kind!r} from {dist}: {plugin.target} declares "
                                            f"kind = {obj.kind!r}; set it to {kind!r} (the entry point's name)")
    return obj
