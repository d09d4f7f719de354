"""JSON-RPC 2.0 framing for MCP: the rules live in :mod:`edge_agent.core.jsonrpc` (shared with
the board); this module keeps the Pi side's import path."""

from ..core.jsonrpc import (FORBIDDEN, INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND,
                            PARSE_ERROR, RESOURCE_NOT_FOUND, RpcError, check, decode, encode, error, is_id,
                            is_notification, is_request, notification, result)

__all__ = ["FORBIDDEN", "INTERNAL_ERROR", "INVALID_PARAMS", "INVALID_REQUEST", "METHOD_NOT_FOUND", "PARSE_ERROR",
           "RESOURCE_NOT_FOUND", "RpcError", "check", "decode", "encode", "error", "is_id", "is_notification",
           "is_request", "notification", "result"]
