# The board's clock by NTP (micropython-lib ntptime, in the ESP32 firmware): set at start and
# every ``every`` s, so readings carry a ``timestamp``. Imported only when ``ntp`` is set.
import asyncio
import time


async def keep(host, every=86400, log=print, up=None, resolve=None):
    """Set the clock from ``host`` once the network is up (``up()``, the Wi-Fi station's
    ``isconnected``; None: always) and then every ``every`` s (<= 536870: asyncio's ticks).
    ``resolve(host, port)``: the board's DNS cache (``net.resolver``), so ntptime, which looks
    its host up on every call, is given an address and blocks on DNS at most once per TTL.
    While the clock is unset (before 2024: a cold board, whose TLS checks the broker's
    certificate dates against it) a failure is retried every 10 s; once set, in 10 s doubling
    up to ``every``. Never raises (no ntptime: logged, and the task ends)."""
    try:
        import ntptime
    except ImportError:
        return log("clock: no ntptime module")
    retry = 10
    while True:
        if up and not up():  # ntptime needs the station (and DNS): no try before it is up
            await asyncio.sleep(1)
            continue
        try:
            ntptime.host = resolve(host, 123) if resolve else host
            ntptime.settime()  # blocks up to ntptime.timeout (1 s)
            log("clock: set by " + host)
            wait, retry = every, 10
        except Exception as e:
            log("clock: %s: %r" % (host, e))
            wait = min(retry, every)
            if time.gmtime()[0] >= 2024:  # set before: no hurry
                retry = min(retry * 2, every)
        await asyncio.sleep(wait)
