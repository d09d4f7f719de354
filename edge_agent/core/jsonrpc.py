# JSON-RPC 2.0 framing for MCP: classify a decoded message, build answers. No I/O.
# Sources: JSON-RPC 2.0 specification; MCP basic/index (ids are strings or integers, never
# null; no batching since 2025-06-18). Runs on CPython and MicroPython.
import json

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
RESOURCE_NOT_FOUND = -32002  # MCP 2025-11-25: resources/read of an unknown URI
FORBIDDEN = -32003  # ours, in the implementation-defined range -32000..-32099: a role refuses
# ours too: a session already has Dispatcher.max_inflight requests in flight (no SDK uses it)
TOO_MANY_REQUESTS = -32004
# Nesting limit of loads/decode (0: none). The board sets 32: MicroPython's json.loads
# recurses on the C stack and 1,000 brackets cost it 37 KB of heap.
MAX_DEPTH = 0


class RpcError(Exception):
    """A JSON-RPC error to send back: ``code`` (int), ``message`` (str), ``data`` (JSON or None)."""

    def __init__(self, code, message, data=None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_error(self):
        err = {"code": self.code, "message": self.message}
        if self.data is not None:
            err["data"] = self.data
        return err


def is_id(value):
    """True for a valid request id: a string or an integer (not a bool, not null)."""
    return isinstance(value, (str, int)) and not isinstance(value, bool)


def too_deep(data, limit):
    """True if the JSON text ``data`` (bytes or str) nests ``[``/``{`` deeper than ``limit``
    (brackets inside strings do not count). A byte scan, and none at all while the text holds
    no more than ``limit`` brackets: cheap enough to run before every ``json.loads``."""
    if isinstance(data, str):
        data = data.encode()
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    d = 0
    s = esc = False
    for c in data:
        if esc:
            esc = False
        elif s:
            esc = c == 92  # backslash
            s = c != 34  # the closing quote
        elif c == 34:
            s = True
        elif c in b"[{":
            d += 1
            if d > limit:
                return True
        elif c in b"]}":
            d -= 1
    return False


def loads(payload):
    """UTF-8 JSON (bytes or str) -> value. Raises RpcError(-32700) when it is not JSON, or
    nests deeper than :data:`MAX_DEPTH` (then without parsing it at all); RpcError(-32603,
    "Out of memory") when parsing it ran out of memory (a board's heap: not the sender's fault)."""
    if MAX_DEPTH and too_deep(payload, MAX_DEPTH):
        raise RpcError(PARSE_ERROR, "Parse error: nested deeper than %d" % MAX_DEPTH)
    try:
        return json.loads(payload)
    except MemoryError:
        raise RpcError(INTERNAL_ERROR, "Out of memory")
    except Exception:  # ValueError, UnicodeDecodeError, RecursionError / RuntimeError
        # One wording on every interpreter (CPython's and MicroPython's decoders word it apart).
        raise RpcError(PARSE_ERROR, "Parse error: not UTF-8 JSON")


def decode(payload):
    """One JSON-RPC message from UTF-8 JSON (bytes or str) -> dict, checked by :func:`check`.

    Raises RpcError(-32700) when it is not JSON (or nested too deeply to parse), else as
    :func:`check`."""
    return check(loads(payload))


def check(msg):
    """``msg`` (already decoded, from JSON or CBOR) if it is one JSON-RPC 2.0 message.

    Raises RpcError(-32600): a batch, not an object, a wrong ``jsonrpc``, a bad ``id``,
    ``method`` or ``params``, or neither request, notification nor response. When the id could
    be read it is in ``error.data["id"]``, so the caller can still answer it."""
    if isinstance(msg, list):
        raise RpcError(INVALID_REQUEST, "Invalid Request: JSON-RPC batches are not supported")
    if not isinstance(msg, dict):
        raise RpcError(INVALID_REQUEST, "Invalid Request: a message must be a JSON object")
    has_id = "id" in msg
    id_ok = not has_id or is_id(msg["id"])
    answerable = {"id": msg["id"]} if has_id and id_ok else None
    if msg.get("jsonrpc") != "2.0":
        raise RpcError(INVALID_REQUEST, 'Invalid Request: "jsonrpc" must be "2.0"', answerable)
    if not id_ok:
        raise RpcError(INVALID_REQUEST, "Invalid Request: id must be a string or an integer")
    if "method" in msg:
        method = msg["method"]
        if not isinstance(method, str) or not method:
            raise RpcError(INVALID_REQUEST, "Invalid Request: method must be a non-empty string", answerable)
        if "params" in msg and not isinstance(msg["params"], dict):
            raise RpcError(INVALID_REQUEST, "Invalid Request: params must be an object", answerable)
    elif not has_id or ("result" not in msg and "error" not in msg):
        raise RpcError(INVALID_REQUEST, "Invalid Request: neither a request, a notification nor a response")
    return msg


def error_id(err):
    """The request id an :class:`RpcError` from :func:`check` could still answer, or None;
    clears ``err.data`` (the id is internal, not for the wire)."""
    data = err.data
    err.data = None
    return data.get("id") if isinstance(data, dict) else None


def result(msg_id, value):
    return {"jsonrpc": "2.0", "id": msg_id, "result": value}


def error(msg_id, err):
    """An error response; ``err`` an :class:`RpcError`."""
    return {"jsonrpc": "2.0", "id": msg_id, "error": err.to_error()}


def notification(method, params=None):
    msg = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        msg["params"] = params
    return msg


try:  # CPython escapes non-ASCII by default; MicroPython never does and has no such keyword
    json.dumps("", ensure_ascii=False)
    _KW = {"ensure_ascii": False}
except TypeError:
    _KW = {}


def dumps(value):
    """JSON text the same on CPython and MicroPython: non-ASCII kept (``°C``), ``, `` and ``: ``."""
    return json.dumps(value, separators=(", ", ": "), **_KW)


def encode(msg):
    """A message for the wire: compact UTF-8 JSON, non-ASCII kept as is (``°C`` is 2 bytes)."""
    return json.dumps(msg, separators=(",", ":"), **_KW).encode()


def quote(value):
    """How client input appears in an error message: JSON-escaped (non-ASCII and lone
    surrogates as \\u escapes on CPython), never echoed raw."""
    try:
        return json.dumps(value)
    except Exception:
        return repr(value)


def shown(value):
    """``value`` as it may appear in a message: a string as is when UTF-8 can carry it, else
    (a lone surrogate, a non-string) quoted by :func:`quote`."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
            return value
        except ValueError:
            pass
    return quote(value)


def resource_not_found(uri):
    """The -32002 error of a read of an unknown resource, with ``data.uri`` (MCP 2025-11-25
    server/resources "Error Handling")."""
    return RpcError(RESOURCE_NOT_FOUND, "Resource not found: " + shown(uri), {"uri": shown(uri)})
