"""An MCP server endpoint: the protocol core (:mod:`edge_agent.protocol`) bound to the MQTT
transport (:mod:`edge_agent.transport.mqtt_server`).

It owns the mapping mcp-client-id → session and the lifecycle rules of the MQTT binding:
``initialize`` arrives on the control topic and opens (or re-opens) a session; the client's
topics are subscribed before the answer; later traffic comes on the RPC topic;
``notifications/disconnected`` (on the RPC topic or the client's presence) or an empty
presence closes the session. Source: mqtt-ai/mcp-over-mqtt ``mqtt_transport.md``,
"Initialization" and "Shutdown".
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from .protocol import jsonrpc
from .protocol.jsonrpc import INVALID_REQUEST, RpcError
from .protocol.server import McpServer
from .transport.mqtt_server import MqttServerTransport

log = logging.getLogger(__name__)


class Endpoint:
    """Serves one :class:`McpServer` over one :class:`MqttServerTransport`.

    Build with :meth:`create`, which constructs the transport with this endpoint's callbacks.
    """

    def __init__(self, server: McpServer):
        self.server = server
        self.transport: MqttServerTransport | None = None
        self._tasks: set[asyncio.Task] = set()

    @classmethod
    def create(cls, server: McpServer, **transport_kwargs: Any) -> "Endpoint":
        ep = cls(server)
        ep.transport = MqttServerTransport(on_control=ep.on_control, on_rpc=ep.on_rpc,
                                           on_client_gone=ep.on_client_gone, **transport_kwargs)
        server.broadcast = ep.transport.send_capability
        return ep

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---------------------------------------------------------------- callbacks (event loop)
    def on_control(self, client_id: str, payload: bytes) -> None:
        self._spawn(self._control(client_id, payload))

    async def _control(self, client_id: str, payload: bytes) -> None:
        transport = self.transport
        assert transport is not None
        try:
            msg = jsonrpc.decode(payload)
        except RpcError as err:
            msg_id = err.data.get("id") if isinstance(err.data, dict) else None
            err.data = None
            transport.send_rpc(client_id, jsonrpc.error(msg_id, err))
            return
        if msg.get("method") != "initialize":
            if jsonrpc.is_request(msg):
                transport.send_rpc(client_id, jsonrpc.error(msg["id"], RpcError(
                    INVALID_REQUEST, f"only initialize is accepted on the control topic, not {msg['method']}")))
            return
        session = self.server.open_session(client_id, lambda m, cid=client_id: transport.send_rpc(cid, m))
        try:
            await transport.serve_client(client_id)  # subscribe BEFORE answering (spec)
        except Exception as exc:
            log.error("cannot serve client %s: %s", client_id, exc)
            self.server.close_session(client_id)
            return
        log.info("client %s initializing (%s)", client_id, (msg.get("params") or {}).get("clientInfo", {}).get("name", "?"))
        await self.server.handle(session, msg)

    def on_rpc(self, client_id: str, payload: bytes) -> None:
        session = self.server.sessions.get(client_id)
        transport = self.transport
        assert transport is not None
        if session is None:
            self._unknown_client(client_id, payload)
            return
        if _is_disconnected_notification(payload):
            self.on_client_gone(client_id)
            return
        self._spawn(self.server.handle(session, payload))

    def _unknown_client(self, client_id: str, payload: bytes) -> None:
        """A message on an RPC topic of a client without a session (e.g. after the agent
        restarted): requests get -32600 so the client knows to initialize again."""
        try:
            msg = json.loads(payload)
        except ValueError:
            return
        if isinstance(msg, dict) and "method" in msg and "id" in msg and msg.get("method") != "initialize":
            assert self.transport is not None
            self.transport.send_rpc(client_id, jsonrpc.error(msg["id"], RpcError(
                INVALID_REQUEST, "Session not initialized: send initialize on the server control topic")))

    def on_client_gone(self, client_id: str) -> None:
        """The client left (disconnected notification, will, or empty presence): unsubscribe its
        topics and drop its session."""
        if self.server.close_session(client_id):
            log.info("client %s left", client_id)
        if self.transport is not None:
            self.transport.drop_client(client_id, notify=False)

    def drop(self, client_id: str) -> None:
        """Server-initiated de-initialize: tell the client, unsubscribe, drop the session."""
        self.server.close_session(client_id)
        if self.transport is not None:
            self.transport.drop_client(client_id, notify=True)

    async def start(self, timeout: float | None = 30.0) -> None:
        assert self.transport is not None
        await self.transport.start(timeout)

    async def stop(self) -> None:
        assert self.transport is not None
        await self.transport.stop(notify_clients=True)
        for sid in list(self.server.sessions):
            self.server.close_session(sid)
        for task in list(self._tasks):
            task.cancel()


def _is_disconnected_notification(payload: bytes) -> bool:
    if b"notifications/disconnected" not in payload:
        return False
    try:
        msg = json.loads(payload)
    except ValueError:
        return False
    return isinstance(msg, dict) and msg.get("method") == "notifications/disconnected" and "id" not in msg
