# MCP over a serial line: newline-delimited JSON-RPC, MCP's stdio framing (one message per
# line, UTF-8, no embedded newlines). Source: MCP specification 2025-11-25, basic/transports
# "stdio". One session per serial line; a new ``initialize`` re-initializes it (a Pi that restarted).
import asyncio

from . import mcp
from .core import binding

SESSION = "serial"


class SerialLink:
    """Serves ``server`` on a stream pair: ``await reader.readline()``, ``writer.write(b)``,
    ``await writer.drain()``. Lines that are not JSON get a -32700 answer, as on MQTT."""

    def __init__(self, server, reader, writer):
        self.server = server
        self.r = reader
        self.w = writer
        self._lock = asyncio.Lock()
        self.timeout = 10000  # ms for each message to drain

    async def send(self, sid, msg):
        """Write one message. Raises TimeoutError when the line has not taken it in ``timeout``
        ms (native USB with no host reading): what is still buffered is dropped, not kept on
        the heap, and the lock is free again."""
        data = mcp.encode(msg)
        async with self._lock:
            self.w.write(data)
            self.w.write(b"\n")
            try:
                await asyncio.wait_for_ms(self.w.drain(), self.timeout)
            except asyncio.TimeoutError:
                self.w.out_buf = b""  # MicroPython's Stream keeps unsent bytes there
                raise

    async def broadcast(self, msg):
        await self.send(SESSION, msg)

    async def run(self):
        """Serve until the stream ends (b"" from readline)."""
        s = self.server.open_session(SESSION, self)
        while True:
            line = await self.r.readline()
            if not line:
                self.server.close_session(SESSION)
                return
            line = line.strip()
            if not line:
                continue
            if line.startswith(b"\x03") or line.startswith(b"\x04"):
                continue  # stray REPL control characters
            try:
                if binding.DISCONNECTED_METHOD.encode() in line and binding.client_gone(line):
                    s = self.server.open_session(SESSION, self)  # the host left: start afresh
                    continue
                await self.server.handle(s, line)
            except Exception as e:
                self.server.log("serial: %r" % e)


def usb():
    """The USB/REPL console as a stream pair (``sys.stdin``/``sys.stdout``): on a board, the
    same cable ``mpremote`` uses. Logging must be off then (print would corrupt the stream),
    and Ctrl-C too (``kbd_intr(-1)``: a 0x03 byte in the stream must not stop the board)."""
    import sys

    import micropython
    micropython.kbd_intr(-1)
    i = getattr(sys.stdin, "buffer", sys.stdin)
    o = getattr(sys.stdout, "buffer", sys.stdout)
    return asyncio.StreamReader(i), asyncio.StreamWriter(o, {})


def uart(uart_id, baudrate=115200, tx=None, rx=None):
    """A hardware UART (``machine.UART``) as a stream pair, e.g. to a Pi's GPIO 14/15."""
    from machine import UART
    kw = {"baudrate": baudrate}
    if tx is not None:
        kw["tx"] = tx
        kw["rx"] = rx
    u = UART(uart_id, **kw)
    return asyncio.StreamReader(u), asyncio.StreamWriter(u, {})
