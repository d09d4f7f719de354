"""MCP over MQTT (paho-mqtt, MQTT 5): topics, user properties, presence, per-client sessions.

Nothing here knows what a tool is; the protocol core sees decoded JSON-RPC messages only.
"""
