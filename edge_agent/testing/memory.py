"""An in-memory client/server pair: the official ``mcp`` client talks to our server core
(:class:`edge_agent.server.mcp.McpServer` and its registry) with no broker and no network.

The pair plays the part of the MCP-over-MQTT binding (docs/architecture.md, "Protocol core";
spec/mcp-over-mqtt.md "Initialization", "Resource Update", "Shutdown") with two anyio memory
object streams instead of MQTT topics:

- an ``initialize`` opens (or re-opens) the client's session, as the binding does on the
  server's control topic; every other message goes to :meth:`McpServer.handle` of that session
  (before any ``initialize`` there is no session: requests are answered ``-32600``, as a device
  answers a client it does not know);
- what the server sends to the session (responses, progress, log messages) and what it
  broadcasts (``*/list_changed``; ``notifications/resources/updated`` only for a URI this client
  subscribed to) comes back on the client's read stream, in order;
- leaving the context closes the session: its in-flight requests are cancelled, as after the
  client's ``notifications/disconnected``.

Usage (under the asyncio backend: the core runs requests as asyncio tasks)::

    async with memory_session(server) as session:   # an mcp.ClientSession, entered
        await session.initialize()
        result = await session.call_tool("relay_set", {"on": True})

:func:`memory_streams` gives the bare ``(read_stream, write_stream)`` pair, for a
``ClientSession`` built by the caller (callbacks, timeouts). :class:`MemoryHub` hosts one server
for several clients at once; each broadcast goes to every one of them.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import mcp_types as types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp import ClientSession
from mcp.shared.message import SessionMessage

from edge_agent.core import jsonrpc
from edge_agent.core.jsonrpc import INVALID_REQUEST, RpcError
from edge_agent.server.mcp import McpServer, Session

__all__ = ["MemoryHub", "memory_session", "memory_streams"]

ReadStream = MemoryObjectReceiveStream[SessionMessage | Exception]
WriteStream = MemoryObjectSendStream[SessionMessage]


class _Client:
    """One connected client: its read stream (server -> client) and its session, if open."""

    def __init__(self, client_id: str, read_send: MemoryObjectSendStream[SessionMessage | Exception]):
        self.client_id = client_id
        self.read_send = read_send
        self.session: Session | None = None

    def deliver(self, msg: dict[str, Any]) -> None:
        """Pass one server message (a JSON-RPC dict) to the client; dropped once it left."""
        item: SessionMessage | Exception
        try:
            item = SessionMessage(types.jsonrpc_message_adapter.validate_python(msg, by_name=False))
        except ValueError as exc:  # the server sent something that is not JSON-RPC: the client sees it
            item = exc
        try:
            self.read_send.send_nowait(item)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass


class MemoryHub:
    """One :class:`McpServer` served to in-memory clients. Takes over ``server.broadcast``.

    ``server``: the server core with its registry (no transport attached). Clients connect with
    :meth:`connect`; client ids are ``memory-1``, ``memory-2``... unless given.
    """

    def __init__(self, server: McpServer):
        self.server = server
        self.clients: dict[str, _Client] = {}
        self._count = 0
        server.broadcast = self._broadcast

    def _broadcast(self, msg: dict[str, Any]) -> None:
        uri = (msg.get("params") or {}).get("uri") if msg.get("method") == "notifications/resources/updated" else None
        for client in list(self.clients.values()):
            if uri is None or (client.session is not None and uri in client.session.subscriptions):
                client.deliver(msg)

    async def _serve(self, client: _Client, write_recv: MemoryObjectReceiveStream[SessionMessage]) -> None:
        async with write_recv:
            async for item in write_recv:
                msg = item.message.model_dump(by_alias=True, mode="json", exclude_none=True)
                if msg.get("method") == "initialize" and "id" in msg:
                    client.session = self.server.open_session(client.client_id, client.deliver)
                if client.session is not None:
                    await self.server.handle(client.session, msg)
                elif "id" in msg and "method" in msg:
                    err = RpcError(INVALID_REQUEST, "No session: send initialize first")
                    client.deliver(jsonrpc.error(msg["id"], err))

    @asynccontextmanager
    async def connect(self, client_id: str | None = None) -> AsyncIterator[tuple[ReadStream, WriteStream]]:
        """Connect one client: yields ``(read_stream, write_stream)`` of ``SessionMessage`` items,
        as ``mcp.ClientSession(read_stream, write_stream)`` takes them. On exit the client's
        session is closed (in-flight requests cancelled, no responses) and the streams too.

        Raises:
            ValueError: ``client_id`` is already connected.
        """
        if client_id is None:
            self._count += 1
            client_id = f"memory-{self._count}"
        if client_id in self.clients:
            raise ValueError(f"client {client_id!r} is already connected")
        read_send, read_recv = anyio.create_memory_object_stream[SessionMessage | Exception](math.inf)
        write_send, write_recv = anyio.create_memory_object_stream[SessionMessage](math.inf)
        client = self.clients[client_id] = _Client(client_id, read_send)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._serve, client, write_recv)
                try:
                    yield read_recv, write_send
                finally:
                    tg.cancel_scope.cancel()
        finally:
            del self.clients[client_id]
            if client.session is not None:
                self.server.close_session(client_id)
            for stream in (read_send, read_recv, write_send, write_recv):
                stream.close()


@asynccontextmanager
async def memory_streams(server: McpServer, client_id: str | None = None
                         ) -> AsyncIterator[tuple[ReadStream, WriteStream]]:
    """One in-memory client of ``server``: ``(read_stream, write_stream)`` for
    ``mcp.ClientSession`` (see :meth:`MemoryHub.connect`)."""
    async with MemoryHub(server).connect(client_id) as streams:
        yield streams


@asynccontextmanager
async def memory_session(server: McpServer, client_id: str | None = None,
                         **session_kwargs: Any) -> AsyncIterator[ClientSession]:
    """An entered ``mcp.ClientSession`` connected to ``server`` in memory (not initialized yet:
    call ``await session.initialize()``). ``session_kwargs`` go to ``ClientSession``
    (``logging_callback``, ``message_handler``, ``read_timeout_seconds``...)."""
    async with memory_streams(server, client_id) as (read, write):
        async with ClientSession(read, write, **session_kwargs) as session:
            yield session
