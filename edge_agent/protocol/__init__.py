"""The MCP server core: JSON-RPC 2.0 + MCP server features, pure (no network, no MQTT).

It sees decoded messages and calls ``send``/``broadcast`` callables the transport provides.
"""

from .jsonrpc import RpcError
from .registry import Prompt, PromptArgument, Registry, Resource, ResourceTemplate, Tool, ToolContext
from .server import McpServer, ServerInfo, Session

__all__ = [
    "McpServer", "Prompt", "PromptArgument", "Registry", "Resource", "ResourceTemplate",
    "RpcError", "ServerInfo", "Session", "Tool", "ToolContext",
]
