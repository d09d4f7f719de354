# MCP logging levels: logging/setLevel and which notifications/message a session wants.
# Source: MCP 2025-11-25 server/utilities/logging (RFC 5424 syslog severities). The Pi serves
# logging; a board does not, and never loads this module (docs/esp32.md "Memory").
# Runs on CPython and MicroPython.
from .jsonrpc import INVALID_PARAMS, RpcError

# Syslog severities, RFC 5424 order (MCP server/utilities/logging).
LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")


def set_level(session, params):
    """logging/setLevel. Raises RpcError(-32602) for a level outside :data:`LOG_LEVELS`."""
    level = params.get("level")
    if level not in LOG_LEVELS:
        raise RpcError(INVALID_PARAMS, "logging/setLevel: level must be one of " + ", ".join(LOG_LEVELS))
    session.log_level = level
    return {}


def log_allowed(session, level):
    """True if ``session`` wants notifications/message at ``level``."""
    return session.initialized and level in LOG_LEVELS and \
        LOG_LEVELS.index(level) >= LOG_LEVELS.index(session.log_level)
