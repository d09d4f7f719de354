"""edge-agent: a lightweight MCP server runtime for Raspberry Pi-class devices over MQTT 5."""

__version__ = "0.1.0"
