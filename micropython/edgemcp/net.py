# Wi-Fi for boards that have it (network.WLAN, station mode). Imported only when a Wi-Fi
# SSID is configured, so a host interpreter or a wired board never loads it.
import asyncio


def wifi(ssid, password, log=print, timeout_ms=20000):
    """An ``async`` callable for :class:`mqtt.MQTTClient`'s ``network``: returns at once when
    the station is connected, else (re)connects and waits up to ``timeout_ms``.

    Raises OSError when the network does not come up (the client backs off and retries)."""
    import network

    sta = network.WLAN(network.STA_IF)

    async def up():
        if sta.isconnected():
            return
        sta.active(True)
        log("wifi: connecting to %s" % ssid)
        try:
            sta.disconnect()
        except OSError:
            pass
        sta.connect(ssid, password)
        for _ in range(timeout_ms // 250):
            if sta.isconnected():
                log("wifi: %s" % (sta.ifconfig()[0],))
                return
            await asyncio.sleep_ms(250)
        raise OSError("wifi: %s not reachable (status %s)" % (ssid, sta.status()))

    return up
