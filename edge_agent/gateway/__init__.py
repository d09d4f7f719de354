"""``edge-agent gateway``: one MCP endpoint (stdio or Streamable HTTP) for a whole fleet of
MCP-over-MQTT devices. Entry point: :mod:`.command`."""
