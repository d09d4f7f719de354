# The declarative API of a board's main.py:
#
#     from edgemcp import Device
#     app = Device(server_name="devices/greenhouse/esp32-01", description="Vent and soil probe")
#
#     @app.tool("set_angle", "Turn the vent servo", params={"angle": ("number", -90, 90, "°")},
#               destructive=True)
#     def set_angle(angle):
#         servo.angle(angle)
#
#     app.resource("sensor://soil/temperature", "soil temperature", "°C", probe.read, poll=5)
#     app.run()
import asyncio
import gc
import time


class Device:
    """One MCP server on the board. ``options`` are config keys (see ``config.DEFAULTS``);
    the board's ``site_config`` overrides them (Wi-Fi and broker secrets live there).

    Raises ValueError for a bad or missing ``server_name`` or an unknown option."""

    def __init__(self, server_name=None, description=None, **options):
        if server_name:
            options["server_name"] = server_name
        if description:
            options["description"] = description
        from . import start  # code that runs once: it unloads itself, the GC takes it back
        start.device(self, options)
        self.links = []
        self._t0 = time.ticks_ms()
        self.resource("device://health", "health", "", self.health, poll=0,
                      description="Board health: uptime, heap, sessions, MQTT counters (drops: messages lost)")

    def log(self, text):
        if self.cfg["log"]:
            print(text)

    def tool(self, name=None, description="", params=None, destructive=False, idempotent=False,
             read_only=False, title=None, updates=None):
        """Decorator declaring an MCP tool. ``params``: ``{"arg": (type, min, max, unit,
        description, default)}`` with type ``number``/``integer``/``boolean``/``string``;
        arguments are checked (type, range, unknown, missing) before the function runs and a
        violation is an ``isError`` result naming the argument and the bound. ``updates``:
        the URIs of the resources the tool changes, re-read right after each call (default:
        every polled resource), so subscribers hear of the change at once."""
        def deco(fn):
            from .mcp import DESTRUCTIVE, IDEMPOTENT, READ_ONLY
            ann = (READ_ONLY if read_only else 0) | (DESTRUCTIVE if destructive else 0) | (IDEMPOTENT if idempotent else 0)
            self.server.add_tool(name or fn.__name__, description, params, fn, ann, title, updates)
            return fn
        return deco

    def resource(self, uri, name, unit, read, poll=5, description="", deadband=0):
        """Declare a reading: ``read()`` (may be ``async``) returns a number, bool, str or
        flat dict. ``poll``: seconds between reads (0: only on demand); a change beyond
        ``deadband`` (in ``unit``) sends ``notifications/resources/updated`` to subscribers."""
        return self.server.add_resource(uri, name, unit, read, poll, description, deadband)

    def health(self):
        """``device://health``: uptime (s), heap (bytes), sessions, MQTT link counters; on an
        ESP32 ``idf_largest_free`` (bytes): the largest free block of the ESP-IDF heap, which a
        TLS handshake needs 20-40 KB of and MicroPython's own heap grows into."""
        h = {"status": "ok", "uptime_s": time.ticks_diff(time.ticks_ms(), self._t0) // 1000,
             "mem_free": gc.mem_free(), "mem_alloc": gc.mem_alloc(), "sessions": len(self.server.sessions)}
        try:
            import esp32
            h["idf_largest_free"] = max(r[2] for r in esp32.idf_heap_info(esp32.HEAP_DATA))
        except ImportError:  # not an ESP32
            pass
        for link in self.links:
            c = getattr(link, "c", None)
            if c is not None:
                h["mqtt"] = {"connected": c.up, "connects": c.connects, "received": c.received, "drops": c.drops,
                             "too_big": c.too_big, "retained_dropped": c.retained, "error": c.error}
                if not c.up:
                    h["status"] = "degraded"
        return h

    def run(self):
        """Serve forever (the last line of main.py)."""
        asyncio.run(self.main())

    async def main(self):
        Device.running = self
        from . import start  # imported again, and unloaded once the links run
        start.links(self)
        gc.collect()
        await self._poll()

    async def _poll(self):
        server = self.server
        while True:
            now = time.ticks_ms()
            wait = 1000
            for r in server.resources.values():
                if not r.poll:
                    continue
                left = time.ticks_diff(r.due, now)
                if left <= 0:
                    await server.poll(r)
                    r.due = time.ticks_add(time.ticks_ms(), int(r.poll * 1000))
                    left = int(r.poll * 1000)
                wait = min(wait, left)
            await asyncio.sleep_ms(max(wait, 10))

    def _refresh(self, tool):
        # after a tool call: re-read what it changed now, so a read-back and the subscribers
        # see the actuator's new state without waiting for the next poll
        t = self.server.tools.get(tool)
        asyncio.create_task(self._refresh_all(t[5] if t else None))

    async def _refresh_all(self, uris):
        for r in self.server.resources.values():
            if r.poll and (uris is None or r.uri in uris):
                await self.server.poll(r)

    async def stop(self):
        """Clean stop: clients told, retained presence cleared, DISCONNECT."""
        for link in self.links:
            if hasattr(link, "stop"):
                await link.stop()
