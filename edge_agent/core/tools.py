# Calling a tool: argument checks, the tool's own errors, result shapes; the same on the Pi and
# on the board. Source: MCP 2025-11-25 server/tools ("Error Handling": an unknown tool is a
# JSON-RPC error; bad arguments and failures inside the tool are results with isError).
# Runs on CPython and MicroPython.
from . import args
from .jsonrpc import INVALID_PARAMS, RpcError, shown
from .results import tool_error, tool_result


def name_and_arguments(params):
    """``(name, arguments)`` of a tools/call. Raises RpcError(-32602) when ``name`` is not a
    string or ``arguments`` not an object (absent arguments are ``{}``)."""
    name = params.get("name")
    if not isinstance(name, str):
        raise RpcError(INVALID_PARAMS, "tools/call: params.name (a string) is required")
    arguments = params.get("arguments")
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise RpcError(INVALID_PARAMS, "tools/call: params.arguments must be an object")
    return name, arguments


def unknown(name):
    return RpcError(INVALID_PARAMS, "Unknown tool: " + shown(name))


def check_arguments(name, schema, arguments):
    """A tool_error result when ``arguments`` do not fit ``schema`` (the core's checker), else None."""
    return refusal(name, args.check(schema, arguments), arguments)


def refusal(name, problem, arguments):
    """A tool_error result for ``problem`` (a validator's message, or None), or when
    ``arguments`` hold a NaN or an infinity; else None."""
    if problem is None and not args.finite(arguments):
        problem = "NaN and infinity are not accepted"
    if problem is None:
        return None
    return tool_error("Invalid arguments for %s: %s" % (name, problem))


async def invoke(name, call, on_failure=None):
    """Run ``call()`` (a tool handler bound to its arguments; may return an awaitable) and
    shape what it returns. A ``ValueError`` it raises is the caller's fault (an isError result
    with its message); any other exception is a failure of the tool (``on_failure(name, exc)``
    is told, e.g. to mark a driver failed) and an isError result naming it."""
    try:
        value = call()
        if hasattr(value, "send"):  # a coroutine: an async handler
            value = await value
    except ValueError as exc:
        result = tool_error(str(exc))
        meta = getattr(exc, "result_meta", None)  # e.g. a rate limit's retryAfter
        if isinstance(meta, dict):
            result["_meta"] = meta
        return result
    except Exception as exc:
        if on_failure is not None:
            on_failure(name, exc)
        return tool_error("%s failed: %s: %s" % (name, type(exc).__name__, exc))
    return tool_result(value)
