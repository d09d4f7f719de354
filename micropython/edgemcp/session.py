# What the MQTT link does when a session opens or ends, and its answers to a client without one
# (``MqttLink`` in edgemcp/link.py): an initialize on the control topic, a client's will or
# ``notifications/disconnected``, a request from a client without a session, the clean stop.
# Rare next to tools/call and reads, so the link imports this module (with the shared core's
# binding rules) for each of them and unloads both again (``done``): the serving-time heap of
# a board with .mpy files holds neither's bytecode (docs/esp32.md "Memory").
from . import mcp
from .core import binding, jsonrpc
from .mqtt5 import USER_PROPERTY, prop


def done():
    """Forget this module and the core's binding rules (connect.py imports them again)."""
    from . import unload
    unload("session", "core.binding")


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


async def control(link, props, payload):
    """A message on the control topic: an initialize opens a session (the client's topics
    subscribed BEFORE the answer, as the spec says); anything else is refused."""
    cid = prop(props, USER_PROPERTY, binding.CLIENT_ID)
    # without a valid client id (none, empty, a wildcard, a "/") there is no topic to answer
    # on, and subscribing its topics would hear other clients (or make the broker drop us)
    if binding.valid_client_id(cid) is None:
        return link.server.log("initialize with a bad " + binding.CLIENT_ID + " dropped: " + mcp.dumps(cid))
    try:
        msg = jsonrpc.loads(payload)
    except Exception:
        msg = None
    if not binding.opens_session(msg):
        return await refuse(link, cid, msg if msg is not None else payload, binding.control_refusal)
    auth = getattr(link.server, "auth", None)  # edgemcp.tokens (config "auth"): a valid token or no session
    s = await auth.open(link, cid, msg) if auth else link.server.open_session(cid, link)
    if not s:
        return
    link.clients.add(cid)
    codes = await link.c.subscribe(link._topics(cid))  # BEFORE the answer (spec)
    if codes is None or max(codes) >= 0x80:
        link.server.log("cannot subscribe the topics of " + cid)
        return await gone(link, cid)
    await link.server.handle(s, msg)


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
