"""The MQTT adapter: paho-mqtt clients driven by the asyncio event loop, no thread of their own.

Every paho client of this project (the device link, the cloud client link, the gateway, the
simulated fleet) runs here. Two pieces:

:class:`LoopDriver` moves bytes. It follows paho's ``examples/loop_asyncio.py``: paho's socket
callbacks register the socket with the event loop (``add_reader`` always, ``add_writer`` while
paho has packets queued), so ``loop_read``/``loop_write`` and therefore every paho callback run
**on the event loop thread**, in the order the packets arrived. No callback hands anything to
another thread; state needs no lock. A timer calls ``loop_misc`` (keepalive PINGREQs) on every
attached client every ``misc_interval`` seconds. paho's ``connect`` blocks (DNS, TCP, the TLS
handshake): :meth:`LoopDriver.connect` runs it in the default thread pool and registers the
socket when it returns; nothing else ever leaves the loop thread.

:class:`Connection` keeps one client connected: broker URLs tried in turn (failover), a CONNACK
timeout, the backoff of :class:`~edge_agent.mqtt.reconnect.ReconnectPolicy` (tenacity's full
jitter, with the streak and takeover rules) between attempts and after short-lived
connections, and the half-open check: paho sends PINGREQ after one keepalive without traffic
and by itself waits a whole further keepalive for the PINGRESP; like a broker (MQTT 5
§3.1.2.10) we give up at 1.5x keepalive, when the PINGRESP is half a keepalive late, and drop
the socket so the loss takes the normal path. The paho internals this needs (when the
PINGREQ went out; whether paho is inside a callback) are read through
:mod:`edge_agent.mqtt.paho_private`, and nowhere else.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.exception import MalformedPacket, MQTTException
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties, VariableByteIntegers

from edge_agent.errors import TransportError
from edge_agent.mqtt import paho_private
from edge_agent.mqtt.broker_url import BrokerURL
from edge_agent.mqtt.reconnect import Loss, ReconnectPolicy

log = logging.getLogger(__name__)

__all__ = ["Connection", "DecodedProperties", "LoopDriver", "PackedProperties", "Refusals", "malformed_reason",
           "nodelay"]


def nodelay(sock: Any) -> None:
    """Disable Nagle on a paho socket: a QoS 1 round trip on loopback drops from ~40 ms to well
    under 1 ms. A wrapper without ``setsockopt`` (websockets) is left alone."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass


_TCP_CORK = getattr(socket, "TCP_CORK", None)  # Linux


def _cork(sock: Any, on: bool) -> bool:
    """Set TCP_CORK on a paho socket (True if it could be set: Linux, a TCP socket)."""
    if _TCP_CORK is None or sock is None:
        return False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_CORK, 1 if on else 0)
    except (OSError, AttributeError):
        return False
    return True


class PackedProperties(Properties):
    """MQTT 5 properties that are packed once, for properties sent unchanged with every message
    (the MCP user properties). paho packs a packet's properties on every publish: ~18 µs for two
    user properties on this project's 2-core x86 bench machine, more on a Pi. Set every property before the first publish; later
    changes are not sent."""

    def pack(self) -> bytes:
        packed = self.__dict__.get("packed")
        if packed is None:
            packed = super().pack()
            object.__setattr__(self, "packed", packed)  # Properties.__setattr__ admits property names only
        return packed


def _property_tables() -> tuple[dict[str, int], dict[int, Any], list[str], dict[int, str]]:
    template = Properties(PacketTypes.PUBLISH)
    return (template.names, template.properties, template.types,
            {ident: name.replace(" ", "") for name, ident in template.names.items()})


_NAMES, _PROPERTIES, _TYPES, _IDENT_NAME = _property_tables()
# decoded properties without value checks in paho's __setattr__ (strings, binary data and the
# list of user properties): set directly; the others take paho's own path
_PLAIN = {2: "MessageExpiryInterval", 3: "ContentType", 8: "ResponseTopic", 9: "CorrelationData",
          31: "ReasonString", 38: "UserProperty"}


_UTF8, _UTF8_PAIR = _TYPES.index("UTF-8 Encoded String"), _TYPES.index("UTF-8 String Pair")
# what paho's decoders may raise on bad input (paho.mqtt._packet.DECODE_ERRORS; UnicodeDecodeError is a ValueError)
_DECODE_ERRORS = (struct.error, IndexError, KeyError, ValueError, MQTTException)


