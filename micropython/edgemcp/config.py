# Configuration of a board: the defaults below, overlaid by what main.py passes to
# Device(...), overlaid by the board's site file (``site_config.py`` defining
# ``config = {...}``, or ``site_config.json``), so Wi-Fi and broker secrets never sit in
# main.py or in the library. Device imports this module once and unloads it again.
DEFAULTS = {
    "server_name": None,  # e.g. "devices/greenhouse/esp32-01": hierarchical, needs a "/"
    "server_id": None,  # MQTT client id; default "esp32-" + the chip's unique id in hex
    "description": "A MicroPython edge-agent device",
    "location": None,
    "wifi_ssid": None,  # None: no Wi-Fi to bring up (wired, or a host interpreter)
    "wifi_password": None,
    "broker": None,  # broker host name or address; None: no MQTT (serial only)
    "port": 1883,
    "username": None,
    "password": None,
    "keepalive": 30,  # s
    "qos": 1,  # QoS of RPC messages and notifications (presence is always QoS 1)
    "queue_len": 4,  # inbound messages kept while busy (CONNECT's Receive Maximum); the oldest is dropped beyond
    "max_sessions": 8,  # MCP sessions at once (one more initialize is answered -32004); each ~1 KB of heap
    "max_packet": 2048,  # bytes: the largest MQTT packet taken (CONNECT's Maximum Packet Size; longer: dropped, counted)
    "session_expiry": 3600,  # s the broker keeps the session and queues requests while offline; 0: clean
    "will_delay": 5,  # s before the broker publishes the will (empty presence): a shorter outage keeps it
    "ca_file": None,  # CA (PEM/DER file in flash) to verify the broker: TLS (port 8883); None: plain TCP
    "dns_ttl": 3600,  # s a resolved broker address is reused (and used past it while DNS is down)
    "wifi_timeout": 20,  # s to wait for an address (a wrong password or no AP fails at once)
    "ntp": "pool.ntp.org",  # NTP server setting the clock at start and every ntp_every s; None: off
    "ntp_every": 86400,  # s
    "auth": None,  # signed client tokens (HS256, edgemcp.tokens.Auth: {"issuers": {iss: secret}, ...}); None: open
    "serial": None,  # "usb" (the REPL console), {"uart": 1, "tx": 17, "rx": 16, "baudrate": 115200}, or None
    "log": True,  # print log lines (forced off when serving on the USB console)
}


def load(overrides=None, site="site_config"):
    """The effective configuration (a new dict). Raises ValueError naming a bad key: unknown, a
    bad server-name or server-id, nothing to serve on, a number of the wrong type or out of its
    range, a serial line that is neither "usb" nor a UART dict."""
    cfg = dict(DEFAULTS)
    if overrides:
        cfg.update(overrides)
    cfg.update(_site(site))
    for key in cfg:
        if key not in DEFAULTS:
            raise ValueError("unknown config key %r (known: %s)" % (key, ", ".join(sorted(DEFAULTS))))
    from .core import binding, names  # the shared rules (ValueError naming the one broken); start.py unloads them
    names.check_server_name(cfg["server_name"])
    cfg["server_id"] = binding.check_id(cfg["server_id"] or default_id(), "server-id")
    if not cfg["broker"] and not cfg["serial"]:
        raise ValueError("nothing to serve on: set broker (MQTT) and/or serial, e.g. in site_config.py")
    # a wrong type or range fails here, naming the key, not later inside the MQTT client
    for key, lo, hi in (("port", 1, 65535), ("keepalive", 0, 65535), ("qos", 0, 1), ("queue_len", 1, 65535), ("max_sessions", 1, 255),
                        ("max_packet", 128, 268435455), ("session_expiry", 0, 4294967295),
                        ("will_delay", 0, 4294967295), ("dns_ttl", 0, None), ("wifi_timeout", 1, None),
                        ("ntp_every", 1, 536870)):  # asyncio.sleep: at most 2**29 ms
        v = cfg[key]
        if isinstance(v, bool) or not isinstance(v, int if hi else (int, float)) or v < lo or hi and v > hi:
            raise ValueError("%s must be a %s from %s%s, not %r" % (
                key, "whole number" if hi else "number (s)", lo, " to %d" % hi if hi else "", v))
    if cfg["ca_file"] and not cfg["ntp"]:  # a cold board's clock says 2000: no certificate is valid yet
        raise ValueError("ca_file needs ntp")
    s = cfg["serial"]
    if s and s != "usb" and not (isinstance(s, dict) and isinstance(s.get("uart"), int)) and not isinstance(s, tuple):
        raise ValueError('serial must be "usb" or {"uart": 1, "tx": 17, "rx": 16, "baudrate": 115200}, not %r' % (s,))
    return cfg


def _site(module):
    try:
        mod = __import__(module)
        import sys
        del sys.modules[module]  # read once: its dict is copied into the config
        return getattr(mod, "config", {})
    except ImportError:
        pass
    try:
        import json
        with open(module + ".json") as f:
            return json.load(f)
    except OSError:
        return {}


def default_id():
    try:
        import binascii

        import machine
        return "esp32-" + binascii.hexlify(machine.unique_id()).decode()
    except ImportError:
        return "mpy-device"
