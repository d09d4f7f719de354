# The board's I/O under the MicroPython WebAssembly port (tests and benchmarks on a host):
# byte streams from Node (micropython/host/board.mjs) wrapped into the stream interface the
# library uses on a board, and asyncio.open_connection / asyncio.run supplied where the port
# lacks them. Nothing here is copied to a board.
import asyncio

import host
import js


class Stream:
    """A JavaScript ByteStream as MicroPython's asyncio Stream (reader and writer in one).
    ``esp32`` (board.mjs ``--esp32 1``, on with ``--world``): reads return 1..66 bytes at a
    time, as lwIP's segments arrive on a board, and with ``tls`` now and then None (a TLS
    record not complete yet: mbedTLS's WANT_READ); ``error``: the connection failed (refused), reported by the
    first write or read, as on the ESP32 port (its open_connection does not wait for it)."""

    def __init__(self, j, esp32=False, error=None, tls=False):
        self.j = j
        self.piece = 1 if esp32 else 0
        self.error = error
        self.tls = tls

    async def readinto(self, buf):
        if self.error:
            raise OSError(self.error)
        n = len(buf)
        if self.piece:
            self.piece = self.piece * 5 % 67  # 1..66, changing each time
            if self.tls and self.piece % 4 == 0:
                await asyncio.sleep_ms(0)
                return None  # MBEDTLS_ERR_SSL_WANT_READ: Stream.readinto hands None back
            n = min(n, self.piece)
        d = await self.j.read(n)
        n = d.length
        if n:
            buf[:n] = bytes(d)
        return n

    async def read(self, n=4096):
        return bytes(await self.j.read(n))

    async def readline(self):
        return bytes(await self.j.readline())

    def write(self, buf):
        if self.error:
            raise OSError(self.error)
        self.j.write(js.Uint8Array.new(buf))

    async def drain(self):
        await self.j.drain()

    def close(self):
        # What MicroPython's asyncio Stream.close() does (extmod/asyncio/stream.py, 1.27): nothing.
        # Only wait_closed() closes the socket; code that forgets it leaks one per connection.
        pass

    async def wait_closed(self):
        self.j.close()


async def open_connection(hostname, port, ssl=None, server_hostname=None):
    """asyncio.open_connection as on a board; with ``ssl`` (an ``ssl.SSLContext``, see
    micropython/host/ssl.py) a TLS stream from Node that verifies the server against the
    context's CA and ``server_hostname`` (default ``hostname``), and, as mbedTLS does, the
    certificate's dates against the board's clock (2000-01-01 after a cold boot)."""
    if ssl:
        if ssl.verify_mode and not ssl.cadata:
            raise OSError("MBEDTLS_ERR_X509_CERT_VERIFY_FAILED: no CA loaded")  # as mbedTLS refuses
        j = host.tls_open(hostname, port, server_hostname or hostname,
                          ssl.cadata.decode() if ssl.cadata else "", ssl.verify_mode)
    else:
        j = host.tcp_open(hostname, port)  # counted in host.sockets_open() from here on
    error = None
    try:  # stands in for edgemcp.connect.open_connection here: closes its socket on any failure
        try:
            await j.ready
        except Exception:
            if ssl or not host.esp32:
                raise
            error = 104  # ECONNRESET: lwIP's word for a refused connection, on the first write
        if ssl and ssl.verify_mode == 2:  # mbedTLS checks the dates against the board's clock
            import time  # the board's (rtc.py after a cold boot)
            v = j.validity(time.time())  # Unix s
            if v:
                raise OSError("MBEDTLS_ERR_X509_CERT_VERIFY_FAILED: certificate %s (board clock: %d)" % (
                    "expired" if v > 0 else "not yet valid", time.gmtime()[0]))
    except BaseException:
        j.close()
        raise
    s = Stream(j, host.esp32, error, bool(ssl))
    return s, s


def serial(fd=None):
    """The board's serial line: a stream pair over the inherited file descriptor ``fd``
    (default: board.mjs's ``--serial-fd``)."""
    s = Stream(host.fd_open(host.serial_fd if fd is None else fd))
    return s, s


_tasks = []


def install():
    asyncio.open_connection = open_connection
    if '"cold"' in host.world():  # --world: the board's RTC after a cold boot, 2000-01-01
        import sys

        import rtc
        sys.modules["time"] = rtc
    asyncio.run = lambda coro: _tasks.append(asyncio.create_task(coro))


async def wait():
    for t in _tasks:
        await t


async def stop():
    from edgemcp.device import Device
    dev = getattr(Device, "running", None)
    if dev is not None:  # in a task: asyncio.wait_for cannot wake the port's top-level coroutine
        await asyncio.create_task(dev.stop())