def _read_utf(buffer: Any, maxlen: int) -> tuple[str, int]:
    """paho's ``readUTF`` (same results, same errors) without its loop over every character: a
    strict UTF-8 decode already refuses D800-DFFF, so only NUL and U+FEFF are looked for."""
    if maxlen < 2:
        raise MalformedPacket("Not enough data to read string length")
    length = struct.unpack("!H", buffer[:2])[0]
    if length > maxlen - 2:
        raise MalformedPacket("Length delimited string too long")
    text = buffer[2:2 + length].decode("utf-8")
    nul, bom = text.find("\x00"), text.find("\ufeff")
    if nul >= 0 and (bom < 0 or nul < bom):
        raise MalformedPacket("[MQTT-1.5.4-2] Null found in UTF-8 data")
    if bom >= 0:
        raise MalformedPacket("[MQTT-1.5.4-3] U+FEFF in UTF-8 data")
    return text, length + 2


class DecodedProperties(Properties):
    """paho's ``Properties`` for the packets paho decodes, made cheap: the tables paho builds
    in every instance (two dicts, ~7 µs) are shared, and :meth:`unpack` maps identifiers to
    names by table instead of paho's scans (a PUBLISH with two user properties: ~40 µs in
    paho's ``decode_publish``, most of an incoming request's decoding). Same attributes, same
    errors (``MalformedPacket``, ``MQTTException``); everything else is paho's. Installed
    process-wide by :class:`LoopDriver` through :func:`edge_agent.mqtt.paho_private.use_properties_class`."""

    def __init__(self, packetType: int):
        d = self.__dict__
        d["packetType"] = packetType
        d["types"], d["names"], d["properties"] = _TYPES, _NAMES, _PROPERTIES

    def clear(self) -> None:
        d = self.__dict__
        for name in _IDENT_NAME.values():
            d.pop(name, None)
        d.pop("malformed", None)

    malformed: str | None = None
    """Set on a PUBLISH whose properties paho would refuse: why (``"UserProperty: [MQTT-1.5.4-3]
    U+FEFF in UTF-8 data"``); the other properties may be missing. None: well formed."""

    def unpack(self, buffer: Any) -> tuple[Properties, int]:
        self.clear()
        propslen, vbi_len = VariableByteIntegers.decode(buffer)
        if self.packetType != PacketTypes.PUBLISH:
            self._unpack(buffer[vbi_len:], propslen)
            return self, propslen + vbi_len
        # A PUBLISH is relayed by the broker from any client: what paho would refuse (and then
        # close the connection over: U+FEFF, NUL, invalid UTF-8 in a string, a duplicate or
        # unknown property) is marked instead, and the adapter drops the message. The property
        # block's length is known, so the rest of the packet is still read correctly.
        at = [0]
        try:
            self._unpack(buffer[vbi_len:], propslen, at)
        except _DECODE_ERRORS as exc:
            where = _IDENT_NAME.get(at[0], f"property 0x{at[0]:02X}")
            self.__dict__["malformed"] = f"{where}: {type(exc).__name__}: {exc}"[:200]
        return self, propslen + vbi_len

    def _unpack(self, buffer: Any, left: int, at: list[int] | None = None) -> None:
        """Decode ``left`` bytes of properties from ``buffer``; ``at[0]``: the identifier being read."""
        d = self.__dict__
        while left > 0:
            identifier, n = VariableByteIntegers.decode(buffer)
            buffer = buffer[n:]
            left -= n
            if at is not None:
                at[0] = identifier
            kind = _PROPERTIES[identifier][0]
            value: Any
            if kind == _UTF8:
                value, valuelen = _read_utf(buffer, left)
            elif kind == _UTF8_PAIR:
                key, keylen = _read_utf(buffer, left)
                val, vallen = _read_utf(buffer[keylen:], left - keylen)
                value, valuelen = (key, val), keylen + vallen
            else:
                value, valuelen = self.readProperty(buffer, kind, left)
            buffer = buffer[valuelen:]
            left -= valuelen
            name = _IDENT_NAME[identifier]
            if identifier not in (11, 38) and name in d:
                raise MQTTException(f"Property '{property}' must not exist more than once")  # (paho's text)
            plain = _PLAIN.get(identifier)
            if plain is None or self.packetType not in _PROPERTIES[identifier][1]:
                setattr(self, name, value)  # paho's checks (and its error for a misplaced property)
            elif identifier == 38:
                pairs = d.get(plain)
                d[plain] = [value] if pairs is None else pairs + [value]
            else:
                d[plain] = value


