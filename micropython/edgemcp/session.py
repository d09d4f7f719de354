# What the MQTT link does when a session ends, and its answers to a client without one
# (``MqttLink`` in edgemcp/link.py): a client's will or ``notifications/disconnected``, a
# request from a client without a session, a request other than initialize on the control
# topic, the clean stop (an initialize: edgemcp/initialize.py). Rare next to tools/call and
# reads, so the link imports this module (with the shared core's binding rules) for each of
# them and unloads both again: the serving-time heap of a board with .mpy files holds
# neither's bytecode (docs/esp32.md "Memory").
from . import mcp
from .core import binding, jsonrpc


async def rpc(link, cid, payload):
    """A message on ``cid``'s RPC topic that is not plainly a request of its session."""
    s = link.server.sessions.get(cid)
    if payload and binding.client_gone(payload):
        await gone(link, cid)
    elif s and s.t is link:
        await link.server.handle(s, payload)
    else:  # a client without a session (the board restarted): tell it to initialize
        await refuse(link, cid, payload, binding.no_session)


async def presence(link, cid, payload):
    """A message on ``cid``'s presence topic: its will (empty) or disconnected ends its session."""
    if binding.client_gone(payload):
        await gone(link, cid)


async def refuse(link, cid, payload, refusal):
    """Answer ``payload`` with ``refusal(msg)`` (a core binding rule), -32700 if not JSON."""
    try:
        msg = jsonrpc.loads(payload) if not isinstance(payload, dict) else payload
    except jsonrpc.RpcError as e:
        return await link.send(cid, jsonrpc.error(None, e))
    answer = binding.legacy_discover(msg, mcp.VERSIONS) or refusal(msg)
    if answer:
        await link.send(cid, answer)


async def gone(link, cid, notify=False):
    """``MqttLink.gone``: forget ``cid``'s session and unsubscribe its topics."""
    link.server.close_session(cid)
    if cid in link.clients:
        link.clients.discard(cid)
        if notify:
            await link.send(cid, binding.DISCONNECTED)
        await link.c.unsubscribe([t for t, _ in link._topics(cid)])


async def stop(link):
    """``MqttLink.stop``: tell every client, clear the retained presence, DISCONNECT."""
    if link.c.up:
        for cid in list(link.clients):
            await link.send(cid, binding.DISCONNECTED)
        await link.c.publish(link.presence, b"", True, 1)
    for cid in link.clients:
        link.server.close_session(cid)
    link.clients = set()
    await link.c.disconnect()
