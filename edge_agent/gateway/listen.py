"""``subscriptions/listen`` at the gateway (MCP 2026-07-28 ``basic/patterns/subscriptions``):
session-less clients learn of list changes and resource updates on the fleet.

The official SDK's :class:`~mcp.server.subscriptions.ListenHandler` serves each stream
(acknowledgment first, every frame tagged with the stream's id, only the kinds it asked for,
a graceful result at :meth:`GatewayListen.close`); this module feeds its bus:

- list changes: the gateway's coalesced ``notifications/{kind}/list_changed`` (a server-name
  came or went, a device's list changed, the last replica of an old catalog left) are
  published as :class:`ToolsListChanged` / :class:`PromptsListChanged` / :class:`ResourcesListChanged`;
- resource updates: each stream's ``resourceSubscriptions`` (gateway URIs) are subscribed on
  the devices like a handshake client's ``resources/subscribe`` (a pseudo client per stream,
  moved to another replica when its replica goes away), and each device update is published as
  :class:`ResourceUpdated` with the gateway URI; the subscriptions end with the stream.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import mcp_types as types
from mcp.server.subscriptions import (
    InMemorySubscriptionBus,
    ListenHandler,
    PromptsListChanged,
    ResourcesListChanged,
    ResourceUpdated,
    ServerEvent,
    ToolsListChanged,
)
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

if TYPE_CHECKING:
    from edge_agent.gateway.server import ClientState, Gateway

log = logging.getLogger(__name__)

EVENTS: dict[str, ServerEvent] = {"tools": ToolsListChanged(), "prompts": PromptsListChanged(),
                                  "resources": ResourcesListChanged()}


CACHEABLE = ("tools/list", "prompts/list", "resources/list", "resources/templates/list", "resources/read")
"""Methods whose 2026-07-28 results carry ``ttlMs`` and ``cacheScope`` (``CacheableResult``;
the same rule as ``edge_agent.server.modern.finish_result``, which the gateway may not import)."""


def finish_result(method: str, result: Any) -> None:
    """Give a result for a 2026-07-28 client its required fields: ``resultType`` "complete"
    (unless set, e.g. a device's ``input_required``), and on :data:`CACHEABLE` methods ``ttlMs``
    0 (the fleet changes at any time; clients re-list on list changes) and ``cacheScope``
    "private" (bindings and roles differ per client)."""
    if not isinstance(result, dict):
        return
    result.setdefault("resultType", "complete")
    if method in CACHEABLE:
        result.setdefault("ttlMs", 0)
        result.setdefault("cacheScope", "private")


def modern_results(handler: Callable[[Any, Any], Awaitable[Any]]) -> Callable[[Any, Any], Awaitable[Any]]:
    """``handler`` (a lowlevel ``Server`` request handler returning a dict) with
    :func:`finish_result` applied for 2026-07-28 requests (the devices answer in the handshake
    era, the SDK checks the 2026-07-28 shape)."""

    async def run(ctx: Any, params: Any) -> Any:
        result = await handler(ctx, params)
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            finish_result(ctx.method, result)
        return result

    return run


class GatewayListen:
    """The gateway's ``subscriptions/listen`` handler (``on_subscriptions_listen``) and its bus."""

    def __init__(self, gateway: "Gateway", *, max_subscriptions: int = 1024):
        self.gateway = gateway
        self.bus = InMemorySubscriptionBus()
        self.handler = ListenHandler(self.bus, max_subscriptions=max_subscriptions)

    async def __call__(self, ctx: Any, params: types.SubscriptionsListenRequestParams) -> Any:
        """Serve one stream: subscribe its resource URIs on the devices, then the SDK's
        handler until the client cancels it or :meth:`close`.

        Raises:
            MCPError: an unknown gateway URI or no server of it online (before the ack).
        """
        from edge_agent.gateway.server import ClientState

        gw = self.gateway
        state = ClientState(None)
        state.on_updated = self._updated  # type: ignore[attr-defined]
        await gw.fleet.ready.wait()
        try:
            for gateway_uri in params.notifications.resource_subscriptions or ():
                server_name, uri = gw._split_uri(gateway_uri)
                state.subscriptions[gateway_uri] = (server_name, uri)
                await gw._subscribe_on_replica(state, server_name, uri)
            gw.clients.append(state)  # (moved with the others when a replica goes away)
            return await self.handler(ctx, params)
        finally:
            await gw._client_gone(state)

    def _updated(self, client: "ClientState", gateway_uri: str) -> None:
        self.gateway._spawn(self.bus.publish, ResourceUpdated(uri=gateway_uri))

    async def lists_changed(self, kinds: list[str]) -> None:
        """Publish the list changes of ``kinds`` (``tools``, ``resources``, ``prompts``)."""
        for kind in kinds:
            event = EVENTS.get(kind)
            if event is not None:
                await self.bus.publish(event)

    def close(self) -> None:
        """End every stream gracefully (each gets its result)."""
        self.handler.close()