def malformed_reason(message: mqtt.MQTTMessage) -> str | None:
    """Why an incoming PUBLISH must be dropped unread, or None if it may be handled.

    Reasons: a property paho's decoder refuses (:attr:`DecodedProperties.malformed`: invalid
    UTF-8; U+0000, forbidden by MQTT 5 §1.5.4 [MQTT-1.5.4-2]; U+FEFF, which paho refuses
    although [MQTT-1.5.4-3] only says a receiver must not strip it; a duplicate or unknown
    property), or the same characters in the topic name (paho passes those through, and a
    topic that is not UTF-8 raises ``UnicodeDecodeError`` on ``message.topic``). Mosquitto
    forwards U+FEFF in both, so any client allowed to publish on a topic we subscribe can send
    it."""
    reason = getattr(message.properties, "malformed", None)
    if reason:
        return str(reason)
    try:
        topic = message.topic
    except UnicodeDecodeError:
        return "topic: not UTF-8"
    if "\ufeff" in topic:
        return "topic: U+FEFF in UTF-8 data"
    if "\x00" in topic:
        return "topic: [MQTT-1.5.4-2] Null found in UTF-8 data"
    return None


class Refusals:
    """What the broker refused, by ``"subscribe TOPIC"`` / ``"publish TOPIC"``: the SUBACK or
    PUBACK reason (``"Not authorized (0x87)"``, ``"Unspecified error (0x80)"``). A refusal is
    logged at error once (until it is granted again, which removes it); ``count`` counts all.
    """

    def __init__(self, logger: logging.Logger = log):
        self.by_topic: dict[str, str] = {}
        self.count = 0
        self.log = logger

    def update(self, kind: str, topics: Sequence[str], codes: Sequence[Any]) -> list[str]:
        """Record the reason codes of one SUBACK (``kind`` ``"subscribe"``, one code per topic)
        or PUBACK (``"publish"``); returns the keys refused now."""
        refused = []
        for topic, code in zip(topics, codes):
            key = f"{kind} {topic}"
            if getattr(code, "is_failure", False):
                value = getattr(code, "value", None)
                text = f"{code} (0x{value:02x})" if isinstance(value, int) else str(code)
                if key not in self.by_topic:
                    self.log.error("the broker refused to let us %s: %s (check its ACL for this user)", key, text)
                self.by_topic[key] = text
                self.count += 1
                refused.append(key)
            elif self.by_topic.pop(key, None) is not None:
                self.log.info("the broker now lets us %s", key)
        return refused


