# tools/list and resources/list of the board's MCP server (``mcp.Server``): asked for once per
# session, so imported for each request and unloaded again (the serving-time heap of a board
# with .mpy files does not hold this bytecode). Source: MCP 2025-11-25 server/tools,
# server/resources (no pagination: one page, a cursor is refused).
from .core.jsonrpc import INVALID_PARAMS, RpcError
from .mcp import dumps, text


def answer(server, p, method):
    """The result of ``method`` (tools/list or resources/list) with params ``p``. Raises
    RpcError(-32602) for a cursor (every list is one page)."""
    if p.get("cursor") is not None:
        raise RpcError(INVALID_PARAMS, "Invalid cursor")
    if method == "tools/list":  # one JSON text per tool (see mcp.encode), never every tool's dicts at once
        parts = ['{"tools":[']
        for n in server.tools:
            parts.append(("," if len(parts) > 1 else "") + dumps(server.tool(n)[0]))
        parts.append("]}")
        return parts
    return {"resources": [describe(r) for r in server.resources.values()]}


def describe(r):
    """Resource ``r``'s resources/list entry."""
    name = text(r.name)
    d = text(r.description) or name
    if r.unit:
        d += " (%s)" % r.unit
    return {"uri": r.uri, "name": name, "description": d + ". JSON: {value, unit, timestamp}",
            "mimeType": "application/json", "_meta": {"unit": r.unit, "poll_interval_s": r.poll}}
