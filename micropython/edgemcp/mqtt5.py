# MQTT 5.0 packet codec: pure functions, no I/O. Source: OASIS MQTT Version 5.0 (2019),
# 1.5 (data types), 2.1-2.2 (fixed header, properties), 3.1-3.14 (CONNECT .. DISCONNECT).
# The host tests run it under CPython and compare it with paho-mqtt.
from micropython import const

CONNACK = const(2)
PUBLISH = const(3)
PUBACK = const(4)
SUBACK = const(9)
UNSUBACK = const(11)
DISCONNECT = const(14)
USER_PROPERTY = const(0x26)
SERVER_KEEPALIVE = const(0x13)
NO_LOCAL = const(0x04)  # subscription option (3.8.3.1): QoS in bits 0-1, No Local bit 2
NO_RETAINED = const(0x20)  # subscription option: Retain Handling 2, no retained messages at subscribe

PINGREQ_PACKET = b"\xc0\x00"
DISCONNECT_PACKET = b"\xe0\x00"  # reason 0x00: normal disconnection, the broker drops the will

# Value type of each property id 0x00..0x2A (2.2.2.2): b byte, h two-byte int, i four-byte
# int, v varint, s UTF-8 string, d binary data, p string pair, - not a property.
_TYPES = "-bis----sd-v-----ish-sdbibs-s--s-hhhbbpibbb"


class MQTTError(ValueError):
    pass  # a malformed packet: the decoders raise nothing else, and never read past the buffer


def varint(n):
    """Variable Byte Integer of ``n`` (0 .. 268435455): 1 to 4 bytes (1.5.5)."""
    if not 0 <= n <= 268435455:
        raise MQTTError("varint range")
    out = bytearray()
    while True:
        out.append(n & 0x7F | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return out


def dec_varint(buf, i):
    """(value, next index) of the Variable Byte Integer at ``buf[i]``."""
    n = shift = 0
    while True:
        if shift > 21 or i >= len(buf):
            raise MQTTError("varint")
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return n, i
        shift += 7


def _s(out, text):
    # UTF-8 string / binary data: two-byte length, then the bytes (1.5.4, 1.5.6)
    if isinstance(text, str):
        text = text.encode()
    out.extend(len(text).to_bytes(2, "big"))
    out.extend(text)


def properties(user=None, head=b""):
    """A property block: the encoded properties ``head``, then the user properties
    ``[(name, value)]`` (2.2.2, 3.1.2.11.8)."""
    out = bytearray(head)
    for k, v in user or ():
        out.append(USER_PROPERTY)
        _s(out, k)
        _s(out, v)
    return varint(len(out)) + out


def prop(raw, pid, name=None):
    """The value of property ``pid`` in the property block ``raw`` (its bytes, without the
    length prefix, as ``dec_publish``/``dec_connack`` give it), else None. For user
    properties (``USER_PROPERTY``) the value of the last one called ``name``.
    Raises MQTTError for an unknown property id or a truncated block."""
    i = 0
    found = None
    while i < len(raw):
        p = raw[i]
        t = _TYPES[p] if p < len(_TYPES) else "-"
        i += 1
        if t in "hib":
            k = 2 if t == "h" else 4 if t == "i" else 1
            if i + k > len(raw):
                raise MQTTError("truncated")
            v = int.from_bytes(bytes(raw[i:i + k]), "big")
            i += k
        elif t == "v":
            v, i = dec_varint(raw, i)
        elif t == "-":
            raise MQTTError("property 0x%02x" % p)
        else:
            v, i = _dec_s(raw, i, t != "d")
            if t == "p":
                w, i = _dec_s(raw, i, True)
                if p == pid and v == name:
                    found = w
                continue
        if p == pid:
            return v
    return found


def _props(buf, i):
    # the property block at buf[i] -> (its bytes, index after it)
    n, i = dec_varint(buf, i)
    if i + n > len(buf):
        raise MQTTError("truncated")
    return bytes(buf[i:i + n]), i + n


def _dec_s(buf, i, text):
    if i + 2 > len(buf):
        raise MQTTError("truncated")
    n = (buf[i] << 8) | buf[i + 1]
    i += 2
    if i + n > len(buf):
        raise MQTTError("truncated")
    v = bytes(buf[i:i + n])
    if text:
        try:
            v = v.decode()
        except ValueError:  # UnicodeError: not UTF-8 (1.5.4)
            raise MQTTError("not UTF-8")
    return v, i + n


def _u16(buf, i):
    if i + 2 > len(buf):
        raise MQTTError("truncated")
    return (buf[i] << 8) | buf[i + 1]


def _packet(first, body):
    return bytes((first,)) + varint(len(body)) + body


def publish_header(topic, size, qos=0, retain=False, pid=0, props=b"\x00", dup=False):
    """Fixed and variable header of a PUBLISH (3.3) whose payload has ``size`` bytes: write
    this, then the payload, so the payload is never copied. ``props``: the encoded property
    block (``properties(user)``, encoded once for every publish)."""
    var = bytearray()
    _s(var, topic)
    if qos:
        var.extend(pid.to_bytes(2, "big"))
    var.extend(props)
    return bytes((0x30 | qos << 1 | (1 if retain else 0) | (8 if dup else 0),)) + varint(len(var) + size) + var


def subscribe(pid, topics):
    """SUBSCRIBE (3.8) of ``[(filter, options byte)]``."""
    body = bytearray(pid.to_bytes(2, "big") + b"\x00")
    for topic, opts in topics:
        _s(body, topic)
        body.append(opts)
    return _packet(0x82, body)


def unsubscribe(pid, topics):
    """UNSUBSCRIBE (3.10) of a list of topic filters."""
    body = bytearray(pid.to_bytes(2, "big") + b"\x00")
    for topic in topics:
        _s(body, topic)
    return _packet(0xA2, body)


def puback(pid):
    """PUBACK (3.4), reason Success: reason code and properties left out (3.4.2.1)."""
    return bytes((0x40, 2, pid >> 8, pid & 0xFF))


def dec_connack(body):
    """CONNACK body (3.2) -> (session present, reason code, property block bytes)."""
    _u16(body, 0)
    return bool(body[0] & 1), body[1], _props(body, 2)[0] if len(body) > 2 else b""


def dec_publish(flags, body):
    """PUBLISH body (3.3) with the fixed header's low ``flags`` -> (topic, qos, retain, packet
    id, property block bytes, index of the payload in ``body``)."""
    topic, i = _dec_s(body, 0, True)
    qos = flags >> 1 & 3
    pid = 0
    if qos == 3:
        raise MQTTError("QoS 3")
    if qos:
        pid = _u16(body, i)
        i += 2
    props, i = _props(body, i)
    return topic, qos, bool(flags & 1), pid, props, i


def publish_pid(flags, body):
    """The packet id of a PUBLISH (3.3.2.2) from the start of its body, even when the rest is
    not read (skipped): 0 at QoS 0, or when ``body`` is too short to hold it."""
    i = 2 + (body[0] << 8 | body[1]) if len(body) > 1 else len(body)
    return body[i] << 8 | body[i + 1] if flags & 6 and i + 2 <= len(body) else 0


def dec_ack(t, body):
    """PUBACK (3.4), SUBACK (3.9) or UNSUBACK (3.11) body of packet type ``t`` -> (packet id,
    reason codes as bytes: one per filter; PUBACK's absent code means 0x00 Success)."""
    pid = _u16(body, 0)
    if t == PUBACK:
        return pid, bytes(body[2:3]) or b"\x00"
    return pid, bytes(body[_props(body, 2)[1]:])
