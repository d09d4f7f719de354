# ruff: noqa: F821 (a MicroPython manifest: include/package are given by tools/manifestfile.py)
# Freezes edgemcp (and its protocol core, edgemcp/core -> edge_agent/core) into a MicroPython
# firmware, so its bytecode, strings and constants stay in flash instead of the heap
# (docs/esp32.md "Memory"). Build an ESP32 firmware with it, from a MicroPython 1.27 checkout:
#   make -C ports/esp32 BOARD=ESP32_GENERIC FROZEN_MANIFEST=/path/to/edge-agent/micropython/manifest.py
include("$(PORT_DIR)/boards/manifest.py")  # what ESP32_GENERIC freezes: asyncio, ntptime, ssl, ...
package("edgemcp", opt=3)
