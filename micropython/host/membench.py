# Heap use of edgemcp under MicroPython, measured with gc.mem_alloc(): run by
# bench/mp_memory.py inside the WebAssembly port (board.mjs --exec). The board's MQTT broker
# is played by an in-memory stream (no JavaScript I/O in the measured window): it answers
# CONNECT, SUBSCRIBE and QoS 1 PUBLISH and feeds the client the packets a cloud client sends.
#
# Two figures per operation, both on top of what was live before it:
# - "live peak": gc.collect() + gc.mem_alloc() at every packet the client writes or reads while
#   the operation runs (the fake broker samples inside write() and readinto(), so the request,
#   the reply and its encoding are all live then); the maximum is the heap the operation
#   holds at once.
# - "allocated": gc disabled from a gc.collect() before it until its last reply is written,
#   so mem_alloc() counts every byte allocated in between, garbage included: an upper bound
#   (part of it is the WebAssembly port's own asyncio, which awaits JavaScript timers).
import asyncio
import gc
import json

ROWS = []


async def settled():
    # the heap in use: gc.collect() from a shallow stack (after a return to the event loop),
    # since the port scans its C stack conservatively and deep frames keep stale pointers
    await asyncio.sleep_ms(5)
    gc.collect()
    return gc.mem_alloc()


def row(what, value, note="", extra=None):
    ROWS.append((what, value, note, extra))


class FakeBroker:
    """An in-memory stream pair standing in for the TCP link to a broker. It allocates
    nothing while it runs (byte loops over preallocated buffers), as a board's socket
    allocates nothing on the MicroPython heap, so the figures are the library's alone."""

    def __init__(self):
        self.inbox = bytearray(4096)  # bytes for the client to read: inbox[r:n]
        self.r = self.n = 0
        self.ev = asyncio.Event()
        self.out = bytearray(4096)  # what the client wrote, not yet a whole packet
        self.m = 0
        self.ack = bytearray(b"\x90\x04\x00\x00\x00\x01")  # SUBACK (QoS 1 granted) / PUBACK
        self.sent = 0  # PUBLISHes from the client
        self.want = 0
        self.done = asyncio.Event()  # set when sent reaches want
        self.sample = False
        self.peak = 0
        self.out_buf = b""  # as MicroPython's Stream after a write the socket took whole
        # the client's Receive Maximum: QoS 1 PUBLISHes sent and not yet acknowledged, and the
        # ones the broker holds back meanwhile (a preallocated ring)
        self.rmax = 65535
        self.inflight = 0
        self.held = [None] * 64
        self.hh = self.ht = 0

    def deliver(self, packet):
        """Send the client a QoS 1 PUBLISH, or hold it while ``rmax`` are unacknowledged."""
        if self.inflight < self.rmax:
            self.inflight += 1
            self.feed(packet)
        else:
            self.held[self.ht % 64] = packet
            self.ht += 1

    def _sample(self):
        if self.sample:
            gc.collect()
            self.peak = max(self.peak, gc.mem_alloc())

    def feed(self, data, k=None):
        k = len(data) if k is None else k
        if self.r == self.n:
            self.r = self.n = 0
        for j in range(k):
            self.inbox[self.n + j] = data[j]
        self.n += k
        self.ev.set()

    async def readinto(self, buf):
        self._sample()
        while self.r == self.n:
            self.ev.clear()
            await self.ev.wait()
        k = min(len(buf), self.n - self.r)
        for j in range(k):
            buf[j] = self.inbox[self.r + j]
        self.r += k
        return k

    def write(self, buf):
        self._sample()
        o = self.out
        for j in range(len(buf)):
            o[self.m + j] = buf[j]
        self.m += len(buf)
        while self.m >= 2:
            n, i, shift = 0, 1, 0
            while True:
                b = o[i]
                n |= (b & 0x7F) << shift
                i += 1
                if not b & 0x80:
                    break
                shift += 7
            end = i + n
            if end > self.m:
                return
            self._packet(o[0], i)
            for j in range(self.m - end):
                o[j] = o[end + j]
            self.m -= end

    def _packet(self, first, i):
        t = first >> 4
        o = self.out
        a = self.ack
        if t == 1:  # CONNECT
            a[0], a[1], a[2], a[3], a[4] = 0x20, 3, 0, 0, 0
            self.feed(a, 5)
        elif t == 8:  # SUBSCRIBE: grant QoS 1 (one code is enough for the client)
            a[0], a[1], a[2], a[3], a[4], a[5] = 0x90, 4, o[i], o[i + 1], 0, 1
            self.feed(a, 6)
        elif t == 3:
            self.sent += 1
            if first & 6:  # QoS 1: PUBACK
                j = i + 2 + ((o[i] << 8) | o[i + 1])
                a[0], a[1], a[2], a[3] = 0x40, 2, o[j], o[j + 1]
                self.feed(a, 4)
            if self.sent >= self.want:
                self.done.set()
        elif t == 4:  # the client's PUBACK: the next held message may go
            self.inflight = max(0, self.inflight - 1)
            if self.hh < self.ht:
                p = self.held[self.hh % 64]
                self.held[self.hh % 64] = None
                self.hh += 1
                self.deliver(p)

    async def drain(self):
        pass

    def close(self):
        pass