class _Guarded:
    """A client's ``on_message``, behind the malformed-message check of its :class:`LoopDriver`."""

    __slots__ = ("driver", "handler")

    def __init__(self, handler: Callable[..., Any] | None, driver: LoopDriver):
        self.handler, self.driver = handler, driver

    def __call__(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        reason = malformed_reason(message)
        if reason is not None:
            self.driver._dropped(client, message, reason)
        elif self.handler is not None:
            self.handler(client, userdata, message)


class LoopDriver:
    """Drives any number of paho clients from one asyncio event loop.

    ``loop``: the running loop (default: the current one; construct it on the loop's thread).
    ``misc_interval``: seconds between ``loop_misc`` sweeps (keepalive resolution; > 0).

    Use :meth:`attach` before the client connects, :meth:`connect` (or paho's own ``connect``
    on the loop thread, for a local broker), :meth:`detach` when done, :meth:`close` at the end.

    Malformed messages: an incoming PUBLISH that paho would refuse (a string with U+FEFF, NUL
    or invalid UTF-8 in a property or in the topic; a duplicate or unknown property: see
    :func:`malformed_reason`) would make paho close the connection, and, retained, again at
    every reconnect. The driver puts every attached client's ``on_message`` behind a check (at
    :meth:`attach` and again before each read, so a handler set later is covered too; paho's
    per-topic ``message_callback_add`` handlers are not), which drops such a message before
    the handler sees it (QoS 1/2 is still acknowledged), counts it (:meth:`malformed`) and logs
    a warning with the reason: the first drop of each client at once, then at most one line
    per ``MALFORMED_LOG_INTERVAL`` seconds with the count since.

    Backpressure (every link): while paho holds more than ``MAX_UNWRITTEN`` packets it could
    not write to the socket (the broker reads slower than we answer), the socket is not read:
    what the broker has for us stays in the broker (bounded by its own queue limits) instead of
    becoming answers in our heap; reading resumes once the socket took half of them. Only the
    unwritten packets count: a QoS 1 message waiting for a free slot of the in-flight window
    (the broker's Receive Maximum) waits for a PUBACK, which only a read brings, so pausing on
    those would stop the link for good; that queue is bounded per client where requests come
    in (the device endpoint counts a client's unacknowledged answers against its in-flight
    bound: ``MqttServerTransport.backlog``). ``paused`` counts the pauses.
    """

    MALFORMED_LOG_INTERVAL = 60.0
    MAX_UNWRITTEN = 1000
    READ_BATCH = 64  # packets read from one socket per loop step

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None, *, misc_interval: float = 1.0):
        if not misc_interval > 0:
            raise ValueError(f"misc_interval must be > 0, got {misc_interval!r}")
        self.loop = loop or asyncio.get_running_loop()
        self.misc_interval = misc_interval
        paho_private.use_properties_class(DecodedProperties)
        self.clients: dict[mqtt.Client, Callable[[], None] | None] = {}
        self._fds: dict[mqtt.Client, int] = {}  # the socket registered for each client
        # clients whose paho.connect() runs in a worker thread (a count: a cancelled connect's
        # worker may still run while the next connect() waits for it)
        self._connecting: dict[mqtt.Client, int] = {}
        self._workers: dict[mqtt.Client, asyncio.Future[Any]] = {}  # the last connect() worker of each
        self._timer: asyncio.TimerHandle | None = None
        self._writers: set[mqtt.Client] = set()  # clients with a writer callback registered
        self._deferring: mqtt.Client | None = None  # queued packets of this client are flushed by the caller
        self._batch: dict[mqtt.Client, int] = {}  # clients to write at the next step -> writes that joined
        self._batch_handle: asyncio.Handle | None = None
        self._malformed: dict[mqtt.Client, int] = {}  # messages dropped as malformed, per client
        self._malformed_logged: dict[mqtt.Client, tuple[float, int]] = {}  # last warning: (monotonic, count)
        self._paused: set[mqtt.Client] = set()  # clients whose socket is not read now (backpressure)
        self._read_batch: dict[mqtt.Client, int] = {}  # packets per step, where not READ_BATCH (attach)
        self.paused = 0  # how many times a client's reading was paused

    # -- malformed messages ---------------------------------------------------------------------
    def malformed(self, client: mqtt.Client) -> int:
        """How many incoming messages of ``client`` were dropped as malformed (since the driver
        was made; kept across reconnects, detach and attach)."""
        return self._malformed.get(client, 0)

    def _guard(self, client: mqtt.Client) -> None:
        handler = client.on_message
        if type(handler) is _Guarded and handler.driver is self:
            return
        if isinstance(handler, _Guarded):
            handler = handler.handler
        client.on_message = _Guarded(handler, self)

    def _dropped(self, client: mqtt.Client, message: mqtt.MQTTMessage, reason: str) -> None:
        count = self._malformed[client] = self._malformed.get(client, 0) + 1
        now = time.monotonic()
        last = self._malformed_logged.get(client)
        if last is not None and now - last[0] < self.MALFORMED_LOG_INTERVAL:
            return
        self._malformed_logged[client] = (now, count)
        try:
            topic = message.topic
        except UnicodeDecodeError:
            topic = "(not UTF-8)"
        where = f"{topic[:120]!r}{' (retained)' if message.retain else ''}"
        if last is None:
            log.warning("dropped a malformed MQTT message on %s: %s (paho would have closed the connection); "
                        "further drops are counted, and logged at most every %g s", where, reason,
                        self.MALFORMED_LOG_INTERVAL)
        else:
            log.warning("dropped %d more malformed MQTT messages in %.0f s (%d in all); the last on %s: %s",
                        count - last[1], now - last[0], count, where, reason)

    # -- attach / detach ------------------------------------------------------------------------
    def attach(self, client: mqtt.Client, *, tick: Callable[[], None] | None = None, read_batch: int | None = None) -> None:
        """Drive ``client`` (installs its four ``on_socket_*`` callbacks; ``on_socket_open`` also
        sets TCP_NODELAY). ``tick`` is called after each ``loop_misc`` sweep of this client.
        ``read_batch``: packets read from its socket per loop step (default ``READ_BATCH``; fewer:
        it yields to the other sockets sooner)."""
        client.on_socket_open = self._on_open
        client.on_socket_close = self._on_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        self.clients[client] = tick
        if read_batch is not None:
            self._read_batch[client] = max(1, read_batch)
        self._guard(client)
        sock = client.socket()
        if sock is not None and client not in self._fds:
            self._register(client, sock)
            if client.want_write():
                self._add_writer(client)
        self._schedule()

    def detach(self, client: mqtt.Client) -> None:
        """Stop driving ``client`` (its socket, if any, stays as it is)."""
        self.clients.pop(client, None)
        self._read_batch.pop(client, None)
        self._unregister(client)

    def close(self) -> None:
        """Stop the keepalive timer and forget every client."""
        for client in list(self.clients):
            self.detach(client)
        if self._batch_handle is not None:
            self._batch_handle.cancel()
            self._batch_handle = None
        self._batch.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- connecting ----------------------------------------------------------------------------
    async def connect(self, client: mqtt.Client, host: str, port: int, *, keepalive: int,
                      clean_start: bool = True, properties: Properties | None = None) -> None:
        """paho's blocking ``connect`` (DNS, TCP, TLS handshake; bounded by the client's
        ``connect_timeout``) in the default thread pool; the CONNECT packet is then written by
        the loop. Returns before the CONNACK. If cancelled while the worker still connects, the
        socket it opens is closed unused (no CONNECT was sent on it), and the next
        :meth:`connect` of this client waits for that worker first.

        Raises:
            OSError: DNS, TCP or TLS failed (``ssl.SSLError`` is an ``OSError``).
        """
        self._unregister(client)  # nothing of the old socket is read from now on
        self._busy(client)
        fut: asyncio.Future[Any] | None = None
        try:
            prior = self._workers.get(client)
            if prior is not None and not prior.done():
                await asyncio.wait([prior])
            call = functools.partial(client.connect, host, port, keepalive=keepalive, clean_start=clean_start,
                                     properties=properties)
            fut = self._workers[client] = self.loop.run_in_executor(None, call)
            await asyncio.shield(fut)
        except asyncio.CancelledError:
            if fut is not None and not fut.done():
                fut.add_done_callback(lambda f: self._orphaned(client, f))  # still busy until the worker ends
            elif fut is not None:
                self._orphaned(client, fut)
            else:
                self._idle(client)
            raise
        except BaseException:
            self._idle(client)
            self._workers.pop(client, None)
            raise
        self._idle(client)
        self._workers.pop(client, None)
        sock = client.socket()
        if sock is None:
            raise OSError("paho opened no socket")
        self._register(client, sock)
        self.flush(client)  # the CONNECT packet is queued

    def _busy(self, client: mqtt.Client) -> None:
        self._connecting[client] = self._connecting.get(client, 0) + 1

    def _idle(self, client: mqtt.Client) -> None:
        n = self._connecting.get(client, 0) - 1
        if n > 0:
            self._connecting[client] = n
        else:
            self._connecting.pop(client, None)

    def _orphaned(self, client: mqtt.Client, fut: asyncio.Future[Any]) -> None:
        self._idle(client)
        if self._workers.get(client) is fut:
            del self._workers[client]
        if fut.cancelled() or fut.exception() is not None:
            return
        sock = client.socket()
        if sock is not None and client not in self._fds and client not in self._connecting:
            sock.close()  # no CONNECT went out on it; paho closes it again (harmlessly) at its next connect

    # -- I/O -----------------------------------------------------------------------------------
    # Writes: a packet queued from a task (publish) or by a read (PUBACK, what callbacks send) is
    # written by one callback at the start of the next loop step, with whatever else this step
    # queued for the client (the answers of several requests, their PUBACKs): corked
    # (TCP_CORK) when more than one write joined, so they leave in one TCP segment; one send
    # per packet and one wake-up of the broker per batch instead of per packet. Only what the
    # socket does not take then waits for a writer callback.
    def publish(self, client: mqtt.Client, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False,
                properties: Properties | None = None) -> mqtt.MQTTMessageInfo:
        """``client.publish(...)``; the packet is written at the start of the next loop step
        (with the other packets queued until then), or at once by :meth:`flush`."""
        self._deferring = client
        try:
            info = client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        finally:
            self._deferring = None
        self._write_soon(client)
        return info

    def write_soon(self, client: mqtt.Client) -> None:
        """Write what paho has queued for ``client`` at the start of the next loop step, with
        whatever else joins it by then (one corked write), e.g. a run of PUBACKs."""
        self._write_soon(client)

    def _write_soon(self, client: mqtt.Client) -> None:
        joined = self._batch.get(client)
        self._batch[client] = 1 if joined is None else joined + 1
        if self._batch_handle is None:
            self._batch_handle = self.loop.call_soon(self._write_batch)

    def _write_batch(self) -> None:
        self._batch_handle = None
        batch, self._batch = self._batch, {}
        for client, joined in batch.items():
            if joined < 2 or not client.want_write():
                self.flush(client)
                continue
            sock = client.socket()
            corked = _cork(sock, True)
            try:
                self.flush(client)
            finally:
                if corked:
                    _cork(sock, False)

    def flush(self, client: mqtt.Client) -> None:
        """Write what paho has queued now instead of on the next loop iteration. From inside a
        paho callback (paho's callback lock is not re-entrant) the loop writes it instead."""
        if not client.want_write() or client not in self._fds or client in self._connecting:
            return
        if not paho_private.in_callback(client):
            client.loop_write()
        if client.want_write() and client in self._fds:
            self._add_writer(client)
        self._resume(client)

    def drop(self, client: mqtt.Client) -> None:
        """Shut the client's socket down (no DISCONNECT: the broker publishes the will). paho sees
        end-of-file on the next read and takes its normal connection-lost path."""
        sock: Any = client.socket()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except (OSError, AttributeError):
                pass

    def _readable(self, client: mqtt.Client) -> None:
        self._guard(client)  # on_message may have been set since attach()
        self._deferring = client
        try:
            # at most READ_BATCH packets per step: what is left keeps the socket readable, and the
            # other sockets and the tasks (answers) get their turn in between (fairness)
            rc = paho_private.read_packets(client, self._read_batch.get(client, self.READ_BATCH))
            # TLS: records already decrypted into the SSL object are invisible to the selector:
            # read them at the next step
            sock: Any = client.socket()
            if rc == mqtt.MQTT_ERR_SUCCESS and sock is not None and getattr(sock, "pending", None) \
                    and sock.pending():
                self.loop.call_soon(self._read_pending, client, sock)
        finally:
            self._deferring = None
        self._write_soon(client)  # the PUBACK of what was read, and what the callbacks sent
        if paho_private.unwritten_packets(client) > self.MAX_UNWRITTEN:
            self._pause(client)

    def _read_pending(self, client: mqtt.Client, sock: Any) -> None:
        if client.socket() is sock and client in self._fds and client not in self._paused:
            self._readable(client)

    def _writable(self, client: mqtt.Client) -> None:
        client.loop_write()
        if not client.want_write():
            self._remove_writer(client)
        self._resume(client)

    def _pause(self, client: mqtt.Client) -> None:
        """Stop reading ``client``'s socket until paho's unwritten packets drain (see the class)."""
        fd = self._fds.get(client)
        if fd is None or client in self._paused:
            return
        self._paused.add(client)
        self.paused += 1
        self.loop.remove_reader(fd)
        self._add_writer(client)  # the writer callback resumes reading

    def _resume(self, client: mqtt.Client) -> None:
        if client in self._paused and paho_private.unwritten_packets(client) <= self.MAX_UNWRITTEN // 2:
            self._paused.discard(client)
            fd = self._fds.get(client)
            if fd is not None:
                self.loop.add_reader(fd, self._readable, client)

    def _register(self, client: mqtt.Client, sock: Any) -> None:
        self._unregister(client)
        fd = sock.fileno()
        self._fds[client] = fd
        self.loop.add_reader(fd, self._readable, client)

    def _unregister(self, client: mqtt.Client) -> None:
        fd = self._fds.pop(client, None)
        self._writers.discard(client)
        self._paused.discard(client)
        if fd is not None:
            self.loop.remove_reader(fd)
            self.loop.remove_writer(fd)

    def _add_writer(self, client: mqtt.Client) -> None:
        fd = self._fds.get(client)
        if fd is not None and client not in self._writers:
            self._writers.add(client)
            self.loop.add_writer(fd, self._writable, client)

    def _remove_writer(self, client: mqtt.Client) -> None:
        fd = self._fds.get(client)
        if fd is not None and client in self._writers:
            self._writers.discard(client)
            self.loop.remove_writer(fd)

    # paho's socket callbacks. During connect() they run in the worker thread: then they leave
    # the event loop alone (connect() registers the new socket when the worker returns).
    def _on_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        nodelay(sock)
        if client in self.clients and client not in self._connecting:
            self._register(client, sock)

    def _on_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if client not in self._connecting:
            self._unregister(client)

    def _on_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if client is not self._deferring and client not in self._connecting:  # else: flushed right after
            self._add_writer(client)

    def _on_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if client not in self._connecting:
            self._remove_writer(client)

    # -- keepalive -----------------------------------------------------------------------------
    def _schedule(self) -> None:
        if self._timer is None and self.clients:
            self._timer = self.loop.call_later(self.misc_interval, self._misc)

    def _misc(self) -> None:
        self._timer = None
        for client, tick in list(self.clients.items()):
            try:
                if client not in self._connecting and client.socket() is not None:
                    client.loop_misc()
                if tick is not None:
                    tick()
            except Exception:  # one client's bug must not stop every keepalive
                log.exception("MQTT keepalive sweep failed for %s", client)
        self._schedule()


