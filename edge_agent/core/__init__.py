# The protocol core of edge-agent: MCP (JSON-RPC 2.0, lifecycle, one method table, in-flight
# and cancellation rules, argument checks, result shapes) and the MCP-over-MQTT binding rules
# (topics, what opens and closes a session). Pure: no sockets, no paho, no threads, no typing
# imports, no dataclasses, so the same files run on CPython (the Pi agent, the cloud side) and
# on MicroPython (the ESP32 board library: `make mpy` builds it from these files).
#
# Modules: jsonrpc (framing and error codes), methods (the method table), lifecycle (versions,
# sessions), loglevel (logging levels), args (tool argument checks over a JSON Schema subset),
# subset (whether a schema stays within it), results (tool result shapes), dispatch (the request
# engine), topics (topic names), binding (the transport's session rules, client ids and user
# properties), names (the server-name rule). The board never loads loglevel and subset, and
# names only at start (docs/esp32.md "Memory").
