# A small, resilient MQTT 5 client for MicroPython's asyncio, after mqtt_as: a protocol layer
# (packets, acknowledgements, keepalive) below a resilience layer (network, reconnect with
# backoff). The byte stream is injected: ``opener(host, port)`` returns ``(reader, writer)``
# with ``await reader.readinto(buf)``, ``writer.write(buf)``, ``await writer.drain()`` and
# ``writer.close()`` + ``await writer.wait_closed()``: what ``asyncio.open_connection`` gives on
# a board, and what a JavaScript-backed stream gives under the WebAssembly port in the tests.
# On MicroPython ``close()`` does nothing; only ``wait_closed()`` closes the socket
# (extmod/asyncio/stream.py), so every lost link goes through ``_close``.
import asyncio
import time

from . import mqtt5 as m

HEAD = 256  # bytes of the preallocated input buffer: every packet but a long PUBLISH fits


class MQTTClient:
    """One MQTT 5 connection that keeps itself up.

    ``run()`` (a task) connects, and after a lost link or a failed attempt reconnects with
    exponential backoff (``min_delay`` .. ``max_delay`` ms, default 1 s .. 30 s, plus 0..511 ms
    of jitter); ``network`` (optional, ``async``) brings the
    network up first (Wi-Fi), and ``link_up()`` (optional) says whether it still is: checked
    every 2 s, False is a lost link. After each CONNACK it calls ``await on_up()`` (subscribe and
    announce there). Received PUBLISHes wait in a bounded queue (``queue_len``): ``await get()``
    returns ``(topic, payload, property block)``. A QoS 1 message is acknowledged when ``get()``
    takes it, and CONNECT's Receive Maximum is ``queue_len``, so the broker holds the rest of a
    burst instead of the board's heap (a broker that sends more anyway: the oldest is dropped
    and counted in ``drops``). With a persistent session (``clean=False``, ``expiry``), a
    message still queued when the link is lost is dropped: the broker sends it again.
    ``max_packet``: the largest packet taken (bytes), sent in CONNECT as the Maximum Packet
    Size. A packet is read into a preallocated buffer of ``HEAD`` bytes, or, when longer, into
    one of its own size, garbage once it is handled; a longer packet (from a broker that
    ignores the limit) is skipped unparsed and counted in ``too_big``, and one there is no
    room for is skipped and counted in ``drops`` (a QoS 1 PUBLISH of either is acknowledged). ``timeout`` (s): for the connection, the CONNACK,
    each write to drain and each acknowledgement; a write that cannot drain in time fails
    the link. ``publish``/``subscribe`` wait out an outage; a QoS 1 PUBLISH is kept until its
    PUBACK and sent again (DUP) on the next links, so a sender need not wait for the PUBACK
    (``publish(..., wait=False)``: answers and notifications).
    ``connect_args``: CONNECT's user properties, will, credentials (``connect.connect``).
    """

    def __init__(self, client_id, host, port=1883, opener=None, keepalive=30, publish_user=None,
                 qos=1, queue_len=4, max_packet=2048, timeout=10, network=None, log=print, min_delay=1000,
                 max_delay=30000, link_up=None, **connect_args):
        self.client_id = client_id
        self.addr = (host, port)
        self.keepalive = keepalive
        self.qos = qos
        self.timeout = timeout * 1000
        self.delays = (min_delay, max_delay)
        self.connect_args = connect_args
        self.connack = b""  # property block of the last CONNACK (read it with mqtt5.prop)
        self.connects = self.drops = self.too_big = self.received = self.retained = 0
        self.error = None
        self.on_up = None
        self.up = False
        self._stop = False
        self._opener = opener
        self._network = network
        self._link_up = link_up
        self._log = log
        self._pprops = m.properties(publish_user)
        self._q = []
        self._qlen = queue_len
        self._qev = asyncio.Event()
        self._upev = asyncio.Event()
        self._gone = asyncio.Event()
        self._lock = asyncio.Lock()
        self._acks = {}  # packet id -> its acknowledgement slot (see _acked; publish's has more)
        self._again = []  # PUBLISH slots to send again once the link is back
        self._pid = 0
        self._w = self._r = None
        self.max_packet = max_packet
        self._mv = memoryview(bytearray(HEAD))
        self._tx = self._rx = 0

    async def run(self):
        lo, hi = self.delays
        delay = lo
        while not self._stop:
            try:
                if self._network:
                    await self._network()
                await self._connect()
                delay = lo
                rt = asyncio.create_task(self._reader())
                kt = asyncio.create_task(self._pinger())
                self.up = True
                self._upev.set()
                again, self._again = self._again, []
                for a in again:  # QoS 1 messages the lost link left unacknowledged: again, DUP
                    await self._post(a)
                again = a = None  # (this frame lives as long as the link: it keeps no message)
                if self.on_up:
                    asyncio.create_task(self._call_up())
                await self._gone.wait()
                rt.cancel()
                kt.cancel()
            except Exception as e:  # OSError, MQTTError, TimeoutError: all mean "try again"
                self.error = repr(e)
            if not self._stop:
                self._log("mqtt: %s; retry in %d ms" % (self.error, delay))
            self.up = False
            self._upev.clear()
            await self._close()
            for a in self._acks.values():  # lost with the link: a PUBLISH is sent again, or given up
                self._lost(a)
            self._acks = {}
            if self._stop:
                return
            await asyncio.sleep_ms(delay + (time.ticks_ms() & 511))
            delay = min(delay * 2, hi)

    async def _close(self):
        # the socket of the lost link: close() alone leaves it open on MicroPython, and lwIP has
        # a handful of sockets (a board that leaks one per outage dies after a few)
        w = self._w
        self._w = self._r = None
        if w is not None:
            try:
                w.close()
                await asyncio.wait_for_ms(w.wait_closed(), 1000)
            except Exception:
                pass

    async def _connect(self):
        from . import connect  # once per connection: unloaded again (edgemcp/connect.py)
        try:
            await connect.mqtt(self)
        finally:
            connect.done()

    async def _call_up(self):
        try:
            await self.on_up()
        except Exception as e:
            self._fail("on_up: %r" % e)

    def _fail(self, why):
        if not self._gone.is_set():
            self.error = why
            self._gone.set()
            self._upev.clear()  # senders wait for the next link, never retry on this one

    async def _pinger(self):
        # keepalive (PINGREQ when idle, a silent broker is a lost link) and the deadline of
        # every acknowledgement awaited (a missing PUBACK/SUBACK is a lost link too)
        ka = self.keepalive * 1000
        while True:
            await asyncio.sleep_ms(min(ka // 4, 2000) if ka else 2000)
            if self._link_up and not self._link_up():  # as mqtt_as: Wi-Fi gone, do not wait for keepalive
                return self._fail("network down")
            now = time.ticks_ms()
            for a in self._acks.values():
                if time.ticks_diff(now, a[2]) > self.timeout:
                    return self._fail("no acknowledgement from the broker")
            a = None  # (not kept alive through the sleep once acknowledged)
            if not ka:
                continue
            if time.ticks_diff(now, self._rx) > ka * 3 // 2:
                return self._fail("keepalive: the broker is silent")
            if time.ticks_diff(now, self._tx) >= ka // 2:
                try:
                    await self._send(m.PINGREQ_PACKET)
                except Exception as e:
                    return self._fail(repr(e))

    async def _send(self, head, payload=None):
        async with self._lock:  # packets from several tasks never interleave
            w = self._w
            if w is None:
                raise OSError("not connected")
            w.write(head)  # a MemoryError here (Stream.write allocates): none of it is out
            try:
                if payload:
                    w.write(payload)
                self._tx = time.ticks_ms()
                # A stalled socket never holds the lock (and every sender) longer than the timeout.
                # MicroPython's drain only yields when the socket took every byte (out_buf empty).
                d = w.drain()
                await (asyncio.wait_for_ms(d, self.timeout) if getattr(w, "out_buf", 1) else d)
            except MemoryError:  # half a packet is out: the link is lost
                raise OSError("out of memory mid-packet")

    async def _fill(self, mv):
        i = 0
        while i < len(mv):
            k = await self._r.readinto(mv[i:])
            if k is None:  # TLS: readable, but mbedTLS wants the rest of the record (WANT_READ)
                continue
            if not k:
                raise OSError("closed by the broker")
            i += k

    async def _read_packet(self):
        # the fixed header (type/flags byte, remaining length), then the body into the
        # preallocated buffer or one of its own size: (first byte, body), body None when skipped
        mv = self._mv
        await self._fill(mv[:2])  # every packet has at least two bytes
        first = mv[0]
        n = mv[1] & 0x7F
        shift = 0
        while mv[0 if shift else 1] > 0x7F:
            shift += 7
            if shift > 21:
                raise m.MQTTError("remaining length")
            await self._fill(mv[:1])
            n |= (mv[0] & 0x7F) << shift
        self._rx = time.ticks_ms()
        skip = n > self.max_packet
        if skip:
            self.too_big += 1
        elif n > len(mv):
            try:
                mv = memoryview(bytearray(n))
            except MemoryError:  # no room for it: lost, not the link
                self.drops += 1
                skip = True
        if skip:
            k = min(n, len(mv))
            await self._fill(mv[:k])  # the topic and packet id are in this first piece
            pid = m.publish_pid(first & 15, mv[:k]) if first >> 4 == m.PUBLISH else 0
            n -= k
            while n:
                k = min(n, len(mv))
                await self._fill(mv[:k])
                n -= k
            await self._ack((0, 0, 0, pid, self.connects))  # QoS 1: taken (and dropped)
            return first, None
        await self._fill(mv[:n])
        return first, mv[:n]

    async def _reader(self):
        try:
            while True:
                first, body = await self._read_packet()
                t = first >> 4
                if body is None:
                    continue
                if t == m.PUBLISH:
                    try:
                        topic, qos, retain, pid, props, i = m.dec_publish(first & 15, body)
                    except MemoryError:  # no room for its topic or properties: lost, not the link
                        self.drops += 1
                        await self._ack((0, 0, 0, m.publish_pid(first & 15, body), self.connects))
                        continue
                    payload = body[i:]
                    body = None  # (a packet longer than HEAD: its own buffer, garbage once copied)
                    q = self._q
                    if q and topic == q[-1][0] and props == q[-1][2]:  # a burst of one client: kept once
                        topic, props = q[-1][0], q[-1][2]
                    self.received += 1
                    pid = pid if qos else 0
                    if retain:  # a planted retained request would replay at every (re)connect
                        self.retained += 1
                        payload = None
                        await self._ack((0, 0, 0, pid, self.connects))
                        continue
                    if len(self._q) >= self._qlen:
                        await self._ack(self._q.pop(0))
                        self.drops += 1
                    try:
                        self._q.append((topic, bytes(payload), props, pid, self.connects))
                    except MemoryError:  # no room for this message: it is lost, not the link
                        self.drops += 1
                        await self._ack((0, 0, 0, pid, self.connects))
                    payload = None
                    self._qev.set()
                elif t in (m.PUBACK, m.SUBACK, m.UNSUBACK):
                    pid, codes = m.dec_ack(t, body)
                    a = self._acks.pop(pid, None)
                    if a:
                        a[1] = codes
                        if a[0]:
                            a[0].set()
                    a = None  # (this frame waits for the next packet: it keeps no message alive)
                elif t == m.DISCONNECT:
                    raise OSError("DISCONNECT from the broker: %d" % (body[0] if body else 0))
        except Exception as e:  # PINGRESP and others: _read_packet noted the time
            self._fail(repr(e))

    async def _acked(self, build):
        # a SUBSCRIBE/UNSUBSCRIBE, ``build(packet id)``, sent; then its acknowledgement's reason
        # codes, or None when the link failed meanwhile (_pinger fails the link when an
        # acknowledgement is overdue). Its slot: [event, reason codes, ticks when sent]
        pid = self._pid = self._pid % 65535 + 1
        a = self._acks[pid] = [asyncio.Event(), None, time.ticks_ms()]
        try:
            await self._send(build(pid))
        except Exception as e:
            self._acks.pop(pid, None)
            self._fail(repr(e))
            return None
        await a[0].wait()
        return a[1]

    async def _ack(self, item):
        # PUBACK a QoS 1 message (topic, payload, props, packet id, link), on its own link only
        if item[3] and item[4] == self.connects and self.up:
            try:
                await self._send(m.puback(item[3]))
            except Exception as e:
                self._fail(repr(e))

    async def get(self):
        """The next received message ``(topic, payload, props)``, oldest first; a QoS 1
        message is acknowledged now (the broker then sends the next one)."""
        while True:
            while not self._q:
                self._qev.clear()
                await self._qev.wait()
            item = self._q.pop(0)
            if item[3] and item[4] != self.connects and self.connect_args.get("expiry"):
                continue  # from a lost link: the broker sends it again on this one
            await self._ack(item)
            return item[0], item[1], item[2]

    async def publish(self, topic, payload, retain=False, qos=None, wait=True):
        """Publish. At QoS 1 the message is kept until its PUBACK and sent again (DUP) after a
        lost link, up to 3 times. ``wait``: return once the broker has it (True) or the third
        link was lost (False); else once it is written (answers, notifications: their sender
        goes on, and the heap holds only the message; with ``2 * queue_len`` unacknowledged it
        waits anyway). QoS 0: sent on the next link up to 3 times."""
        qos = self.qos if qos is None else qos
        if not qos:
            for i in range(3):
                await self._upev.wait()
                try:
                    await self._send(m.publish_header(topic, len(payload), 0, retain, 0, self._pprops), payload)
                    return True
                except MemoryError:  # none of it written: this message is lost, not the link
                    self.drops += 1
                    return False
                except Exception as e:
                    self._fail(repr(e))
            return False
        await self._upev.wait()
        # the slot: [event or None, reason codes, ticks sent, topic, payload, retain, times sent]
        a = [asyncio.Event() if wait or len(self._acks) >= 2 * self._qlen else None, None, 0, topic, payload,
             retain, 0]
        await self._post(a)
        if not a[0]:
            return True
        await a[0].wait()
        return a[1] is not None and a[1][0] < 0x80

    async def _post(self, a):
        # send the PUBLISH of slot ``a`` under a new packet id (DUP after the first time)
        pid = self._pid = self._pid % 65535 + 1
        a[2] = time.ticks_ms()
        a[6] += 1
        self._acks[pid] = a
        try:
            await self._send(m.publish_header(a[3], len(a[4]), 1, a[5], pid, self._pprops, a[6] > 1), a[4])
        except MemoryError:  # none of it written: this message is lost (counted), not the link
            self._acks.pop(pid, None)
            self.drops += 1
            a[1] = None
            if a[0]:
                a[0].set()
        except Exception as e:
            self._acks.pop(pid, None)
            self._lost(a)
            self._fail(repr(e))

    def _lost(self, a):
        # slot ``a`` lost with its link: a PUBLISH sent fewer than 3 times is sent again on the
        # next one; else (and a SUBSCRIBE's) its waiter wakes to None
        if len(a) > 3 and a[6] < 3:
            self._again.append(a)
        else:
            a[1] = None
            if a[0]:
                a[0].set()

    async def subscribe(self, topics):
        """Subscribe to ``[(filter, no_local)]`` at the client's QoS with Retain Handling 2 (no
        retained messages: the board subscribes only to requests, and a retained one is dropped
        and counted in ``retained`` if a broker sends it anyway); the SUBACK's reason codes
        (< 0x80: granted), or None when the link failed meanwhile."""
        await self._upev.wait()
        return await self._acked(lambda pid: m.subscribe(pid, [(t, self.qos | m.NO_RETAINED | (m.NO_LOCAL if nl else 0))
                                                               for t, nl in topics]))

    async def unsubscribe(self, topics):
        if self.up:
            return await self._acked(lambda pid: m.unsubscribe(pid, topics))

    async def disconnect(self):
        """Clean DISCONNECT (the broker discards the will); ``run()`` then returns."""
        self._stop = True
        try:
            await self._send(m.DISCONNECT_PACKET)
        except Exception:
            pass
        self._fail("disconnected")
