# What runs once per connection to the broker: CONNECT (built here) / CONNACK (``MQTTClient._connect``)
# and the MCP binding's subscriptions and online presence after it (``MqttLink._on_up``).
# Imported for each step and unloaded again, so the serving-time heap holds neither its
# bytecode (.mpy on the filesystem) nor its function objects (frozen); a reconnect imports it
# again (a few ms) (docs/esp32.md "Memory").
import asyncio

from . import mqtt5 as m


def done():
    """Forget this module and the core's binding rules it used (a caller still running one of
    its functions keeps it until it returns)."""
    from . import unload
    unload("connect", "core.binding")


async def mqtt(c):
    """Open ``c``'s (an ``mqtt.MQTTClient``) stream, send CONNECT, read the CONNACK. Raises
    OSError/TimeoutError (no stream, no CONNACK in ``c.timeout``), MQTTError (refused)."""
    c._gone = asyncio.Event()
    r, w = await asyncio.wait_for_ms((c._opener or open_connection)(*c.addr), c.timeout)
    c._r, c._w = r, w
    await c._send(connect(c.client_id, c.keepalive, max_packet=c.max_packet, receive_max=c._qlen,
                            **c.connect_args))
    first, body = await asyncio.wait_for_ms(c._read_packet(), c.timeout)
    _, rc, props = m.dec_connack(body) if body and first >> 4 == m.CONNACK else (0, -1, 0)
    if rc:
        raise m.MQTTError("CONNACK refused: %d" % rc)
    c.keepalive = m.prop(props, m.SERVER_KEEPALIVE) or c.keepalive
    c.connack = props
    c.connects += 1
    c.error = None


def _writable(s):  # a generator is a coroutine on MicroPython: what stream.open_connection yields
    from asyncio import core
    yield core._io_queue.queue_write(s)


async def open_connection(host, port, ssl=None, server_hostname=None):
    """``asyncio.open_connection`` (extmod/asyncio/stream.py, 1.27) that closes its socket on
    every failure, a timeout (the task cancelled while it waits for the connection) included:
    MicroPython's leaves it open, and lwIP on an ESP32 has a handful (docs/esp32.md
    "Outages"). Nagle is turned off on the TCP socket (before TLS wraps it). ``ssl``: an
    ``ssl.SSLContext``, the server checked against ``server_hostname`` (default ``host``).
    Raises OSError (no address, socket table full, connection refused at once)."""
    try:
        from socket import getaddrinfo, socket
    except ImportError:  # the host harness (micropython/host/hostio.py): its own streams
        return await asyncio.open_connection(host, port, ssl, server_hostname)
    ai = getaddrinfo(host, port, 0, 1)[0]  # SOCK_STREAM
    s = socket(ai[0], ai[1], ai[2])
    try:
        s.setblocking(False)
        try:
            s.setsockopt(6, 1, 1)  # IPPROTO_TCP, TCP_NODELAY (lwIP and Linux): Nagle off
        except OSError:
            pass
        try:
            s.connect(ai[-1])
        except OSError:  # EINPROGRESS; a refused connection fails the first write, as on an ESP32
            pass
        if ssl:
            s = ssl.wrap_socket(s, server_hostname=server_hostname or host, do_handshake_on_connect=False)
            s.setblocking(False)
        await _writable(s)
    except BaseException:
        s.close()
        raise
    s = asyncio.StreamWriter(s, {})
    return s, s


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


def connect(client_id, keepalive=60, user=None, clean=True, will_topic=None, will_payload=b"",
            will_retain=False, will_qos=0, will_user=None, username=None, password=None, max_packet=0,
            expiry=0, receive_max=0, will_delay=0):
    """CONNECT (3.1), MQTT 5, with the user properties ``user``; the will (if ``will_topic``)
    carries ``will_user``. ``clean``: Clean Start (3.1.2.4); ``expiry``: Session Expiry
    Interval (3.1.2.11.2, s; 0 leaves it out: the session ends with the connection), so with
    ``clean=False`` the broker keeps the subscriptions and queues QoS 1 messages while the
    client is away. ``receive_max``: Receive Maximum (3.1.2.11.3; 0 leaves it out: 65535), the
    QoS 1 messages the broker sends before waiting for a PUBACK. ``max_packet``: Maximum Packet Size (3.1.2.11.4, bytes; 0 leaves it out:
    no limit), so the broker never sends a packet larger than the client can hold.
    ``will_delay``: the will's Will Delay Interval (3.1.3.2.2, s; 0 leaves it out): the broker
    publishes the will only when the client has not come back within it (or when the session
    ends, if sooner: with ``expiry`` 0 that is at once)."""
    flags = (2 if clean else 0) | (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    if will_topic is not None:
        flags |= 4 | will_qos << 3 | (0x20 if will_retain else 0)
    body = bytearray(b"\x00\x04MQTT\x05")
    body.append(flags)
    body.extend(keepalive.to_bytes(2, "big"))
    head = b"\x11" + expiry.to_bytes(4, "big") if expiry else b""
    if receive_max:
        head += b"\x21" + receive_max.to_bytes(2, "big")
    if max_packet:
        head += b"\x27" + max_packet.to_bytes(4, "big")
    body.extend(m.properties(user, head))
    m._s(body, client_id)
    if will_topic is not None:
        body.extend(m.properties(will_user, b"\x18" + will_delay.to_bytes(4, "big") if will_delay else b""))
        m._s(body, will_topic)
        m._s(body, will_payload)
    for x in (username, password):
        if x is not None:
            m._s(body, x)
    return m._packet(0x10, body)
