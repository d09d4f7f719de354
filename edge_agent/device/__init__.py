"""The device runtime on CPython (a Raspberry Pi): config (TOML) -> drivers -> MCP registry ->
endpoint on the MQTT link; sensor channels, prompts, the store, systemd integration, and the
checks behind ``edge-agent check``."""
