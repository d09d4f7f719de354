# edgemcp: an MCP server for MicroPython boards (ESP32), speaking MCP over MQTT 5 and over a
# serial line. ``from edgemcp import Device`` is all a main.py needs; the rest is imported
# when used, so a board only pays for what it runs.
__version__ = "0.1.0"


def __getattr__(name):
    # MicroPython asks here before importing a submodule ("from . import mcp"): import it
    if name == "Device":
        from .device import Device
        return Device
    return __import__("edgemcp." + name, None, None, (name,))


def unload(*names):
    """Forget modules ``edgemcp.<name>`` (``core.<name>`` for the shared core's): their bytecode
    (.mpy) and function objects become garbage once no running frame holds one of them."""
    import sys
    for n in names:
        sys.modules.pop("edgemcp." + n, None)
        core = n[:5] == "core."
        try:
            delattr(sys.modules["edgemcp.core" if core else "edgemcp"], n[5:] if core else n)
        except (AttributeError, KeyError):
            pass
