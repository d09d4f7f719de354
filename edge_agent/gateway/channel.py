"""One MCP session to one server instance, multiplexed on the gateway's single MQTT connection.

:func:`~edge_agent.client.transport.mqtt_client` opens one MQTT connection per session, which
is right for a CLI command but not for a gateway talking to a thousand devices. Here one
:class:`~edge_agent.client.link.MqttLink` carries every session: the RPC topic
``$mcp-rpc/{mcp-client-id}/{server-id}/{server-name}`` already names the server, so one
mcp-client-id can hold one session per server instance (spec "Message Topics"). The gateway's
router hands each :class:`DeviceChannel` the messages of its server (:meth:`DeviceChannel.feed`);
the channel gives ``mcp.ClientSession`` its read and write streams.

Wire behaviour (spec ``mqtt_transport.md`` "Initialization", "Capability List Changed",
"Resource Update", "Shutdown"):

- :meth:`open` subscribes the RPC topic (No Local) and the server's capability topic and waits
  for the SUBACK; ``initialize`` then goes to the server control topic, everything else to
  the RPC topic.
- ``notifications/disconnected`` from the server on the RPC topic, or :meth:`fail` (the
  gateway saw an empty presence, or the broker link dropped): every pending request is
  answered with a JSON-RPC error ``server devices/x (id) went offline`` (code
  ``CONNECTION_CLOSED``), a :class:`~edge_agent.errors.TransportError` goes to the session,
  and later requests are answered with the same error at once.
- :meth:`close` leaves this one server: ``notifications/disconnected`` on the RPC topic (the
  spec's way to end one session without leaving the others), then unsubscribes.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import anyio
import mcp_types as types
from mcp.shared.message import SessionMessage

from edge_agent.client.discovery import ServerPresence
from edge_agent.client.link import Incoming, MqttLink
from edge_agent.core import topics
from edge_agent.errors import TransportError

log = logging.getLogger(__name__)

DISCONNECTED = b'{"jsonrpc":"2.0","method":"notifications/disconnected"}'


class _PublishStream:
    """The ``WriteStream`` the session writes to: each message is published at once."""

    def __init__(self, channel: "DeviceChannel"):
        self._channel = channel

    async def send(self, item: SessionMessage, /) -> None:
        self._channel.publish(item.message)

    async def aclose(self) -> None:
        pass

    async def __aenter__(self) -> "_PublishStream":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        pass


class DeviceChannel:
    """The MQTT side of one gateway→server session. Event-loop only (see :mod:`.link`)."""

    initialize_timeout: float | None = 5.0
    """Seconds after which an unanswered ``initialize`` is sent again (the server's presence may
    be stale: it died with its broker, or failed over, and re-publishes it once back), instead
    of waiting out the request timeout. None: sent once."""

    def __init__(self, link: MqttLink, server: ServerPresence):
        self.link = link
        self.server = server
        self.label = f"{server.server_name} ({server.server_id})"
        cid = link.client_id
        self.rpc_topic = topics.rpc(cid, server.server_id, server.server_name)
        self.control_topic = topics.server_control(server.server_id, server.server_name)
        self.capability_topic = topics.server_capability(server.server_id, server.server_name)
        self.pending: dict[str, Any] = {}  # str(id) -> id
        self.dead: str | None = None
        self.read_send, self.read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](math.inf)
        self.write_stream = _PublishStream(self)

    async def open(self) -> None:
        """Subscribe the RPC topic (No Local) and the capability topic; wait for the SUBACK.

        Raises:
            TransportError: the broker refused or did not acknowledge, or the link is gone.
        """
        await self.link.subscribe([(self.rpc_topic, True), (self.capability_topic, False)])

    # -- server -> gateway ---------------------------------------------------------------------

    def feed(self, kind: str, message: Incoming) -> None:
        """A message on this server's RPC topic (``kind="rpc"``) or capability topic."""
        if self.dead is not None or not message.payload:
            return
        try:
            msg = types.jsonrpc_message_adapter.validate_json(message.payload, by_name=False)
        except ValueError as exc:
            log.warning("malformed JSON-RPC message from %s on %s: %s", self.label, message.topic,
                        str(exc).splitlines()[0])
            return
        if kind != "rpc":
            if isinstance(msg, types.JSONRPCNotification):
                self._deliver(SessionMessage(msg))
            return
        if isinstance(msg, (types.JSONRPCResponse, types.JSONRPCError)):
            self.pending.pop(str(msg.id), None)
        elif isinstance(msg, types.JSONRPCNotification) and msg.method == "notifications/disconnected":
            self.fail(f"server {self.label} disconnected this client")
            return
        self._deliver(SessionMessage(msg))

    def _deliver(self, item: SessionMessage | Exception) -> None:
        try:
            self.read_send.send_nowait(item)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass

    def _answer_with_error(self, request_id: Any, reason: str) -> None:
        error = types.ErrorData(code=types.CONNECTION_CLOSED, message=reason)
        self._deliver(SessionMessage(types.JSONRPCError(jsonrpc="2.0", id=request_id, error=error)))

    def fail(self, reason: str) -> None:
        """The server or the link is gone: answer pending requests with ``reason``, tell the session."""
        if self.dead is not None:
            return
        self.dead = reason
        for request_id in self.pending.values():
            self._answer_with_error(request_id, reason)
        self.pending.clear()
        self._deliver(TransportError(reason))

    # -- gateway -> server ---------------------------------------------------------------------

    def publish(self, msg: types.JSONRPCMessage) -> None:
        if self.dead is not None:
            if isinstance(msg, types.JSONRPCRequest):
                self._answer_with_error(msg.id, self.dead)
            return
        topic = self.rpc_topic
        if isinstance(msg, types.JSONRPCRequest):
            self.pending[str(msg.id)] = msg.id
            if msg.method == "initialize":
                topic = self.control_topic
        elif isinstance(msg, types.JSONRPCNotification) and msg.method == "notifications/cancelled":
            self.pending.pop(str((msg.params or {}).get("requestId")), None)
        payload = msg.model_dump_json(by_alias=True, exclude_unset=True).encode()
        try:
            self.link.publish(topic, payload)
        except TransportError as exc:
            self.fail(str(exc))
            return
        if isinstance(msg, types.JSONRPCRequest) and msg.method == "initialize" and self.initialize_timeout:
            self.link.start_soon(self._initialize_again, str(msg.id), payload)

    async def _initialize_again(self, key: str, payload: bytes) -> None:
        """Send an unanswered ``initialize`` again every :attr:`initialize_timeout` seconds."""
        assert self.initialize_timeout
        while True:
            await anyio.sleep(self.initialize_timeout)
            if key not in self.pending or self.dead is not None:
                return
            log.info("%s did not answer initialize within %g s; sending it again", self.label, self.initialize_timeout)
            try:
                self.link.publish(self.control_topic, payload)
            except TransportError as exc:
                self.fail(str(exc))
                return

    def close(self, *, goodbye: bool = True, unsubscribe: bool = True) -> None:
        """Leave this server (``notifications/disconnected`` on the RPC topic, unless the
        channel already failed), unsubscribe (unless a newer channel uses the topics), close."""
        if goodbye and self.dead is None and self.link.lost is None:
            try:
                self.link.publish(self.rpc_topic, DISCONNECTED)
            except TransportError:
                pass
        self.dead = self.dead or "closed"
        if unsubscribe:
            self.link.unsubscribe([self.rpc_topic, self.capability_topic])
        self.read_send.close()
        self.read_stream.close()