class Connection:
    """Keeps one paho client connected to one of ``brokers``, on a :class:`LoopDriver`.

    ``client``: a paho MQTT 5 client whose ``on_connect``/``on_disconnect`` this class owns (set
    the others yourself). ``brokers``: tried in turn, the next one after each failed attempt.
    ``keepalive``: seconds (> 0). ``connack_timeout``: seconds from the start of an attempt
    (DNS+TCP+TLS included) to the CONNACK. ``policy``: the backoff (shared with nobody).
    ``connect_properties``: called before each attempt (CONNECT properties). ``username`` /
    ``password``: override the URL's. ``logger``: where attempts and losses are logged.

    Hooks (all run on the event loop, inside paho's callbacks, so they may publish and
    subscribe at once): ``on_connected(flags, properties)`` after a successful CONNACK (before
    any message of the new connection is handled); ``on_disconnected(reason_code)`` when an
    accepted connection ended; ``on_attempt(url)`` before each attempt;
    ``on_attempt_failed(text)`` after a failed one; ``on_loss(loss)`` with the policy's verdict
    on every ended connection; ``takeover_message(loss, url)``: the one loud line logged at the
    first session takeover.
    ``max_packet_size``: bytes; sent as the CONNECT's Maximum Packet Size (MQTT 5 §3.1.2.11.4),
    so the broker never sends this client a bigger packet (it drops it for this client: one
    hostile 50 MB PUBLISH no longer lands in our memory); None: no limit announced.
    """

    def __init__(self, client: mqtt.Client, brokers: Sequence[BrokerURL], *, driver: LoopDriver, keepalive: int,
                 connack_timeout: float, policy: ReconnectPolicy, clean_start: bool = True,
                 connect_properties: Callable[[], Properties | None] = lambda: None,
                 username: str | None = None, password: str | None = None, tls_insecure: bool = False,
                 logger: logging.Logger = log,
                 on_connected: Callable[[Any, Any], None] | None = None,
                 on_disconnected: Callable[[Any], None] | None = None,
                 on_attempt: Callable[[BrokerURL], None] | None = None,
                 on_attempt_failed: Callable[[str], None] | None = None,
                 on_loss: Callable[[Loss], None] | None = None,
                 takeover_message: Callable[[Loss, BrokerURL], str] | None = None,
                 max_packet_size: int | None = None, read_batch: int | None = None):
        if not brokers:
            raise ValueError("at least one broker URL is needed")
        self.client, self.brokers, self.driver = client, list(brokers), driver
        self.keepalive, self.connack_timeout, self.policy = keepalive, connack_timeout, policy
        self.clean_start = clean_start
        self.connect_properties = connect_properties
        self.max_packet_size = max_packet_size
        self.read_batch = read_batch
        self.username, self.password, self.tls_insecure = username, password, tls_insecure
        self.log = logger
        self.on_connected, self.on_disconnected = on_connected, on_disconnected
        self.on_attempt, self.on_attempt_failed, self.on_loss = on_attempt, on_attempt_failed, on_loss
        self.takeover_message = takeover_message
        self.broker = self.brokers[0]
        self.up = False  # an accepted connection is open
        self._index = 0
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._connack: asyncio.Future[tuple[Any, Any]] | None = None
        self._lost = asyncio.Event()
        self._wake = asyncio.Event()
        self._reason: tuple[int | None, bool, str] | None = None  # (code, DISCONNECT from broker, text)
        self._dropped_dead_link = False
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.connect_timeout = connack_timeout

    # -- control -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start connecting (in a task on the loop); it keeps trying until :meth:`stop`. A
        stopped connection may be started again."""
        if self._task is None:
            self._stopping = False
            self.driver.attach(self.client, tick=self._tick, read_batch=self.read_batch)
            self._task = self.driver.loop.create_task(self._run(), name="mqtt-connection")

    async def stop(self, timeout: float = 5.0) -> None:
        """DISCONNECT if connected (no will) and wait up to ``timeout`` s for it to be written;
        stop reconnecting; detach the client from the driver. Safe twice."""
        self._stopping = True
        self._wake.set()
        if self.up and self.client.is_connected():
            self.client.disconnect()
            self.driver.flush(self.client)
            try:
                await asyncio.wait_for(self._lost.wait(), timeout)
            except asyncio.TimeoutError:
                self.log.debug("DISCONNECT not written within %g s", timeout)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self.driver.detach(self.client)
        self.up = False

    # -- the connection loop --------------------------------------------------------------------
    async def _run(self) -> None:
        attempt = 0
        while not self._stopping:
            url = self.brokers[self._index % len(self.brokers)]
            try:
                await self._attempt(url)
            except (OSError, TransportError) as exc:
                if self._stopping:
                    return
                self._index += 1  # fail over to the next URL
                self.policy.attempt_failed()
                attempt += 1
                delay = self.policy.delay()
                text = f"{type(exc).__name__}: {exc}"
                if self.on_attempt_failed is not None:
                    self.on_attempt_failed(text)
                self.log.warning("MQTT connection attempt %d failed (%s); retrying in %.1f s", attempt, text, delay)
                await self._sleep(delay)
                continue
            except Exception:  # a bug must not end the link for good
                self.log.exception("unexpected error while connecting")
                await self._sleep(self.policy.reconnect_max)
                continue
            attempt = 0
            await self._lost.wait()
            if self._stopping:
                return
            loss = self._judge_loss(url)
            await self._sleep(loss.delay)

    def _connect_props(self) -> Properties | None:
        props = self.connect_properties()
        if self.max_packet_size:
            if props is None:
                props = Properties(PacketTypes.CONNECT)
            props.MaximumPacketSize = self.max_packet_size
        return props

    async def _attempt(self, url: BrokerURL) -> None:
        self.broker = url
        if self.on_attempt is not None:
            self.on_attempt(url)
        if url.tls and self.tls_insecure:
            self.log.warning("TLS VERIFICATION IS OFF for %s (tls_insecure = true): anyone on the path can read and "
                             "forge this device's traffic", url)
        user = self.username or url.username
        if user:
            self.client.username_pw_set(user, self.password or url.password)
        loop = self.driver.loop
        deadline = loop.time() + self.connack_timeout
        self._connack = loop.create_future()
        self._lost.clear()
        self._reason = None
        self._dropped_dead_link = False
        try:
            # asyncio.timeout, not wait_for: connect() must start in this step (it stops reading the
            # old socket at once, so no stale disconnect can reach the new attempt's future)
            async with asyncio.timeout_at(deadline):
                await self.driver.connect(self.client, url.host, url.port, keepalive=self.keepalive,
                                          clean_start=self.clean_start, properties=self._connect_props())
                reason, _ = await asyncio.shield(self._connack)
        except TimeoutError:
            self.driver.drop(self.client)
            raise TransportError(f"{url}: no CONNACK within {self.connack_timeout:g} s") from None
        finally:
            self._connack = None
        if getattr(reason, "is_failure", False):
            raise TransportError(f"{url} refused the connection: {reason}")

    def _judge_loss(self, url: BrokerURL) -> Loss:
        code, from_broker, text = self._reason or (None, False, "connection closed")
        loss = self.policy.lost(time.monotonic(), reason_code=code, from_broker=from_broker,
                                self_inflicted=self._dropped_dead_link)
        if self.on_loss is not None:
            self.on_loss(loss)
        if loss.first_takeover:
            msg = self.takeover_message(loss, url) if self.takeover_message else \
                f"another client uses the same client id on {url} (session taken over)"
            self.log.warning("%s", msg)
        elif loss.takeover:
            self.log.debug("session taken over again (%d times); reconnecting in %.1f s",
                           self.policy.takeovers_seen, loss.delay)
        else:
            self.log.warning("lost the broker %s (%s) after %.1f s; reconnecting%s", url,
                             _reason_text(code, from_broker, text, self._dropped_dead_link), loss.uptime,
                             f" in {loss.delay:.1f} s" if loss.delay else "")
        return loss

    async def _sleep(self, delay: float) -> None:
        if delay <= 0 or self._stopping:
            return
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), delay)
        except asyncio.TimeoutError:
            pass

    # -- paho callbacks (event loop thread) ------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        fut = self._connack
        if fut is None or fut.done():  # a CONNACK after the timeout: the socket is being dropped
            return
        if not reason_code.is_failure:
            self.up = True
            self.policy.connected(time.monotonic())
            if self.on_connected is not None:
                try:
                    self.on_connected(flags, properties)
                except Exception:
                    self.log.exception("error in the on-connect handler")
        fut.set_result((reason_code, properties))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        fut = self._connack
        if fut is not None and not fut.done():
            fut.set_exception(TransportError(f"{self.broker}: connection closed before CONNACK ({reason_code})"))
            return
        if not self.up:
            return
        self.up = False
        from_broker = bool(getattr(flags, "is_disconnect_packet_from_server", False))
        self._reason = (getattr(reason_code, "value", None) if from_broker else None, from_broker, str(reason_code))
        if self.on_disconnected is not None:
            try:
                self.on_disconnected(reason_code)
            except Exception:
                self.log.exception("error in the on-disconnect handler")
        self._lost.set()

    def _tick(self) -> None:
        """After each keepalive sweep: the half-open check (see the module docstring)."""
        if not self.up or self._dropped_dead_link:
            return
        ping_t = paho_private.ping_sent_at(self.client)
        late = paho_private.clock() - ping_t if ping_t else 0.0
        if late > 0.5 * self.keepalive and self.client.is_connected():
            self.log.warning("no PINGRESP %.1f s after PINGREQ: the link to the broker is dead; reconnecting", late)
            self._dropped_dead_link = True
            self.driver.drop(self.client)


def _reason_text(code: int | None, from_broker: bool, text: str, dropped_dead_link: bool) -> str:
    """Why a connection ended, for the log: ``no PINGRESP``, ``DISCONNECT 0x8B Server shutting down``, or
    ``connection closed`` (socket closed or reset without a DISCONNECT packet)."""
    if dropped_dead_link:
        return "no PINGRESP"
    if from_broker:
        return f"DISCONNECT 0x{code:02X} {text}" if code is not None else f"DISCONNECT {text}"
    return "connection closed"
