# The fixed-heap, real-GC run of the example device (bench/mp_memory.py --fixed): appended to
# membench.py (its FakeBroker and settled()) with MODE = "fixed" set first, and run in a heap that
# cannot grow (board.mjs --heap N --fixed-heap 1, or the 32-bit unix port's -X heapsize=N).
# ruff: noqa: F821 (FakeBroker, settled: from membench.py)
import asyncio
import json


async def online(fb):
    """The example device (docs/esp32.md) online on ``fb``: (app, link, figures so far)."""
    import machine  # noqa: F401 (built into a board's firmware: not the library's heap)
    a0 = await settled()
    from edgemcp import hw
    from edgemcp.device import Device
    from edgemcp.link import MqttLink
    imports = await settled() - a0

    async def opener(h, p):
        return fb, fb

    app = Device(server_name="devices/bench/esp32", server_id="bench-1", broker="fake", log=False)
    hw.servo(app, "vent", 13, "roof vent servo")
    hw.pwm(app, "fan", 14, "circulation fan")
    hw.digital_out(app, "pump", 26, "irrigation pump relay")
    hw.adc(app, "soil_temp", 34, unit="°C", scale=330 / 65535, offset=-50, digits=1, description="soil temperature")
    hw.digital_out(app, "status_led", 2, "on-board LED")
    lk = MqttLink(app.server, "bench-1", "devices/bench/esp32", "fake", description="bench",
                  meta={"version": "0.1.0", "implementation": "edgemcp"}, opener=opener,
                  max_packet=app.cfg["max_packet"])
    app.links.append(lk)
    fb.want = 1
    asyncio.create_task(lk.run())
    await asyncio.wait_for_ms(fb.done.wait(), 5000)
    for r in app.server.resources.values():
        await app.server.poll(r)
    return app, lk, {"baseline": a0, "imports": imports, "idle": await settled() - a0}


async def fixed():
    """With a real GC (never disabled), in whatever heap the interpreter was given: the live
    heap above the baseline (interpreter + asyncio + this benchmark) when idle, its peak over
    the session's operations (sampled after a collection at every packet in and out), and its
    peak during a burst of 20 tools/call sent at once. Prints FIXEDJSON {...}; a MemoryError
    anywhere fails the run (exit status 1), which is what the smallest-heap search looks for."""
    fb = FakeBroker()
    failed = []

    def fail(loop, context):  # a task died (MemoryError): the run fails now, not at a timeout
        failed.append(repr(context.get("exception")))
        fb.done.set()

    asyncio.get_event_loop().set_exception_handler(fail)
    app, lk, out = await online(fb)
    from edgemcp import mqtt5 as m  # (the board's own: imported only now, so the baseline does not hold it)
    app.server.log = failed.append  # "no memory to answer", "dropped a message": a failed run too
    fb.rmax = app.cfg["queue_len"]  # what the board's CONNECT says (Receive Maximum)
    a0 = out["baseline"]
    h0 = await settled()
    cid = "bench-client"
    rpc = lk.rpc(cid)
    props = m.properties([("MCP-COMPONENT-TYPE", "mcp-client"), ("MCP-MQTT-CLIENT-ID", cid)])

    def pkt(topic, msg, pid=7):
        return m.publish_header(topic, len(msg), 1, False, pid, props) + msg

    async def run(packets, replies):
        # ``packets``: the broker's, not the board's heap (its copy goes through FakeBroker's
        # preallocated inbox): what they hold, like the helpers of this benchmark (``own``), is
        # taken off the figures
        size = await settled() - h1
        fb.want = fb.sent + replies
        fb.done.clear()
        fb.peak = 0
        fb.sample = True
        for p in packets:
            fb.deliver(p)
        try:
            await asyncio.wait_for_ms(fb.done.wait(), 5000)
        finally:
            fb.sample = False
        if failed or lk.c.drops:
            raise MemoryError("failed: %r, %d dropped" % (failed, lk.c.drops))
        return fb.peak - a0 - size - own

    ops = [lambda: ([pkt(lk.control, b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":'
                 b'"2025-11-25","capabilities":{},"clientInfo":{"name":"mcp","version":"1.0"}}}')], 1),
           lambda: ([pkt(rpc, b'{"jsonrpc":"2.0","method":"notifications/initialized"}'),
             pkt(rpc, b'{"jsonrpc":"2.0","id":2,"method":"tools/list"}')], 1),
           lambda: ([pkt(rpc, b'{"jsonrpc":"2.0","id":3,"method":"resources/subscribe","params":{"uri":"sensor://vent/angle"}}')], 1),
           lambda: ([pkt(rpc, b'{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"vent_set_angle",'
                 b'"arguments":{"angle":30}}}')], 2),
           lambda: ([pkt(rpc, b'{"jsonrpc":"2.0","id":5,"method":"resources/read","params":{"uri":"sensor://soil_temp/value"}}')], 1),
           lambda: ([pkt(rpc, b'{"jsonrpc":"2.0","id":6,"method":"resources/read","params":{"uri":"device://health"}}')], 1)]
    own = await settled() - h0  # this benchmark's helpers (rpc, props, pkt, run, ops), not the board's
    peak = 0
    for op in ops:
        h1 = await settled()
        peak = max(peak, await run(*op()))
    out["peak"] = peak
    # 20 calls at once (the in-flight bound answers the excess -32004 at once): every one answered
    h1 = await settled()
    burst = [pkt(rpc, b'{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"pump_set",'
                 b'"arguments":{"on":%s}}}' % (100 + i, b"true" if i % 2 else b"false"), 100 + i) for i in range(20)]
    out["burst"] = await run(burst, 20)
    burst = None
    out["left"] = await settled() - a0 - own
    print("FIXEDJSON " + json.dumps(out))


asyncio.run(fixed())
