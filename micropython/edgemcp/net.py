# The network below MQTT, for boards that have one: Wi-Fi (network.WLAN, station mode) with a
# clear error per status, and the broker's address resolved once and cached (DNS may be down
# when the link comes back). Imported only when Wi-Fi, a broker host name or TLS is
# configured: a board that uses none of them never loads it.
import asyncio
import time


def wifi(ssid, password, log=print, timeout_ms=20000):
    """``(up, is_up)`` for :class:`mqtt.MQTTClient`'s ``network`` and ``link_up``: ``await up()``
    returns at once when the station is connected, else connects and waits up to
    ``timeout_ms`` for an address; ``is_up()`` is the station's ``isconnected()``.

    Raises OSError naming the cause as soon as the station reports it (``STAT_WRONG_PASSWORD``,
    ``STAT_NO_AP_FOUND``, ``STAT_CONNECT_FAIL``, any other ESP-IDF reason by number): no wait for
    the timeout then; the client backs off (1..30 s) and retries. The station retries once by
    itself (``reconnects=1``): MicroPython 1.27 reports most ESP-IDF reasons (among them 15, the
    4-way handshake timeout that a wrong WPA2 password gives on IDF 5) only once the station
    has given up (ports/esp32/network_wlan.c ``status``); before that, ``STAT_CONNECTING``."""
    import network

    sta = network.WLAN(network.STA_IF)
    why = {}
    for name in ("WRONG_PASSWORD", "NO_AP_FOUND", "NO_AP_FOUND_IN_RSSI_THRESHOLD", "NO_AP_FOUND_IN_AUTHMODE_THRESHOLD",
                 "NO_AP_FOUND_W_COMPATIBLE_SECURITY", "CONNECT_FAIL", "BEACON_TIMEOUT"):
        code = getattr(network, "STAT_" + name, None)
        if code is not None:
            why[code] = name.lower().replace("_", " ")
    why[15] = "4-way handshake timeout (wrong password?)"  # WIFI_REASON_4WAY_HANDSHAKE_TIMEOUT
    why[204] = "handshake timeout (wrong password?)"  # WIFI_REASON_HANDSHAKE_TIMEOUT
    ok = (network.STAT_IDLE, network.STAT_CONNECTING, network.STAT_GOT_IP)

    async def up():
        if sta.isconnected():
            return
        sta.active(True)
        log("wifi: connecting to %s" % ssid)
        try:
            sta.disconnect()
        except OSError:
            pass
        try:
            sta.config(reconnects=1)  # then status() passes the reason through (not CONNECTING)
        except (ValueError, OSError, TypeError):
            pass
        sta.connect(ssid, password)
        for i in range(timeout_ms // 100):
            if sta.isconnected():
                log("wifi: %s" % (sta.ifconfig()[0],))
                return
            s = sta.status()
            # the ESP32 keeps the last disconnect reason until a connection succeeds: trust a
            # failure once the new attempt had 0.5 s
            if i >= 5 and s not in ok:
                raise OSError("wifi: %s: %s (status %d)" % (ssid, why.get(s, "failed"), s))
            await asyncio.sleep_ms(100)
        raise OSError("wifi: %s not reachable in %d s (status %s)" % (ssid, timeout_ms // 1000, sta.status()))

    return up, sta.isconnected


def resolver(ttl=3600, log=print):
    """``resolve(host, port)``: ``host``'s address (a literal passes), resolved once and reused
    for ``ttl`` s (``getaddrinfo`` blocks the board, and DNS may be down when the broker is
    back); after ``ttl`` resolved again, and when that fails the last address is used for
    another ``ttl`` (a failed query blocks the board for seconds: not on every retry). Raises
    OSError when the name never resolved. Shared by the MQTT link and NTP."""
    import socket

    cache = {}

    def resolve(host, port):
        e = cache.get(host)
        if e is None or time.ticks_diff(time.ticks_ms(), e[1]) > ttl * 1000:
            try:
                ip = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0][-1][0]
                cache[host] = e = (ip, time.ticks_ms())
            except OSError as x:
                if e is None:
                    raise OSError("dns: %s: %r" % (host, x))
                log("dns: %s: %r; using %s" % (host, x, e[0]))
                cache[host] = e = (e[0], time.ticks_ms())  # asked again only after another ttl
        return e[0]

    return resolve


def opener(ttl=3600, ssl=None, log=print, timeout=10, resolve=None):
    """``opener(host, port)`` for :class:`mqtt.MQTTClient`: the host name resolved through
    ``resolve`` (default: a :func:`resolver` of ``ttl`` s of its own). ``ssl``: an
    ``ssl.SSLContext`` (see ``tls.context``), the server checked against the host name.
    Raises OSError when the name never resolved."""
    resolve = resolve or resolver(ttl, log)

    async def open(host, port):
        from .connect import open_connection  # closes its socket on every failure
        return await open_connection(resolve(host, port), port, ssl, host)

    return open
