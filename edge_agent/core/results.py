# Shapes of tool results. Source: MCP 2025-11-25 server/tools ("Tool Result": content,
# structuredContent, isError; errors in a tool are results with isError, not JSON-RPC errors,
# so the model sees them). Runs on CPython and MicroPython.
from .jsonrpc import dumps, notification


def tool_error(text):
    """A failed tool call the model can read: ``{"content": [text], "isError": true}``."""
    return {"content": [{"type": "text", "text": text}], "isError": True}


def tool_result(value):
    """A tool's return value as a result: None -> "ok"; a str -> that text; anything else ->
    its JSON as text, and a dict also as ``structuredContent`` (for clients before 2025-06-18
    the text carries the same data)."""
    if value is None:
        text = "ok"
    elif isinstance(value, str):
        text = value
    else:
        text = dumps(value)
    out = {"content": [{"type": "text", "text": text}], "isError": False}
    if isinstance(value, dict):
        out["structuredContent"] = value
    return out


def resource_updated(uri):
    """``notifications/resources/updated`` for ``uri`` (MCP 2025-11-25 server/resources
    "Subscriptions"), the same from the Pi and the board."""
    return notification("notifications/resources/updated", {"uri": uri})
