"""The exception root of edge-agent.

Every error the project raises on purpose derives from :class:`EdgeAgentError` and also from
the builtin that fits, so callers may catch either.
"""

from __future__ import annotations


class EdgeAgentError(Exception):
    """Root of every edge-agent error."""


class ConfigError(EdgeAgentError, ValueError):
    """A configuration file is unreadable or invalid.

    ``problems`` lists every ``(file, key, message)`` found, so a user can fix them all at once;
    ``lines`` the line of each in the file (1-based; 0 when unknown). ``str()`` is one
    ``FILE:LINE: KEY: message`` per problem (``FILE: KEY: message`` without a line).
    """

    def __init__(self, problems: list[tuple[str, str, str]], lines: list[int] | None = None):
        self.problems = list(problems)
        self.lines = list(lines) if lines is not None else [0] * len(self.problems)
        super().__init__("\n".join(self.formatted()))

    def formatted(self) -> list[str]:
        """One ``FILE:LINE: KEY: message`` line per problem."""
        return [f"{f}:{n}: {k}: {m}" if n else f"{f}: {k}: {m}"
                for (f, k, m), n in zip(self.problems, [*self.lines, *[0] * len(self.problems)])]


class DriverError(EdgeAgentError, RuntimeError):
    """A driver could not talk to its hardware (unplugged sensor, bad CRC, timeout)."""


class ToolInputError(EdgeAgentError, ValueError):
    """A tool argument is outside what the hardware accepts (raised by a driver handler)."""


class TransportError(EdgeAgentError, ConnectionError):
    """The MQTT link failed in a way the caller must know about (refused, timed out)."""


class ServerNotFound(EdgeAgentError, LookupError):
    """No online MCP server matches the requested server-name (cloud side)."""
