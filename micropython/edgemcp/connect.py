# What runs once per connection to the broker: CONNECT / CONNACK (``MQTTClient._connect``)
# and the MCP binding's subscriptions and online presence after it (``MqttLink._on_up``).
# Imported for each step and unloaded again, so the serving-time heap holds neither its
# bytecode (.mpy on the filesystem) nor its function objects (frozen); a reconnect imports it
# again (a few ms) (docs/esp32.md "Memory").
import asyncio
import sys

from . import mqtt5 as m


def done():
    """Forget this module (a caller still running one of its functions keeps it until it returns)."""
    sys.modules.pop(__name__, None)  # (no new names: each would be a qstr in RAM from a .mpy)
    try:
        delattr(sys.modules["edgemcp"], "connect")
    except AttributeError:
        pass


async def mqtt(c):
    """Open ``c``'s (an ``mqtt.MQTTClient``) stream, send CONNECT, read the CONNACK. Raises
    OSError/TimeoutError (no stream, no CONNACK in ``c.timeout``), MQTTError (refused)."""
    c._gone = asyncio.Event()
    r, w = await asyncio.wait_for_ms((c._opener or asyncio.open_connection)(c.host, c.port), c.timeout)
    try:  # MicroPython's Stream keeps its socket in .s: turn Nagle off where supported
        import socket
        w.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except Exception:
        pass
    c._r, c._w = r, w
    await c._send(m.connect(c.client_id, c.keepalive, max_packet=len(c._mv), receive_max=c._qlen,
                            **c.connect_args))
    first, n = await asyncio.wait_for_ms(c._read_packet(), c.timeout)
    _, rc, props = m.dec_connack(c._mv[:n]) if first >> 4 == m.CONNACK else (0, -1, 0)
    if rc:
        raise m.MQTTError("CONNACK refused: %d" % rc)
    c.keepalive = m.prop(props, m.SERVER_KEEPALIVE) or c.keepalive
    c.connack = props
    c.connects += 1
    c.error = None


async def online(link):
    """After each CONNACK of ``link`` (a ``link.MqttLink``): the server-name the broker assigned
    taken, the control topic, every client's RPC topic (one wildcard) and every known client's
    topics subscribed, the retained online presence published."""
    from .core import binding
    from .mcp import dumps
    c = link.c
    name = m.prop(c.connack, m.USER_PROPERTY, "MCP-SERVER-NAME")
    if name and name != link.name:  # the broker assigns our server-name: the spec says use it
        link.server.log("broker assigned server-name " + name)
        link._name(name)
        c.connect_args["will_topic"] = link.presence  # from the next CONNECT on
    subs = [(link.control, False), (link.rpc("+"), True)]
    for cid in link.clients:
        subs += link._topics(cid)
    codes = await c.subscribe(subs)
    if codes and max(codes) >= 0x80:
        link.server.log("the broker refused a subscription (ACL?): %s" % codes)
    await c.publish(link.presence, dumps(binding.online(link.name, link.description, link.meta)).encode(), True, 1)
    link.server.log("online as %s (%s)" % (link.name, link.sid))
