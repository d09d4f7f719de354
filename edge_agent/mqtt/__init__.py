"""MCP over MQTT (paho-mqtt, MQTT 5): topics, user properties, presence, per-client sessions.

Every paho client of the project runs on the adapter in :mod:`edge_agent.mqtt.loop` (paho driven
by the asyncio event loop, one reconnect policy). Nothing here knows what a tool is; the
protocol core sees decoded JSON-RPC messages only.
"""
