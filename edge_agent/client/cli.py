"""Cloud-side commands of ``edge-agent``: find devices and use their tools and resources.

Mounted by ``edge_agent.cli`` through :func:`add_client_commands`::

    edge-agent devices [FILTER]                     servers online at the broker
    edge-agent tools SERVER_NAME                    tools with their parameters, types, ranges, units
    edge-agent call SERVER_NAME TOOL key=value ...  call a tool (values typed by its inputSchema)
    edge-agent read SERVER_NAME URI                 read a resource ("21.4 °C")
    edge-agent watch SERVER_NAME URI                print the value now and on every update
    edge-agent resources SERVER_NAME                resources and resource templates
    edge-agent prompts SERVER_NAME                  prompts and their arguments
    edge-agent gateway [--http HOST:PORT]           every server as one MCP server (docs/gateway.md)

Each takes ``--broker URL`` (default ``$EDGE_AGENT_BROKER`` or ``mqtt://localhost:1883``),
``--json`` (machine output) and ``--timeout S``; the server commands take ``--server-id``.
Exit codes: 0 success; 1 runtime failure (broker unreachable, server not found, ``devices``
found none, the tool reported an error, MCP error, a malformed answer from the server); 2 bad
usage (unknown tool or parameter, bad value), reported before the tool is called; 130 Ctrl-C
(``call`` says which tool call it cancelled; the server gets ``notifications/cancelled``);
141 stdout's reader went away (``| head``), without a traceback.

Text from the network (names, descriptions, tool output, resource text) is printed with its
control characters escaped (:func:`edge_agent.termio.safe`); ``--json`` prints it exactly, as
JSON. On a terminal, ``call`` shows the tool's progress notifications as a line on stderr.

Importing this module is cheap (no ``mcp``); it raises ImportError if the ``[cloud]`` extra
(``mcp``, ``anyio``) is missing, so the caller can mount a hint instead.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import logging
import math
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from edge_agent.errors import EdgeAgentError, ServerNotFound, TransportError
from edge_agent.mqtt.broker_url import ENV_BROKER, default_broker
from edge_agent.termio import ProgressLine, is_terminal, safe, safe_json, stdout_gone

for _needed in ("mcp", "anyio"):
    if importlib.util.find_spec(_needed) is None:
        raise ImportError(f"No module named {_needed!r} (install the extra: pip install 'edge-agent-mcp[cloud]')")

log = logging.getLogger(__name__)

CALL_TIMEOUT = 60.0
"""Default seconds a ``tools/call`` may take (spec "Timeouts")."""
REQUEST_TIMEOUT = 30.0
"""Default seconds for the other requests (spec "Timeouts")."""
INITIALIZE_TIMEOUT = 30.0
"""Default seconds for ``initialize`` (spec "Timeouts"; the gateway's ``--timeout-initialize``)."""
PING_TIMEOUT = 10.0
"""Default seconds for ``ping`` (spec "Timeouts"; the gateway's ``--timeout-ping``)."""
DISCOVERY_TIMEOUT = 3.0
"""Default seconds to wait for the server's presence message."""
DEVICES_WINDOW = 30.0
"""Default cap, in seconds, on how long ``devices`` waits for the broker's retained presences
(it returns as soon as they are in: :func:`~edge_agent.client.discovery.discover`, ``until_retained``,
or once they stopped coming without the end-of-retained marker; 10,000 take 1-5 s on 2 busy cores)."""
KNOWN_NAMES_WINDOW = 0.5
"""Cap, in seconds, on listing the online server-names after a ServerNotFound."""
INTERRUPTED = 130
"""Exit status after Ctrl-C (128 + SIGINT)."""
POLL_INTERVAL = 2.0
"""Default seconds between reads when ``watch`` polls (the server does not offer ``resources.subscribe``)."""


class BadToolArguments(EdgeAgentError, ValueError):
    """A ``key=value`` argument does not fit the tool's ``inputSchema`` (exit code 2)."""


# ---------------------------------------------------------------------------------------------
# key=value -> typed arguments (pure)
# ---------------------------------------------------------------------------------------------

BOOLEANS = {"true": True, "on": True, "1": True, "yes": True,
            "false": False, "off": False, "0": False, "no": False}


def _convert_one(json_type: str, raw: str) -> Any:
    if json_type == "string":
        return raw
    if json_type == "integer":
        try:
            return int(raw, 10)
        except ValueError:
            raise ValueError("an integer") from None
    if json_type == "number":
        try:
            return int(raw, 10)
        except ValueError:
            pass
        try:
            value = float(raw)
        except ValueError:
            raise ValueError("a number") from None
        if not math.isfinite(value):
            raise ValueError("a finite number")
        return value
    if json_type == "boolean":
        try:
            return BOOLEANS[raw.strip().lower()]
        except KeyError:
            raise ValueError("true/false (or on/off, 1/0)") from None
    if json_type == "null":
        if raw.strip().lower() in ("null", "none", ""):
            return None
        raise ValueError("null")
    if json_type in ("array", "object"):
        want = list if json_type == "array" else dict
        try:
            parsed: Any = json.loads(raw)
        except ValueError:
            parsed = None
        if not isinstance(parsed, want):
            example = "[1, 2]" if want is list else '{"a": 1}'
            raise ValueError(f"a JSON {json_type} (e.g. {example})")
        return parsed
    raise ValueError(f"a value of unsupported type {json_type!r}")


def convert_value(key: str, raw: str, schema: dict[str, Any]) -> Any:
    """Convert the text ``raw`` of parameter ``key`` by its JSON Schema ``schema``.

    ``integer`` → int, ``number`` → int or float, ``boolean`` → true/false/on/off/yes/no/1/0,
    ``array``/``object`` → parsed JSON, ``string`` → as is; a list of types is tried in order;
    no type: JSON if it parses, else the text.

    Raises:
        BadToolArguments: one line naming the parameter, the value and what was expected.
    """
    json_type = schema.get("type")
    if json_type is None:
        for option in schema.get("anyOf") or schema.get("oneOf") or []:
            if isinstance(option, dict) and "type" in option:
                json_type = [*(json_type or []), *([option["type"]] if isinstance(option["type"], str) else option["type"])]
    if json_type is None:
        if isinstance(schema.get("enum"), list):
            for choice in schema["enum"]:
                if str(choice).lower() == raw.lower() or json.dumps(choice) == raw:
                    return choice
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    types_ = [json_type] if isinstance(json_type, str) else list(json_type)
    expected = []
    for t in types_:
        try:
            return _convert_one(t, raw)
        except ValueError as exc:
            expected.append(str(exc))
    raise BadToolArguments(f"bad value for {key}: {raw!r} is not {' or '.join(expected)}")


def parse_tool_arguments(tool_name: str, input_schema: dict[str, Any] | None, pairs: list[str]) -> dict[str, Any]:
    """Turn ``["on=true", "brightness=0.5"]`` into ``{"on": True, "brightness": 0.5}`` for ``tool_name``.

    Values are typed by ``input_schema`` (see :func:`convert_value`), then the whole object is
    validated against it (required parameters, ``minimum``/``maximum``, ``enum``, ...).

    Raises:
        BadToolArguments: a pair without ``=``, a repeated or unknown key, a value of the wrong
            type or out of range, a missing required parameter. One line, naming the parameter.
    """
    schema = input_schema or {}
    properties = schema.get("properties") or {}
    closed = bool(properties) or schema.get("additionalProperties") is False
    arguments: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise BadToolArguments(f"argument {pair!r} is not key=value")
        if key in arguments:
            raise BadToolArguments(f"parameter {key} given twice")
        if key not in properties:
            if closed:
                known = ", ".join(properties) or "none"
                raise BadToolArguments(f"unknown parameter {key!r} for tool {tool_name} (parameters: {known})")
            arguments[key] = convert_value(key, raw, {})
            continue
        arguments[key] = convert_value(key, raw, properties[key] if isinstance(properties[key], dict) else {})
    _validate(tool_name, schema, arguments)
    return arguments


def _validate(tool_name: str, schema: dict[str, Any], arguments: dict[str, Any]) -> None:
    try:
        import jsonschema
        from jsonschema.exceptions import best_match

        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(schema)
    except Exception:  # no jsonschema, or a schema it cannot use: the server will judge
        log.debug("not validating arguments of %s locally", tool_name, exc_info=True)
        return
    error = best_match(cls(schema).iter_errors(arguments))
    if error is None:
        return
    if error.validator == "required":
        missing = [k for k in error.validator_value if k not in arguments]
        raise BadToolArguments(f"tool {tool_name}: missing required parameter{'s' if len(missing) > 1 else ''} "
                               f"{', '.join(missing)}")
    where = ".".join(str(p) for p in error.absolute_path) or "arguments"
    raise BadToolArguments(f"bad value for {where}: {error.message}")


# ---------------------------------------------------------------------------------------------
# Rendering (pure)
# ---------------------------------------------------------------------------------------------

def _unit(schema: dict[str, Any]) -> str:
    for key in ("unit", "x-unit", "units"):
        if isinstance(schema.get(key), str) and schema[key]:
            return schema[key]
    return ""


def _fmt_number(v: Any) -> str:
    return repr(v) if isinstance(v, float) else str(v)


def one_line(text: Any) -> str:
    """A name or description from the network on one line: whitespace runs (newlines too)
    become one space, control characters are escaped (:func:`edge_agent.termio.safe`)."""
    return safe(" ".join(str(text).split()))


def describe_parameter(name: str, schema: dict[str, Any], required: bool) -> str:
    """One line for a tool parameter: ``brightness: number 0..1 duty, default 0.5 — PWM duty``."""
    json_type = schema.get("type", "any")
    text = " or ".join(json_type) if isinstance(json_type, list) else str(json_type)
    if text == "array" and isinstance(schema.get("items"), dict) and "type" in schema["items"]:
        text = f"array of {schema['items']['type']}"
    lo, hi = schema.get("minimum"), schema.get("maximum")
    xlo, xhi = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if lo is not None and hi is not None:
        text += f" {_fmt_number(lo)}..{_fmt_number(hi)}"
    else:
        if lo is not None:
            text += f" ≥ {_fmt_number(lo)}"
        if isinstance(xlo, (int, float)) and not isinstance(xlo, bool):
            text += f" > {_fmt_number(xlo)}"
        if hi is not None:
            text += f" ≤ {_fmt_number(hi)}"
        if isinstance(xhi, (int, float)) and not isinstance(xhi, bool):
            text += f" < {_fmt_number(xhi)}"
    if unit := _unit(schema):
        text += f" {unit}"
    if isinstance(schema.get("enum"), list):
        text += ", one of " + "|".join(json.dumps(v, ensure_ascii=False) for v in schema["enum"])
    if "default" in schema:
        text += f", default {json.dumps(schema['default'], ensure_ascii=False)}"
    if required:
        text += ", required"
    line = f"{one_line(name)}: {one_line(text)}"
    if schema.get("description"):
        line += f" — {one_line(schema['description'])}"
    return line


def describe_tool(tool: dict[str, Any]) -> list[str]:
    """Lines for ``tools``: ``name — description`` then one indented line per parameter.

    Names and descriptions come from the server: each is put on one line with its control
    characters escaped (:func:`one_line`).
    """
    head = one_line(tool["name"]) + (f" — {one_line(tool['description'])}" if tool.get("description") else "")
    schema = tool.get("inputSchema") or {}
    required = set(schema.get("required") or [])
    props = schema.get("properties") or {}
    lines = [head]
    if not props:
        lines.append("    (no parameters)")
    for name, prop in props.items():
        lines.append("    " + describe_parameter(name, prop if isinstance(prop, dict) else {}, name in required))
    return lines


def format_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _fmt_number(value)
    return json.dumps(value, ensure_ascii=False)


def format_reading(text: str) -> str:
    """A resource's text for humans: ``21.4 °C`` for ``{"value": 21.4, "unit": "°C", ...}``.

    ``{"value": v}`` without a unit (or with a null value) prints ``v``; other JSON objects and
    arrays print indented; anything else prints the text as is.
    """
    try:
        data = json.loads(text)
    except ValueError:
        return text
    if isinstance(data, dict) and "value" in data:
        unit = data.get("unit")
        if data["value"] is None or not isinstance(unit, str) or not unit:
            return format_value(data["value"])
        return f"{format_value(data['value'])} {unit}"
    if isinstance(data, (dict, list)):
        return json.dumps(data, indent=2, ensure_ascii=False)
    return text


def format_table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> list[str]:
    """Left-aligned columns; each cell goes through :func:`one_line` (cells come from the network)."""
    rows = [tuple(one_line(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]


def _dump(model: Any) -> Any:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def _print_json(data: Any, *, indent: int | None = 2) -> None:
    print(safe_json(json.dumps(data, indent=indent, ensure_ascii=False)), flush=True)


def _print(text: str, file: Any = None) -> None:
    """Print human output; control characters are escaped, newlines and tabs kept."""
    print(safe(text, multiline=True), file=file or sys.stdout, flush=True)


def _content_lines(contents: list[Any]) -> list[str]:
    lines = []
    for c in contents:
        kind = getattr(c, "type", None)
        if kind == "text":
            lines.append(c.text)
        elif kind in ("image", "audio"):
            lines.append(f"[{kind} {c.mime_type}, {len(c.data) * 3 // 4} bytes]")
        elif kind == "resource_link":
            lines.append(f"[resource {c.uri}]")
        elif kind == "resource":
            res = c.resource
            lines.append(getattr(res, "text", None) or f"[resource {res.uri}]")
        else:
            lines.append(f"[{kind or type(c).__name__}]")
    return lines


def _resource_lines(contents: list[Any]) -> list[str]:
    lines = []
    for c in contents:
        text = getattr(c, "text", None)
        if text is not None:
            lines.append(format_reading(text))
        else:
            blob = getattr(c, "blob", "") or ""
            lines.append(f"[binary {c.mime_type or 'data'}, {len(blob) * 3 // 4} bytes]")
    return lines


def reading_json(uri: str, contents: list[Any]) -> dict[str, Any]:
    """The object ``read --json`` and ``watch --json`` print (one line each) for a resource read.

    ``{"uri": uri, **reading}`` when the first text content is a JSON object (a sensor reading:
    ``{"uri", "value", "unit", "timestamp"}``), else ``{"uri", "text"}`` for other text, else
    ``{"uri", "mimeType", "blob"}`` (base64) for binary content, else ``{"uri"}``.
    """
    out: dict[str, Any] = {"uri": uri}
    for c in contents:
        text = getattr(c, "text", None)
        if text is None:
            continue
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict):
            out.update(data)
            out["uri"] = uri
        else:
            out["text"] = text
        return out
    for c in contents:
        if getattr(c, "blob", None) is not None:
            out.update(mimeType=getattr(c, "mime_type", None), blob=c.blob)
            break
    return out


# ---------------------------------------------------------------------------------------------
# Commands (async bodies)
# ---------------------------------------------------------------------------------------------

def _connect(args: argparse.Namespace, *, read_timeout: float | None = None, **kw: Any):
    """``connect()`` with the command's broker, server-name, server-id and request timeout."""
    from edge_agent.cloud import connect

    if getattr(args, "client_id", None):
        kw.setdefault("client_id", args.client_id)
    tls = broker_tls(args)
    if tls is not None:
        kw.setdefault("tls", tls)
    if getattr(args, "token_file", None):
        kw.setdefault("token", _token(args.token_file))
        kw.setdefault("client_id", _token_client_id(kw["token"]))
    return connect(args.broker, args.server_name, server_id=args.server_id,
                   discovery_timeout=args.discovery_timeout, read_timeout_seconds=read_timeout or args.timeout, **kw)


def broker_tls(args: argparse.Namespace):
    """``--ca-file``, ``--cert``, ``--key`` → :class:`edge_agent.mqtt.server.TlsSettings` (None:
    none given). Raises ValueError: ``--cert`` without ``--key`` or the reverse."""
    if not (args.ca_file or args.cert or args.key):
        return None
    if bool(args.cert) != bool(args.key):
        raise ValueError("--cert and --key go together (mutual TLS)")
    from edge_agent.mqtt.server import TlsSettings

    return TlsSettings(ca_file=args.ca_file, cert_file=args.cert, key_file=args.key)


def add_tls_arguments(p: argparse.ArgumentParser) -> None:
    """``--ca-file``, ``--cert``, ``--key``: TLS for an ``mqtts://`` broker (mutual TLS with a
    client certificate)."""
    p.add_argument("--ca-file", metavar="PEM", default=None,
                   help="CA certificates of an mqtts:// broker (default: the system CAs)")
    p.add_argument("--cert", metavar="PEM", default=None, help="client certificate for a mutual-TLS broker (with --key)")
    p.add_argument("--key", metavar="PEM", default=None, help="private key of --cert")


def _token(path: str) -> str:
    """The signed client token (JWT) in ``path`` (``--token-file``), whitespace stripped.

    Raises:
        ValueError: unreadable, empty or over 8 KiB, or not a JWT (exit code 2).
    """
    try:
        with open(path, "rb") as fh:
            raw = fh.read(8193)
    except OSError as exc:
        raise ValueError(f"--token-file {path}: {exc.strerror}") from None
    token = raw.decode("utf-8", "replace").strip()
    if not token or len(raw) > 8192 or token.count(".") != 2:
        raise ValueError(f"--token-file {path}: not a JWT (header.payload.signature, at most 8 KiB)")
    return token


def _token_client_id(token: str) -> str:
    """The mcp-client-id a token is bound to: its ``client_id`` claim, or its
    ``client_id_prefix`` plus random hex (the device checks the binding; this only reads it)."""
    import base64
    import json
    import secrets

    part = token.split(".")[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except ValueError:
        raise ValueError("--token-file: the token's payload is not base64url JSON") from None
    if isinstance(claims, dict) and isinstance(claims.get("client_id"), str):
        return claims["client_id"]
    if isinstance(claims, dict) and isinstance(claims.get("client_id_prefix"), str):
        return claims["client_id_prefix"] + secrets.token_hex(6)
    raise ValueError("--token-file: the token names no client_id (nor client_id_prefix) claim")


async def _list_all(fetch: Callable[..., Awaitable[Any]], attr: str) -> list[Any]:
    import mcp_types as types

    items: list[Any] = []
    cursor = None
    while True:
        page = await fetch(params=types.PaginatedRequestParams(cursor=cursor) if cursor else None)
        items += getattr(page, attr)
        cursor = page.next_cursor
        if not cursor:
            return items


async def _devices(args: argparse.Namespace) -> int:
    from edge_agent.client.discovery import RetainedReport
    from edge_agent.cloud import discover

    report = RetainedReport()
    found = await discover(args.broker, args.filter, timeout=args.timeout, until_retained=True, report=report,
                           tls=broker_tls(args))
    if report.gap:  # the list may be incomplete: say why and which broker setting to raise
        _print(f"edge-agent devices: warning: {report.gap}", sys.stderr)
    if args.json:
        _print_json([{"server_name": p.server_name, "server_id": p.server_id, "description": p.description,
                      "meta": p.meta} for p in found])
    elif found:
        for line in format_table([(p.server_name, p.server_id, p.description) for p in found],
                                 ("SERVER-NAME", "SERVER-ID", "DESCRIPTION")):
            _print(line)
    if not found:  # like grep: nothing matched is exit 1
        _print(f"edge-agent devices: no MCP servers matching {args.filter} online at {args.broker}", sys.stderr)
        return 1
    return 0


async def _tools(args: argparse.Namespace) -> int:
    async with _connect(args) as session:
        tools = await _list_all(session.list_tools, "tools")
    dumped = [_dump(t) for t in tools]
    if args.json:
        _print_json(dumped)
        return 0
    if not dumped:
        _print(f"{args.server_name} has no tools")
    for tool in dumped:
        _print("\n".join(describe_tool(tool)))
    return 0


async def _call(args: argparse.Namespace) -> int:
    async with _connect(args) as session:
        tools = {t.name: t for t in await _list_all(session.list_tools, "tools")}
        tool = tools.get(args.tool)
        if tool is None:
            raise BadToolArguments(f"unknown tool {args.tool!r} on {args.server_name} "
                                   f"(tools: {', '.join(tools) or 'none'})")
        arguments = parse_tool_arguments(tool.name, tool.input_schema, args.arguments)
        if args.task:
            return await _call_as_task(args, session, tool, arguments)
        bar = ProgressLine(sys.stderr, one_line(tool.name)) if is_terminal(sys.stderr) else None

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            assert bar is not None
            bar.show(progress, total, message)

        result = None
        try:  # Ctrl-C cancels the call alone; the SDK then sends notifications/cancelled
            with args.interrupt.guard(f"{one_line(tool.name)} on {args.server_name}"):
                result = await session.call_tool(tool.name, arguments,
                                                 read_timeout_seconds=args.timeout or CALL_TIMEOUT,
                                                 progress_callback=on_progress if bar is not None else None)
        finally:
            if bar is not None:
                bar.clear()
        if result is None:  # cancelled: leave the session, so the cancellation goes out first
            return INTERRUPTED
    if args.json:
        _print_json(_dump(result))
        return 1 if result.is_error else 0
    return _print_tool_result(result)


def _print_tool_result(result: Any) -> int:
    """A ``CallToolResult`` as ``call`` prints it (stderr if ``isError``); the exit code."""
    out = sys.stderr if result.is_error else sys.stdout
    lines = _content_lines(result.content)
    if result.structured_content is not None and not any(getattr(c, "type", None) == "text" for c in result.content):
        lines.insert(0, json.dumps(result.structured_content, indent=2, ensure_ascii=False))
    for line in lines:
        _print(line, out)
    return 1 if result.is_error else 0


async def _call_as_task(args: argparse.Namespace, session: Any, tool: Any, arguments: dict[str, Any]) -> int:
    """``call --task``: start the tool as an MCP task; print its id (``--json``: the task)."""
    from edge_agent.client import tasks

    support = tool.execution.task_support if tool.execution is not None else None
    if support not in ("optional", "required"):
        raise BadToolArguments(f"{tool.name} does not run as a task (its execution.taskSupport is "
                               f"{support or 'not set, i.e. forbidden'}); call it without --task")
    try:
        task = await tasks.call_tool_as_task(session, tool.name, arguments, timeout=args.timeout or REQUEST_TIMEOUT)
    except tasks.NotStarted as refused:
        if args.json:
            _print_json(refused.result)
        else:
            _print(str(refused), sys.stderr)
        return 1
    if args.json:
        _print_json(task)
    else:
        _print(task["taskId"])
        _print(f"{tool.name}: task {task['status']}; follow it with: edge-agent task get {args.server_name} "
               f"{task['taskId']}", sys.stderr)
    return 0


def _task_line(task: dict[str, Any]) -> tuple[str, ...]:
    return (task["taskId"], task["status"], task.get("createdAt", ""), task.get("lastUpdatedAt", ""),
            one_line(task.get("statusMessage") or ""))


_TASK_HEADER = ("TASK-ID", "STATUS", "CREATED", "UPDATED", "MESSAGE")


async def _task_show(args: argparse.Namespace) -> int:
    """``task get`` / ``task cancel``: one task's state."""
    from edge_agent.client import tasks

    async with _connect(args) as session:
        do = tasks.cancel if args.task_action == "cancel" else tasks.get
        task = await do(session, args.task_id, timeout=args.timeout)
    if args.json:
        _print_json(task)
    else:
        for line in format_table([_task_line(task)], _TASK_HEADER):
            _print(line)
    return 0


async def _task_list(args: argparse.Namespace) -> int:
    from edge_agent.client import tasks

    async with _connect(args) as session:
        found = await tasks.list_all(session, timeout=args.timeout)
    if args.json:
        _print_json(found)
    elif found:
        for line in format_table([_task_line(t) for t in found], _TASK_HEADER):
            _print(line)
    else:
        _print(f"{args.server_name} has no tasks")
    return 0


async def _task_result(args: argparse.Namespace) -> int:
    """``task result``: waits for the end, prints the tool's result like ``call`` (exit 1 if isError)."""
    import mcp_types as types

    from edge_agent.client import tasks

    async with _connect(args, read_timeout=args.timeout) as session:
        raw = await tasks.result(session, args.task_id, timeout=args.timeout)
    if args.json:
        _print_json(raw)
        return 1 if raw.get("isError") else 0
    return _print_tool_result(types.CallToolResult.model_validate(raw))


async def _read(args: argparse.Namespace) -> int:
    async with _connect(args) as session:
        result = await session.read_resource(args.uri)
    if args.json:  # one line, as ``watch --json`` prints each reading
        _print_json(reading_json(args.uri, result.contents), indent=None)
    else:
        for line in _resource_lines(result.contents):
            _print(line)
    return 0


def _can_subscribe(session: Any) -> bool:
    """Whether the server offered ``resources.subscribe`` at ``initialize`` (MCP lifecycle:
    a client uses only what was negotiated)."""
    result = session.initialize_result
    resources = getattr(getattr(result, "capabilities", None), "resources", None)
    return bool(getattr(resources, "subscribe", False))


async def _watch(args: argparse.Namespace) -> int:
    """Print the resource now and on each update: ``resources/subscribe`` if the server offers
    it, else a read every ``--interval`` seconds, printed when the contents changed."""
    import warnings

    import anyio
    import mcp_types as types
    from mcp import MCPDeprecationWarning

    send, receive = anyio.create_memory_object_stream[Exception | None](math.inf)

    async def handler(message: Any) -> None:
        if isinstance(message, Exception):
            send.send_nowait(message)
        elif isinstance(message, types.ResourceUpdatedNotification) and \
                str(message.params.uri).rstrip("/") == args.uri.rstrip("/"):
            send.send_nowait(None)

    def show(result: Any) -> None:
        if args.json:
            _print_json(reading_json(args.uri, result.contents), indent=None)
        else:
            for line in _resource_lines(result.contents):
                _print(line)

    def fingerprint(result: Any) -> Any:
        return [_dump(c) for c in result.contents]

    updates = 0
    async with _connect(args, read_timeout=REQUEST_TIMEOUT, message_handler=handler) as session:
        subscribed = _can_subscribe(session)
        result = await session.read_resource(args.uri)
        show(result)
        last = fingerprint(result)
        if subscribed:
            with warnings.catch_warnings():  # resources/subscribe is deprecated only in a later MCP revision
                warnings.simplefilter("ignore", MCPDeprecationWarning)
                await session.subscribe_resource(args.uri)
        else:
            log.info("%s does not offer resources/subscribe: reading %s every %g s", args.server_name, args.uri,
                     args.interval)
        with anyio.move_on_after(args.timeout if args.timeout is not None else math.inf):
            while args.count is None or updates < args.count:
                event: Exception | None = None
                if subscribed:
                    event = await receive.receive()
                else:
                    with anyio.move_on_after(args.interval):  # a read is due, unless the server went away
                        event = await receive.receive()
                if isinstance(event, Exception):
                    raise event
                result = await session.read_resource(args.uri)
                if not subscribed and fingerprint(result) == last:
                    continue
                last = fingerprint(result)
                show(result)
                updates += 1
        if subscribed:
            with anyio.move_on_after(REQUEST_TIMEOUT), warnings.catch_warnings():
                warnings.simplefilter("ignore", MCPDeprecationWarning)
                await session.unsubscribe_resource(args.uri)
    if args.count is not None and updates < args.count:
        print(f"edge-agent watch: {updates} of {args.count} updates within {args.timeout:g} s", file=sys.stderr)
        return 1
    return 0


async def _resources(args: argparse.Namespace) -> int:
    async with _connect(args) as session:
        resources = await _list_all(session.list_resources, "resources")
        templates: list[Any] = []
        try:
            templates = await _list_all(session.list_resource_templates, "resource_templates")
        except Exception as exc:  # optional: older servers answer METHOD_NOT_FOUND
            log.debug("no resource templates: %s", exc)
    if args.json:
        _print_json({"resources": [_dump(r) for r in resources],
                     "resourceTemplates": [_dump(t) for t in templates]})
        return 0
    if not resources and not templates:
        _print(f"{args.server_name} has no resources")
    for r in resources:
        extra = ", ".join(one_line(x) for x in (r.name, r.mime_type) if x)
        _print(one_line(r.uri) + (f"  ({extra})" if extra else "")
               + (f" — {one_line(r.description)}" if r.description else ""))
    for t in templates:
        _print(f"{one_line(t.uri_template)}  (template{', ' + one_line(t.mime_type) if t.mime_type else ''})"
               + (f" — {one_line(t.description)}" if t.description else ""))
    return 0


async def _prompts(args: argparse.Namespace) -> int:
    async with _connect(args) as session:
        prompts = await _list_all(session.list_prompts, "prompts")
    if args.json:
        _print_json([_dump(p) for p in prompts])
        return 0
    if not prompts:
        _print(f"{args.server_name} has no prompts")
    for p in prompts:
        _print(one_line(p.name) + (f" — {one_line(p.description)}" if p.description else ""))
        for a in p.arguments or []:
            _print(f"    {one_line(a.name)}" + (" (required)" if a.required else "")
                   + (f" — {one_line(a.description)}" if a.description else ""))
    return 0


# ---------------------------------------------------------------------------------------------
# Running a command: errors -> one line and an exit code
# ---------------------------------------------------------------------------------------------

def _leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


async def _known_names(broker: str) -> list[str]:
    from edge_agent.cloud import discover

    try:
        return sorted({p.server_name for p in await discover(broker, timeout=KNOWN_NAMES_WINDOW,
                                                                 until_retained=True)})
    except Exception:
        return []


def _setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.ERROR
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


class Interrupt:
    """Where Ctrl-C goes while a command runs (``args.interrupt``).

    A request wrapped in :meth:`guard` is cancelled alone, so the session stays up to send the
    server ``notifications/cancelled`` (the SDK does on cancellation) and to close cleanly;
    with none in flight, or at a second Ctrl-C, the whole command is cancelled.
    """

    def __init__(self) -> None:
        self.fired = False
        self.cancelled: str | None = None  # what a guarded request was, once Ctrl-C cancelled it
        self.command: Any = None  # the command's CancelScope, set by _interruptible
        self._request: Any = None
        self._what: str | None = None

    def fire(self) -> None:
        self.fired = True
        if self._request is not None and not self._request.cancel_called:
            self.cancelled = self._what
            self._request.cancel()
        elif self.command is not None:
            self.command.cancel()

    @contextlib.contextmanager
    def guard(self, what: str) -> Iterator[Any]:
        """A CancelScope around one request, named ``what`` (``"sweep on devices/x/y"``)."""
        import anyio

        with anyio.CancelScope() as scope:
            self._request, self._what = scope, what
            try:
                yield scope
            finally:
                self._request = self._what = None


async def _interruptible(body: Callable[[argparse.Namespace], Awaitable[int]], args: argparse.Namespace) -> int:
    """Run ``body(args)`` with SIGINT routed to ``args.interrupt`` (anyio cancellation, not
    KeyboardInterrupt, so requests in flight are cancelled on the wire and the link closes
    cleanly). Signals can only be caught on the main thread; elsewhere Ctrl-C is left alone."""
    import signal
    import threading

    import anyio

    if threading.current_thread() is not threading.main_thread():
        return await body(args)
    code = INTERRUPTED
    with anyio.open_signal_receiver(signal.SIGINT) as signals:
        async with anyio.create_task_group() as tg:
            args.interrupt.command = tg.cancel_scope

            async def on_sigint() -> None:
                async for _ in signals:
                    args.interrupt.fire()

            tg.start_soon(on_sigint)
            code = await body(args)
            tg.cancel_scope.cancel()
    return code


def _malformed(exc: Any) -> str:
    """A pydantic ``ValidationError`` of a peer's message as one short clause."""
    errors = exc.errors()
    if not errors:
        return "it does not fit the MCP schema"
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "the result"
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return f"{where}: {first.get('msg', 'invalid')}{more}"


def _run(body: Callable[[argparse.Namespace], Awaitable[int]], args: argparse.Namespace) -> int:
    """Run one command; map errors to one line on stderr and an exit code (0, 1, 2, 130, 141)."""
    import anyio
    from mcp import MCPError
    from pydantic import ValidationError

    _setup_logging(args.verbose)
    if args.broker is None:
        args.broker = default_broker()
    args.interrupt = Interrupt()
    prog = f"edge-agent {args.cmd_name}"
    server = getattr(args, "server_name", None) or args.broker

    def say(message: str) -> None:
        print(f"{prog}: {safe(message)}", file=sys.stderr, flush=True)

    try:
        code = anyio.run(_interruptible, body, args)
        if args.interrupt.fired:
            if args.interrupt.cancelled:
                say(f"cancelled {args.interrupt.cancelled}")
            return INTERRUPTED
        return code
    except KeyboardInterrupt:
        return INTERRUPTED
    except BaseException as group:  # anyio task groups may wrap the one error that matters
        exc = _leaf(group)
        if isinstance(exc, KeyboardInterrupt):
            return INTERRUPTED
        if isinstance(exc, BrokenPipeError):
            return stdout_gone()
        if isinstance(exc, BadToolArguments):
            say(str(exc))
            return 2
        if isinstance(exc, ServerNotFound):
            names = anyio.run(_known_names, args.broker)
            hint = f"; online server-names: {', '.join(names)}" if names else "; no MCP servers are online there"
            say(f"{exc}{hint}")
            return 1
        if isinstance(exc, TransportError):
            say(str(exc))
            return 1
        if isinstance(exc, MCPError):
            say(f"error from {server}: {exc}")
            return 1
        if isinstance(exc, ValidationError):  # before ValueError: pydantic's is one
            log.debug("malformed answer from %s", server, exc_info=exc)
            say(f"malformed answer from {server}: {_malformed(exc)}")
            return 1
        if isinstance(exc, ValueError):  # a malformed broker URL, server-name or server-id
            say(str(exc))
            return 2
        if isinstance(exc, Exception):  # e.g. the SDK refusing a result (RuntimeError): the peer's doing
            log.debug("failed talking to %s", server, exc_info=exc)
            say(f"failed talking to {server}: {type(exc).__name__}: {exc} (-vv for details)")
            return 1
        raise


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, not {text!r}") from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {text}")
    return value


def add_client_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``devices``, ``tools``, ``call``, ``read``, ``watch``, ``resources``, ``prompts``.

    Each subparser sets ``func`` to a callable ``(argparse.Namespace) -> int`` (the exit code).
    """
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--broker", metavar="URL", default=None,
                        help=f"broker URL (default: ${ENV_BROKER} or mqtt://localhost:1883)")
    common.add_argument("--json", action="store_true", help="machine-readable JSON output")
    common.add_argument("-v", "--verbose", action="count", default=0, help="log to stderr (-vv: debug)")
    server = argparse.ArgumentParser(add_help=False, parents=[common])
    server.add_argument("server_name", metavar="SERVER_NAME", help="server-name, e.g. devices/greenhouse/pi-01")
    server.add_argument("--server-id", default=None, help="talk to this instance (default: any online replica)")
    add_tls_arguments(server)
    server.add_argument("--client-id", metavar="ID", default=None,
                        help="the mcp-client-id (default: a new random one; a broker ACL may bind fixed ids to users)")
    server.add_argument("--token-file", metavar="FILE", default=None,
                        help="a signed client token (JWT) for devices with [auth]; its client_id claim is used")
    server.add_argument("--discovery-timeout", metavar="S", type=_positive_float, default=DISCOVERY_TIMEOUT,
                        help=f"seconds to wait for the server's presence (default {DISCOVERY_TIMEOUT:g})")

    def add(name: str, body: Callable[[argparse.Namespace], Awaitable[int]], help_: str,
            parent: argparse.ArgumentParser, timeout_help: str, timeout: float | None) -> argparse.ArgumentParser:
        p = subparsers.add_parser(name, help=help_, description=help_, parents=[parent])
        p.add_argument("--timeout", metavar="S", type=_positive_float, default=timeout, help=timeout_help)
        p.set_defaults(func=functools.partial(_run, body), cmd_name=name)
        return p

    answer = f"seconds to wait for the server's answer (default {REQUEST_TIMEOUT:g})"
    p = add("devices", _devices, "list the MCP servers online at the broker (exit 1 if none matches)", common,
            "give up waiting for the broker's retained presences after S seconds; it returns as soon as "
            f"they are in (default {DEVICES_WINDOW:g})", DEVICES_WINDOW)
    add_tls_arguments(p)
    p.add_argument("filter", nargs="?", default="#", metavar="FILTER",
                   help="server-name filter with MQTT wildcards (default: #)")
    add("tools", _tools, "list a server's tools with their parameters", server, answer, REQUEST_TIMEOUT)
    p = add("call", _call, "call a tool: values are typed by the tool's inputSchema", server,
            f"seconds the tool may take (default {CALL_TIMEOUT:g})", CALL_TIMEOUT)
    p.add_argument("tool", metavar="TOOL", help="tool name, as `edge-agent tools SERVER_NAME` lists it")
    p.add_argument("arguments", nargs="*", metavar="key=value",
                   help="tool arguments (booleans: true/false/on/off/1/0; arrays and objects: JSON)")
    p.add_argument("--task", action="store_true",
                   help="start the tool as an MCP task (a job such as pump_relay_run) and print its id at once; "
                        "follow it with `edge-agent task get|result|cancel`")
    p = add("read", _read, "read a resource (prints '21.4 °C' for a sensor reading)", server, answer, REQUEST_TIMEOUT)
    p.add_argument("uri", metavar="URI", help="resource URI, e.g. sensor://soil_temp/temperature")
    p = add("watch", _watch, "print a resource now and again on every update (JSON Lines with --json)", server,
            "stop after S seconds (default: run until interrupted)", None)
    p.add_argument("uri", metavar="URI", help="resource URI, e.g. sensor://soil_temp/temperature")
    p.add_argument("--count", metavar="N", type=_positive_int, default=None,
                   help="stop after N updates (exit 1 if --timeout comes first)")
    p.add_argument("--interval", metavar="S", type=_positive_float, default=POLL_INTERVAL,
                   help="seconds between reads when the server does not offer resources/subscribe "
                        f"(default {POLL_INTERVAL:g})")
    add("resources", _resources, "list a server's resources and resource templates", server, answer, REQUEST_TIMEOUT)
    add("prompts", _prompts, "list a server's prompts", server, answer, REQUEST_TIMEOUT)
    task_help = "follow MCP tasks (jobs started with `edge-agent call ... --task`): get, result, cancel, list"
    p = subparsers.add_parser("task", help=task_help, description=task_help)
    actions = p.add_subparsers(dest="task_action", required=True, metavar="ACTION")
    for action, body, help_, timeout in (
            ("get", _task_show, "show a task's status", REQUEST_TIMEOUT),
            ("result", _task_result, "wait for a task to end and print the tool's result (exit 1 if it failed)", None),
            ("cancel", _task_show, "cancel a task: the device stops the job (relay off) before it answers",
             REQUEST_TIMEOUT),
            ("list", _task_list, "list the device's tasks", REQUEST_TIMEOUT)):
        a = actions.add_parser(action, help=help_, description=help_, parents=[server])
        a.add_argument("--timeout", metavar="S", type=_positive_float, default=timeout,
                       help="seconds to wait for the answer" + (" (default: until the task ends)" if timeout is None
                                                                else f" (default {timeout:g})"))
        if action != "list":
            a.add_argument("task_id", metavar="TASK_ID", help="the id `edge-agent call ... --task` printed")
        a.set_defaults(func=functools.partial(_run, body), cmd_name=f"task {action}")


def build_parser() -> argparse.ArgumentParser:
    """A stand-alone parser with just the cloud commands (``python -m edge_agent.client.cli``)."""
    parser = argparse.ArgumentParser(prog="edge-agent", description="Talk to MCP servers on devices over MQTT.")
    add_client_commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
