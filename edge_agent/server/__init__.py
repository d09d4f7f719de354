"""The MCP server core: JSON-RPC 2.0 + MCP server features, pure (no network, no MQTT).

It sees decoded messages and calls ``send``/``broadcast`` callables the transport provides.
"""

from edge_agent.core.jsonrpc import RpcError
from edge_agent.server.mcp import McpServer, ServerInfo, Session
from edge_agent.server.registry import (
    Prompt,
    PromptArgument,
    Registry,
    Resource,
    ResourceTemplate,
    Tool,
    ToolContext,
)

__all__ = [
    "McpServer", "Prompt", "PromptArgument", "Registry", "Resource", "ResourceTemplate",
    "RpcError", "ServerInfo", "Session", "Tool", "ToolContext",
]
