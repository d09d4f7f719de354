# A test double of MicroPython's ``socket`` name resolution on an ESP32 (ports/esp32/modsocket.c)
# for the host harness: the WebAssembly port has no socket module, and streams come from
# hostio.open_connection. ``getaddrinfo`` answers from the world file's ``"dns"`` table
# (board.mjs ``--world``), e.g. ``{"dns": {"mqtt.test": "127.0.0.1"}}``; a name missing from it
# (``PUBLIC``, the NTP pool, resolves too while DNS is up) or ``"dns": null`` (DNS down) raises
# ``OSError(-202)`` as lwIP does (a negative error number, not ``gaierror``). Every query is counted (``hostio.counts()["dns"]``).
import hostworld as hostio

AF_INET = 2
SOCK_STREAM = 1
IPPROTO_TCP = 6
TCP_NODELAY = 1


PUBLIC = {"pool.ntp.org": "192.0.2.123"}  # what any working DNS answers (ntptime's default host)


def getaddrinfo(host, port, af=0, type=0, proto=0, flags=0):
    if all(c in "0123456789." for c in host):
        return [(AF_INET, SOCK_STREAM, IPPROTO_TCP, "", (host, port))]
    hostio.count("dns")
    table = hostio.world().get("dns", {})
    ip = None if table is None else table.get(host) or PUBLIC.get(host)
    if ip is None:
        raise OSError(-202)
    return [(AF_INET, SOCK_STREAM, IPPROTO_TCP, "", (ip, port))]
