# MicroPython's ``ntptime`` (micropython-lib micropython/net/ntptime) for the host harness:
# ``settime()`` sets the board clock (hostio's clock, which starts at 2000-01-01 like an ESP32's
# RTC after a cold boot when the world file says ``"clock": "cold"``) to the real UTC time when
# the world file's ``"ntp"`` is true (the default), else it fails as the real one does when
# the server does not answer (``OSError(110)``, ETIMEDOUT after ``timeout`` s). On a board with a
# Wi-Fi station (network.WLAN made) it fails while the station is not connected (``OSError(-202)``,
# the DNS lookup of ``host``), as the real one does; like the real one it looks ``host`` up
# (socket.getaddrinfo: the harness's DNS) on every call.
import hostworld as hostio

host = "pool.ntp.org"
timeout = 1


def time():
    import socket

    import network
    sta = network.station
    if sta is not None and not sta.isconnected():  # no station: getaddrinfo fails (lwIP)
        raise OSError(-202)
    socket.getaddrinfo(host, 123)  # as micropython-lib's: a DNS query on every call for a name
    if not hostio.world().get("ntp", True):
        raise OSError(110)
    hostio.count("ntp")
    return hostio.real_time()


def settime():
    hostio.set_clock(time())
