# An initialize on the control topic of the MQTT link (``MqttLink`` in edgemcp/link.py): the
# client's id checked, its session opened (with a token check under "auth"), its topics
# subscribed before the answer. Once per client session, so the link imports this module (with
# the shared core's binding rules, unloaded again before the session is opened) for the
# message and unloads it again; what else a session's start and end need is in
# edgemcp/session.py (docs/esp32.md "Memory").
from . import mcp, unload
from .core import jsonrpc
from .mqtt5 import USER_PROPERTY, prop


async def control(link, props, payload):
    """A message on the control topic: an initialize opens a session (the client's topics
    subscribed BEFORE the answer, as the spec says); anything else is refused."""
    from .core import binding  # unloaded once the message is known to open a session (below)
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
        from .session import refuse
        return await refuse(link, cid, msg if msg is not None else payload, binding.control_refusal)
    # the session is opened, its topics subscribed and the initialize answered without the
    # binding rules in the heap: its import and the answer's are not live at once (board5:
    # the initialize was the .mpy heap's peak, 0.9 KB above a tools/call)
    del binding
    unload("core.binding")
    srv = link.server
    n = srv.max_sessions  # ~1 KB of heap and two broker subscriptions each: bounded
    if cid not in srv.sessions and len(srv.sessions) >= n:
        srv.log("initialize of %s refused: %d sessions" % (cid, n))
        e = jsonrpc.RpcError(jsonrpc.TOO_MANY_REQUESTS, "Too many sessions (%d): try again when a client has left" % n)
        return await link.send(cid, jsonrpc.error(msg.get("id"), e))
    auth = getattr(link.server, "auth", None)  # edgemcp.tokens (config "auth"): a valid token or no session
    s = await auth.open(link, cid, msg) if auth else link.server.open_session(cid, link)
    if not s:
        return
    link.clients.add(cid)
    codes = await link.c.subscribe(link._topics(cid))  # BEFORE the answer (spec)
    if codes is None or max(codes) >= 0x80:
        link.server.log("cannot subscribe the topics of " + cid)
        return await link.gone(cid)
    await link.server.handle(s, msg)
