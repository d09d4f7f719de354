# Start-up of a Device: the configuration read and checked, the MCP server made, and at
# ``run()`` the links brought up (serial, Wi-Fi, DNS, TLS, NTP, MQTT). Code that runs once:
# device.py imports this module for each step and the step unloads it again (``unload``), so
# the serving-time heap holds neither its bytecode (.mpy on the filesystem) nor its function
# objects (frozen) (docs/esp32.md "Memory").
import gc

from . import __version__, mcp, unload


def device(app, options):
    """``Device.__init__``: ``app.cfg`` (config.load; ValueError naming a bad key) and ``app.server``."""
    from . import config
    app.cfg = cfg = config.load(options)
    del config
    unload("config", "core.names", "core.binding")
    app.server = server = mcp.Server("edgemcp", __version__, title=cfg["server_name"],
                                     instructions=("%s. Actuators are tools; readings are resources (JSON: value, "
                                                   "unit, timestamp; subscribable).", cfg["description"]))
    server.after_call = app._refresh
    server.max_sessions = cfg["max_sessions"]
    server.log = app.log
    if cfg["auth"] is not None:  # a token in every initialize (docs/esp32.md "Signed tokens")
        from .tokens import Auth
        Auth(cfg["auth"], cfg["server_id"], cfg["server_name"]).install(server)
    unload("start")


def links(app):
    """``Device.main``: each configured link made, appended to ``app.links`` and its task started."""
    import asyncio
    cfg = app.cfg
    serial = cfg["serial"]
    if serial:
        gc.collect()
        from .stdio import SerialLink
        if serial == "usb":
            from .stdio import usb
            cfg["log"] = False  # the console carries the JSON-RPC lines now
            r, w = usb()
        elif isinstance(serial, dict):
            from .stdio import uart
            r, w = uart(serial["uart"], serial.get("baudrate", 115200), serial.get("tx"), serial.get("rx"))
        else:
            r, w = serial  # a stream pair (host tests)
        link = SerialLink(app.server, r, w)
        app.links.append(link)
        asyncio.create_task(link.run())
    if cfg["broker"]:
        gc.collect()
        network = opener = link_up = resolve = None
        host = cfg["broker"]
        if cfg["wifi_ssid"] or cfg["ca_file"] or not all(c in "0123456789." for c in host):
            from . import net
            if cfg["wifi_ssid"]:
                network, link_up = net.wifi(cfg["wifi_ssid"], cfg["wifi_password"], app.log,
                                            cfg["wifi_timeout"] * 1000)
            ssl = None
            if cfg["ca_file"]:
                from .tls import context
                ssl = context(cfg["ca_file"])
                unload("tls")
            resolve = net.resolver(cfg["dns_ttl"], app.log)  # the broker's and NTP's names
            opener = net.opener(ssl=ssl, resolve=resolve)
        if cfg["ntp"]:
            from .clock import keep
            asyncio.create_task(keep(cfg["ntp"], cfg["ntp_every"], app.log, link_up, resolve))
        from .link import MqttLink
        gc.collect()
        # max_packet: a request longer than it never reaches the board (the broker drops it, and
        # the client gets no answer): said here so a client can check before it sends
        meta = {"version": __version__, "implementation": "edgemcp", "max_packet": cfg["max_packet"]}
        if cfg["location"]:
            meta["location"] = cfg["location"]
        exp = cfg["session_expiry"]
        link = MqttLink(app.server, cfg["server_id"], cfg["server_name"], host, cfg["port"],
                        description=cfg["description"], meta=meta, network=network, link_up=link_up, opener=opener,
                        username=cfg["username"], password=cfg["password"], keepalive=cfg["keepalive"],
                        qos=cfg["qos"], queue_len=cfg["queue_len"], max_packet=cfg["max_packet"],
                        clean=not exp, expiry=exp, will_delay=cfg["will_delay"])
        app.links.append(link)
        asyncio.create_task(link.run())
    unload("start")
