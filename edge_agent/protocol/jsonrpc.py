"""JSON-RPC 2.0 framing for MCP: decode, classify, build responses. No I/O.

Source: JSON-RPC 2.0 specification; MCP ``basic/index`` (ids are strings or integers, never
null; no batching since 2025-06-18).
"""

from __future__ import annotations

import json
from typing import Any

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
RESOURCE_NOT_FOUND = -32002  # MCP 2025-11-25, resources/read of an unknown URI


class RpcError(Exception):
    """A JSON-RPC error to send back: ``code`` (int), ``message`` (str), ``data`` (JSON or None)."""

    def __init__(self, code: int, message: str, data: Any = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_error(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            err["data"] = self.data
        return err


def decode(payload: bytes | str) -> dict[str, Any]:
    """Decode one JSON-RPC message (request, notification or response) from JSON.

    Returns the message as a dict. Raises:
        RpcError(-32700): not UTF-8 JSON. RpcError(-32600): JSON but not a JSON-RPC 2.0 message
        (a batch array, a missing/wrong ``jsonrpc``, a bad ``id`` or ``method``). When the id
        could be read it is in ``error.data["id"]`` so the caller can still answer.
    """
    try:
        msg = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise RpcError(PARSE_ERROR, f"Parse error: {exc}") from None
    except RecursionError:
        raise RpcError(PARSE_ERROR, "Parse error: nested too deeply") from None
    return check(msg)


def check(msg: Any) -> dict[str, Any]:
    """Check that an already-decoded value (from JSON or CBOR) is one JSON-RPC 2.0 message.

    Raises RpcError(-32600) as :func:`decode` does.
    """
    if isinstance(msg, list):
        raise RpcError(INVALID_REQUEST, "Invalid Request: JSON-RPC batches are not supported")
    if not isinstance(msg, dict):
        raise RpcError(INVALID_REQUEST, "Invalid Request: a message must be a JSON object")
    msg_id = msg.get("id")
    id_ok = "id" not in msg or (isinstance(msg_id, (str, int)) and not isinstance(msg_id, bool))
    answerable = {"id": msg_id} if id_ok and "id" in msg else None
    if msg.get("jsonrpc") != "2.0":
        raise RpcError(INVALID_REQUEST, 'Invalid Request: "jsonrpc" must be "2.0"', answerable)
    if not id_ok:
        raise RpcError(INVALID_REQUEST, "Invalid Request: id must be a string or an integer")
    if "method" in msg:
        if not isinstance(msg["method"], str) or not msg["method"]:
            raise RpcError(INVALID_REQUEST, "Invalid Request: method must be a non-empty string", answerable)
        if "params" in msg and not isinstance(msg["params"], dict):
            raise RpcError(INVALID_REQUEST, "Invalid Request: params must be an object", answerable)
    elif "id" not in msg or ("result" not in msg and "error" not in msg):
        raise RpcError(INVALID_REQUEST, "Invalid Request: neither a request, a notification nor a response")
    return msg


def is_request(msg: dict[str, Any]) -> bool:
    return "method" in msg and "id" in msg


def is_notification(msg: dict[str, Any]) -> bool:
    return "method" in msg and "id" not in msg


def result(msg_id: str | int, value: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": msg_id, "result": value}


def error(msg_id: str | int | None, err: RpcError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": msg_id, "error": err.to_error()}


def notification(method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        msg["params"] = params
    return msg


def encode(msg: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON (non-ASCII kept as is: ``°C`` stays two bytes, not ``\\u00b0C``)."""
    return json.dumps(msg, separators=(",", ":"), ensure_ascii=False).encode()
