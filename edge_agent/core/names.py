# The server-name rule of the MCP-over-MQTT transport, checked where a name comes from outside
# (configuration, a discovered presence topic). No I/O. Source: mqtt-ai/mcp-over-mqtt,
# specification/2025-03-26/basic/mqtt_transport.md, "Message Topics": a server-name is
# "/"-separated with at least one "/", no wildcards, no leading "/" (the id rule, check_id, is
# in binding.py). Runs on CPython and MicroPython. Kept out of topics.py so that a board
# serving requests does not keep it (and its messages) in RAM: the board loads it to check its
# configuration and unloads it again (docs/esp32.md "Memory").

from .binding import _utf8_size

# The byte limit of a server-name (binding.MAX_ID explains it): the longest topic stays within
# an MQTT string's 65535 bytes. Checked before any state is kept.
MAX_NAME = 65012


def check_server_name(name):
    """``name`` if it is a valid server-name (e.g. ``devices/greenhouse/pi-01``).

    Raises ValueError with the rule it breaks."""
    if not isinstance(name, str) or not name or name.startswith("/") or name.endswith("/"):
        raise ValueError("server-name %r must not be empty nor start or end with '/'" % (name,))
    if "/" not in name:
        raise ValueError("server-name %r must be hierarchical: at least one '/' (e.g. 'devices/%s')" % (name, name))
    if "+" in name or "#" in name:
        raise ValueError("server-name %r must not contain the wildcards '+' or '#'" % (name,))
    if "\x00" in name:
        raise ValueError("server-name %r must not contain NUL" % (name,))
    size = _utf8_size(name, "server-name")
    if size > MAX_NAME:
        raise ValueError("server-name is %d bytes; at most %d" % (size, MAX_NAME))
    if "//" in name:
        raise ValueError("server-name %r must not contain an empty level ('//')" % (name,))
    return name
