"""Payload encodings: JSON (the default) and CBOR (RFC 8949, via cbor2), chosen per MQTT 5
Content Type. A client that publishes its ``initialize`` with Content Type
``application/cbor`` is answered in CBOR for the whole session; without a Content Type, or
with ``application/json``, everything is JSON. Presence and capability-topic messages are
always JSON (every client reads them).
"""

from __future__ import annotations

import json
from typing import Any

from edge_agent.core.jsonrpc import too_deep

# cbor2 (~1 MB of RSS) is imported by the first CBOR session, not by every device at start.

JSON = "application/json"
CBOR = "application/cbor"
ENCODINGS = (JSON, CBOR)
MAX_DEPTH = 64  # JSON nesting of an incoming message: deeper is refused before json.loads


def encode(message: dict[str, Any], content_type: str | None = None) -> bytes:
    """Encode a JSON-RPC message; compact JSON unless ``content_type`` is CBOR. A lone
    surrogate (bad input echoed into an answer; Python's ``json`` decodes ``"\\ud800"`` into
    one) becomes U+FFFD, in JSON as in CBOR: UTF-8 cannot carry it, and strict JSON parsers
    (serde_json, for one) refuse even its ``\\uXXXX`` escape."""
    if content_type == CBOR:
        import cbor2

        try:
            return cbor2.dumps(message)
        except UnicodeEncodeError:
            return cbor2.dumps(_scrub(message))
    try:
        return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(_scrub(message), separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, dict):
        return {_scrub(k): _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def decode(payload: bytes, content_type: str | None = None) -> Any:
    """Decode a payload.

    Raises:
        ValueError: not valid JSON / CBOR (``cbor2.CBORDecodeError`` is a ValueError), or an
            unknown content type.
    """
    if content_type in (None, "", JSON) or content_type.startswith("application/json"):
        # 10,000 nested brackets parse into 10,000 lists and leave the allocator fragmented
        # (+15 MB RSS for 1,000 such messages); checked by a byte scan only past 64 brackets
        if too_deep(payload, MAX_DEPTH):
            raise ValueError(f"JSON nested deeper than {MAX_DEPTH}")
        try:
            return json.loads(payload)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None
    if content_type == CBOR:
        import cbor2

        try:
            return cbor2.loads(payload)
        except Exception as exc:  # cbor2 raises several types for garbage; normalise
            raise ValueError(f"invalid CBOR: {exc}") from None
    raise ValueError(f"unsupported content type {content_type!r}; use {JSON} or {CBOR}")