async def main():
    fb = FakeBroker()
    fb.want = 1
    a0 = await settled()
    row("interpreter + asyncio + this benchmark (before edgemcp)", a0, "not counted below")
    from edgemcp import hw
    from edgemcp import link as _link  # noqa: F401 (what a board with MQTT over Wi-Fi imports)
    from edgemcp import net as _net  # noqa: F401
    from edgemcp.device import Device
    imports = await settled() - a0
    row("import edgemcp (device, mcp, link, mqtt, mqtt5, net, hw)", imports, "bytecode in RAM (.mpy)")
    from edgemcp import mqtt5 as m

    async def opener(h, p):
        return fb, fb

    a1 = await settled()
    app = Device(server_name="devices/bench/esp32", server_id="bench-1", broker="fake", log=False)
    hw.servo(app, "vent", 13, "roof vent servo")
    hw.adc(app, "soil_temp", 34, unit="°C", scale=330 / 65535, offset=-50, digits=1, description="soil temperature")
    hw.digital_out(app, "pump", 26, "irrigation pump relay")

    row("Device + 3 hw helpers (3 tools, 4 resources + device://health)", await settled() - a1, "")

    # what Device.main() does for MQTT, without its poll loop (the port's asyncio keeps a few
    # bytes per timer it ran, which a long-running loop would add to every figure)
    from edgemcp.link import MqttLink
    lk = MqttLink(app.server, "bench-1", "devices/bench/esp32", "fake", description="bench",
                  meta={"version": "0.1.0", "implementation": "edgemcp"}, opener=opener,
                  max_packet=app.cfg["max_packet"])
    app.links.append(lk)
    asyncio.create_task(lk.run())
    await fb.done.wait()  # connected, subscribed, online
    for r in app.server.resources.values():  # the first poll: the values subscribers compare with
        await app.server.poll(r)
    steady = await settled() - a0
    row("online, idle: imports + app + MQTT link + tasks", steady,
        "incl. the %d B MQTT input buffer" % app.cfg["max_packet"])

    cid = "bench-client"
    ctl = lk.control
    rpc = lk.rpc(cid)
    user = [("MCP-COMPONENT-TYPE", "mcp-client"), ("MCP-MQTT-CLIENT-ID", cid)]

    def pkt(topic, msg):
        return m.publish_header(topic, len(msg), 1, False, 7, m.properties(user)) + msg

    init = pkt(ctl, json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "mcp", "version": "1.0"}}}).encode())
    initialized = pkt(rpc, b'{"jsonrpc":"2.0","method":"notifications/initialized"}')
    tools = pkt(rpc, b'{"jsonrpc":"2.0","id":2,"method":"tools/list"}')
    sub = pkt(rpc, b'{"jsonrpc":"2.0","id":3,"method":"resources/subscribe","params":{"uri":"sensor://vent/angle"}}')
    call = [pkt(rpc, b'{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"vent_set_angle","arguments":{"angle":%d}}}'
                % (i, a)) for i, a in ((4, 30), (6, -30))]  # two moves: each must send an update; two ids (the
    # board answers a repeated id of a changing tool from its ring of answers, without running it)
    read = pkt(rpc, b'{"jsonrpc":"2.0","id":5,"method":"resources/read","params":{"uri":"sensor://soil_temp/value"}}')

    async def measure(what, packet, replies, note=""):
        packets = packet if isinstance(packet, list) else [packet, packet]
        # live peak, sampled at each packet
        before = await settled()
        fb.want = fb.sent + replies
        fb.done.clear()
        fb.peak = before
        fb.sample = True
        fb.feed(packets[0])
        await fb.done.wait()
        fb.sample = False
        live = fb.peak - before
        # everything allocated, gc off
        before = await settled()
        fb.want = fb.sent + replies
        fb.done.clear()
        gc.disable()
        fb.feed(packets[1])
        await fb.done.wait()
        allocated = gc.mem_alloc() - before
        gc.enable()
        after = await settled() - before
        row(what, allocated, note, (live, after))
        return allocated

    worst = 0
    worst = max(worst, await measure("initialize (subscribes 3 topics, answers)", init, 1))
    fb.deliver(initialized)
    worst = max(worst, await measure("tools/list (3 tools)", tools, 1))
    worst = max(worst, await measure("resources/subscribe", sub, 1))
    worst = max(worst, await measure("tools/call + notifications/resources/updated", call, 2,
                                     "reply + the servo angle's update"))
    worst = max(worst, await measure("resources/read", read, 1))
    row("PEAK: online idle + worst operation (allocated)", steady + worst, "budget 76 KB (bench/mp_memory.py)")
    print("MEMJSON " + json.dumps(ROWS))


if globals().get("MODE") != "fixed":  # membench_fixed.py, appended, runs instead
    asyncio.run(main())
