"""The exception root of edge-agent.

Every error the project raises on purpose derives from :class:`EdgeAgentError` and also from
the builtin that fits, so callers may catch either.
"""

from __future__ import annotations


class EdgeAgentError(Exception):
    """Root of every edge-agent error."""


class ConfigError(EdgeAgentError, ValueError):
    """A configuration file is unreadable or invalid.

    ``problems`` lists every ``(file, key, message)`` found, so a user can fix them all at once.
    """

    def __init__(self, problems: list[tuple[str, str, str]]):
        self.problems = list(problems)
        super().__init__("\n".join(f"{f}: {k}: {m}" for f, k, m in self.problems))


class DriverError(EdgeAgentError, RuntimeError):
    """A driver could not talk to its hardware (unplugged sensor, bad CRC, timeout)."""


class ToolInputError(EdgeAgentError, ValueError):
    """A tool argument is outside what the hardware accepts (raised by a driver handler)."""


class TransportError(EdgeAgentError, ConnectionError):
    """The MQTT link failed in a way the caller must know about (refused, timed out)."""


class ServerNotFound(EdgeAgentError, LookupError):
    """No online MCP server matches the requested server-name (cloud side)."""
