"""``connect()``: an initialized ``mcp.ClientSession`` to one MCP server over MQTT."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import mcp_types as types
from mcp import ClientSession
from mcp.client.session import MessageHandlerFnT

from edge_agent import __version__
from edge_agent.client.transport import mqtt_client

CLIENT_INFO = types.Implementation(name="edge-agent", version=__version__)

DEFAULT_REQUEST_TIMEOUT = 30.0
"""Seconds a request may wait for its answer (spec "Timeouts": initialize, */list, read: 30 s)."""


@asynccontextmanager
async def connect(broker_url: str, server_name: str, *, message_handler: MessageHandlerFnT | None = None,
                  read_timeout_seconds: float | None = DEFAULT_REQUEST_TIMEOUT,
                  client_info: types.Implementation | None = None, **kw: Any) -> AsyncIterator[ClientSession]:
    """Discover ``server_name`` at ``broker_url``, initialize an MCP session, yield it.

    ``message_handler`` receives server notifications (``notifications/resources/updated``
    for subscribed URIs, ``*/list_changed``) and transport exceptions (``TransportError`` when
    the server goes offline). ``read_timeout_seconds`` bounds every request (``call_tool``
    takes its own ``read_timeout_seconds``; the spec recommends 60 s for ``tools/call``).
    Other keyword arguments go to :func:`~edge_agent.client.transport.mqtt_client`
    (``server_id``, ``client_id``, ``qos``, ``discovery_timeout``, ``connect_timeout``,
    ``username``, ``password``, ``meta``).

    Raises:
        ServerNotFound, TransportError, ValueError: as ``mqtt_client``.
        mcp.MCPError: the server refused ``initialize`` or did not answer in time.
    """
    kw.setdefault("request_timeout", read_timeout_seconds)  # stamped as each request's deadline
    async with mqtt_client(broker_url, server_name, **kw) as (read_stream, write_stream):
        async with ClientSession(read_stream, write_stream, read_timeout_seconds=read_timeout_seconds,
                                 message_handler=message_handler, client_info=client_info or CLIENT_INFO) as session:
            await session.initialize()
            yield session
