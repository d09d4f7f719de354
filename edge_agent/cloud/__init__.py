"""The cloud side: reach MCP servers on devices through the broker, with the official ``mcp`` SDK.

- :func:`mqtt_client` — the MCP-over-MQTT client transport: an async context manager yielding
  ``(read_stream, write_stream)`` for ``mcp.ClientSession``.
- :func:`connect` — the same, yielding an initialized ``mcp.ClientSession``.
- :func:`discover` / :class:`ServerPresence` — list the servers online at a broker.
- :mod:`edge_agent.client.cli` — the ``devices | tools | call | read | watch ...`` commands.

This package is the public face of :mod:`edge_agent.client` (where the code lives).

Needs the ``[cloud]`` extra (``mcp``, ``anyio``). The names above are imported lazily, so
``import edge_agent.client.cli`` works on a device without the extra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["ServerPresence", "connect", "discover", "mqtt_client"]

if TYPE_CHECKING:  # pragma: no cover
    from edge_agent.client.discovery import ServerPresence, discover
    from edge_agent.client.session import connect
    from edge_agent.client.transport import mqtt_client

_LAZY = {
    "mqtt_client": ("transport", "mqtt_client"),
    "discover": ("discovery", "discover"),
    "ServerPresence": ("discovery", "ServerPresence"),
    "connect": ("session", "connect"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    module, attr = _LAZY[name]
    value = getattr(import_module(f"edge_agent.client.{module}"), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
