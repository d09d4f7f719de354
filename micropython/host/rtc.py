# The board clock for the host harness (hostio.install() puts it in sys.modules as "time" when
# the world file says "clock": "cold"): MicroPython's time module, with time(), time_ns(), gmtime() and
# localtime() starting at 2000-01-01T00:00:00Z, as an ESP32's RTC does after a cold boot, until
# ntptime.settime() sets it (set_clock). ticks_* and sleep_* are the built-in ones.
import time as _t

for _name in dir(_t):
    if not _name.startswith("_"):
        globals()[_name] = getattr(_t, _name)
_offset = 946684800 - int(_t.time())


def set_clock(t):
    global _offset
    _offset = int(t - _t.time())


def time():
    return int(_t.time()) + _offset


def time_ns():
    return _t.time_ns() + _offset * 1000000000


def gmtime(secs=None):
    return _t.gmtime(time() if secs is None else secs)


localtime = gmtime
