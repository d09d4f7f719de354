# The board's clock by NTP (micropython-lib ntptime, in the ESP32 firmware): set at start and
# every ``every`` s, so readings carry a ``timestamp``. Imported only when ``ntp`` is set.
import asyncio


async def keep(host, every=86400, log=print):
    """Set the clock from ``host`` now and every ``every`` s; after a failure retry in
    10 s, doubling up to ``every``. Never raises (no ntptime: logged, and the task ends)."""
    try:
        import ntptime
    except ImportError:
        return log("clock: no ntptime module")
    ntptime.host = host
    retry = min(10, every)
    while True:
        try:
            ntptime.settime()  # blocks up to ntptime.timeout (1 s)
            log("clock: set by " + host)
            wait, retry = every, min(10, every)
        except Exception as e:
            log("clock: %s: %r" % (host, e))
            wait, retry = retry, min(retry * 2, every)
        await asyncio.sleep(wait)
