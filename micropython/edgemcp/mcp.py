# The MCP server core of the board: JSON-RPC 2.0 dispatch, lifecycle, tools and resources.
# No I/O: a transport gives each session an object with ``async send(session_id, msg)`` and
# ``async broadcast(msg)``. The behaviour of edge_agent/protocol/server.py on the Pi, in small
# (every kilobyte of bytecode is a kilobyte of an ESP32's heap). Sources: MCP specification
# 2025-11-25 (basic/lifecycle, server/tools, server/resources), JSON-RPC 2.0.
import asyncio
import json
import time
from micropython import const

VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")  # newest first
_PARSE = const(-32700)
_INVALID = const(-32600)
_NO_METHOD = const(-32601)
_PARAMS = const(-32602)
_INTERNAL = const(-32603)
_NOT_FOUND = const(-32002)


class RpcError(Exception):
    pass  # args: (code, message)


def dumps(msg):
    # also how client input is quoted in error messages: JSON-escaped, never echoed raw
    return json.dumps(msg, separators=(",", ":"))


def error(mid, code, message):
    return {"jsonrpc": "2.0", "id": mid, "error": {"code": code, "message": message}}


class Session:
    """One client: ``t`` its transport, ``state`` 0 new, 1 initializing, 2 ready, ``subs``
    the resource URIs it subscribed to, ``inflight`` its running requests (id -> task)."""

    def __init__(self, sid, t):
        self.id = sid
        self.t = t
        self.state = 0
        self.subs = set()
        self.inflight = {}


class Resource:
    def __init__(self, uri, name, unit, read, poll, description, deadband):
        self.uri = uri
        self.name = name
        self.unit = unit
        self.read = read
        self.poll = poll
        self.description = description
        self.deadband = deadband
        self.last = None  # last value read (reported to subscribers when it moved)
        self.due = 0  # ticks_ms of the next poll


class Server:
    """Tools and resources of one device, served to any number of sessions.

    ``add_tool(name, description, params, fn, annotations)``: ``params`` maps an argument to
    ``(type, minimum, maximum, unit, description, default)``; only the type is required:
    ``number``, ``integer``, ``boolean`` or ``string`` (whose bounds are lengths). An argument
    without a default is required. ``fn(**arguments)`` may be ``async``; it returns None, a
    str, a number or a dict (also sent as ``structuredContent``). A ``ValueError`` it raises
    is the caller's fault: an ``isError`` result with its message, like a bad argument.
    """

    def __init__(self, name, version, title=None, instructions=None):
        self.info = {"name": name, "version": version}
        if title:
            self.info["title"] = title
        self.instructions = instructions
        self.tools = {}
        self.resources = {}
        self.sessions = {}
        self.after_call = None  # after_call(tool name) after each tools/call: re-read the sensors
        self.log = print

    def add_tool(self, name, description, params, fn, annotations=None, title=None):
        self.tools[name] = (description, params or {}, fn, annotations, title)

    def add_resource(self, uri, name, unit, read, poll=5, description="", deadband=0):
        self.resources[uri] = r = Resource(uri, name, unit, read, poll, description, deadband)
        return r

    def open_session(self, sid, t):
        self.close_session(sid)
        self.sessions[sid] = s = Session(sid, t)
        return s

    def close_session(self, sid):
        s = self.sessions.pop(sid, None)
        if s:
            for task in s.inflight.values():
                task.cancel()
        return s is not None

    async def updated(self, uri):
        """``notifications/resources/updated`` once per transport with a subscriber to ``uri``."""
        done = []
        for s in list(self.sessions.values()):
            if uri in s.subs and s.t not in done:
                done.append(s.t)
                try:
                    await s.t.broadcast({"jsonrpc": "2.0", "method": "notifications/resources/updated",
                                         "params": {"uri": uri}})
                except Exception as e:
                    self.log("broadcast: %r" % e)

    async def handle(self, s, msg):
        """Handle one message of session ``s``: bytes, str or an already decoded dict. Never
        raises; requests run as tasks, so a slow tool blocks nobody."""
        if not isinstance(msg, dict):
            try:
                msg = json.loads(msg)
            except Exception:
                return await reply(s, error(None, _PARSE, "Parse error: not JSON"))
        if not isinstance(msg, dict):
            return await reply(s, error(None, _INVALID, "Invalid Request: not an object (no batches)"))
        mid = msg.get("id")
        id_ok = isinstance(mid, (str, int)) and not isinstance(mid, bool)
        method = msg.get("method")
        p = msg.get("params", {})
        if (msg.get("jsonrpc") != "2.0" or "id" in msg and not id_ok or not isinstance(p, dict)
                or "method" in msg and not (isinstance(method, str) and method)
                or method is None and not (id_ok and ("result" in msg or "error" in msg))):
            return await reply(s, error(mid if id_ok else None, _INVALID, "Invalid Request"))
        if method is None:
            return  # a response: this server sends no requests
        if "id" not in msg:  # a notification
            if method == "notifications/initialized" and s.state == 1:
                s.state = 2
            elif method == "notifications/cancelled":
                rid = p.get("requestId")
                task = s.inflight.pop(rid, None) if isinstance(rid, (str, int)) else None
                if task:
                    task.cancel()
            return
        if mid in s.inflight:
            return await reply(s, error(mid, _INVALID, "request id %s already in flight" % dumps(mid)))
        s.inflight[mid] = asyncio.create_task(self._request(s, mid, method, p))

    async def _request(self, s, mid, method, p):
        try:
            try:
                out = {"jsonrpc": "2.0", "id": mid, "result": await self._dispatch(s, method, p)}
            except RpcError as e:
                out = error(mid, e.args[0], e.args[1])
            except Exception as e:  # a failing handler never takes the board down
                self.log("%s: %r" % (method, e))
                out = error(mid, _INTERNAL, "Internal error in %s: %r" % (method, e))
            if s.inflight.pop(mid, None):
                await s.t.send(s.id, out)
        except Exception as e:
            self.log("send: %r" % e)
        except asyncio.CancelledError:
            s.inflight.pop(mid, None)  # notifications/cancelled: no response

    async def _dispatch(self, s, method, p):
        if method == "ping":
            return {}
        if method == "initialize":
            v = p.get("protocolVersion")
            if not isinstance(v, str):
                raise RpcError(_PARAMS, "initialize: params.protocolVersion (a string) is required")
            s.state = 1
            s.subs = set()
            out = {"protocolVersion": v if v in VERSIONS else VERSIONS[0], "serverInfo": self.info,
                   "capabilities": {"tools": {"listChanged": False},
                                    "resources": {"subscribe": True, "listChanged": False}}}
            if self.instructions:
                out["instructions"] = self.instructions
            return out
        if method not in _METHODS:
            raise RpcError(_NO_METHOD, "Method not found: " + dumps(method))
        if not s.state:
            raise RpcError(_INVALID, "Session not initialized: send initialize before " + method)
        if method.endswith("/list"):
            if p.get("cursor") is not None:
                raise RpcError(_PARAMS, "Invalid cursor")
            if method == "tools/list":
                return {"tools": [self._describe(n) for n in self.tools]}
            return {"resources": [_describe(r) for r in self.resources.values()]}
        if method == "tools/call":
            return await self._call(p)
        uri = p.get("uri")
        r = self.resources.get(uri)
        if method == "resources/unsubscribe":
            s.subs.discard(uri)
        elif r is None:
            raise RpcError(_NOT_FOUND, "Resource not found: " + dumps(uri))
        elif method == "resources/subscribe":
            s.subs.add(uri)
        else:
            return {"contents": [{"uri": uri, "mimeType": "application/json", "text": await self.read(r)}]}
        return {}

    def _describe(self, name):
        description, params, _, ann, title = self.tools[name]
        props = {}
        required = []
        for arg, spec in params.items():
            spec = spec + (None,) * (6 - len(spec))
            t, lo, hi, unit, text, default = spec
            d = {"type": t}
            if lo is not None:
                d["minLength" if t == "string" else "minimum"] = lo
            if hi is not None:
                d["maxLength" if t == "string" else "maximum"] = hi
            if unit:
                text = (text + " " if text else "") + "(" + unit + ")"
            if text:
                d["description"] = text
            if default is None:
                required.append(arg)
            else:
                d["default"] = default
            props[arg] = d
        schema = {"type": "object", "properties": props, "additionalProperties": False}
        if required:
            schema["required"] = required
        out = {"name": name, "description": description, "inputSchema": schema}
        if ann:
            out["annotations"] = ann
        if title:
            out["title"] = title
        return out

    async def _call(self, p):
        name = p.get("name")
        tool = self.tools.get(name)
        args = p.get("arguments")
        args = {} if args is None else args
        if tool is None or not isinstance(args, dict):
            raise RpcError(_PARAMS, "Unknown tool: " + dumps(name) if tool is None else "arguments must be an object")
        problem = check(tool[1], args)
        if problem:
            return _result("Invalid arguments for %s: %s" % (name, problem), True)
        try:
            v = tool[2](**args)
            if hasattr(v, "send"):  # a coroutine: an async handler
                v = await v
        except ValueError as e:
            return _result("%s: %s" % (name, e), True)
        except Exception as e:
            self.log("tool %s: %r" % (name, e))
            return _result("%s failed: %s: %s" % (name, type(e).__name__, e), True)
        finally:
            if self.after_call:
                self.after_call(name)
        out = _result("ok" if v is None else v if isinstance(v, str) else dumps(v), False)
        if isinstance(v, dict):
            out["structuredContent"] = v
        return out

    async def read(self, r):
        """The JSON text of resource ``r``: ``{"value", "unit", "timestamp"}`` (timestamp once
        the clock is set). A failed read with an earlier value gives that value with
        ``"stale": true`` and the error; without one it is a -32603 error."""
        out = {"unit": r.unit}
        try:
            out["value"] = await self.sample(r)
        except Exception as e:
            if r.last is None:
                raise RpcError(_INTERNAL, "%s: read failed: %r" % (r.uri, e))
            out["value"] = r.last
            out["stale"] = True
            out["error"] = repr(e)
        t = time.gmtime()
        if t[0] >= 2024:
            out["timestamp"] = "%04d-%02d-%02dT%02d:%02d:%02dZ" % t[:6]
        return dumps(out)

    async def sample(self, r):
        """Read ``r`` now; when the value moved past the deadband since the last one kept,
        keep it and send ``notifications/resources/updated`` to its subscribers."""
        v = r.read()
        if hasattr(v, "send"):  # an async read function
            v = await v
        last = r.last
        if last is None or v != last and not (r.deadband and _num(v) and _num(last) and abs(v - last) < r.deadband):
            r.last = v
            if last is not None:
                await self.updated(r.uri)
        return v

    async def poll(self, r):
        try:
            await self.sample(r)
        except Exception as e:
            self.log("read %s: %r" % (r.uri, e))


_METHODS = ("tools/list", "tools/call", "resources/list", "resources/read", "resources/subscribe",
            "resources/unsubscribe")


def _describe(r):
    d = r.description or r.name
    if r.unit:
        d += " (%s)" % r.unit
    return {"uri": r.uri, "name": r.name, "description": d + ". JSON: {value, unit, timestamp}",
            "mimeType": "application/json", "_meta": {"unit": r.unit, "poll_interval_s": r.poll}}


def check(params, args):
    """Why ``args`` do not fit ``params``: a message naming the argument and the bound, or
    None (then missing arguments with a default are filled in)."""
    for k in args:
        if k not in params:
            return "unknown argument %s (expected: %s)" % (dumps(k), ", ".join(params) or "none")
    for k, spec in params.items():
        spec = spec + (None,) * (6 - len(spec))
        t, lo, hi, unit = spec[:4]
        if k not in args:
            if spec[5] is None:
                return "missing required argument " + k
            args[k] = spec[5]
            continue
        v = args[k]
        if t == "boolean":
            ok = v is True or v is False
        elif t == "string":
            ok = isinstance(v, str)
        else:  # a finite number (NaN and infinities pass no range: v - v is NaN for them)
            ok = _num(v) and v - v == 0 and (t == "number" or v == int(v))
            if ok and t == "integer":
                v = args[k] = int(v)
        if not ok:
            return "%s must be a %s, not %s" % (k, "finite " + t if _num(v) else t, dumps(v))
        x = len(v) if t == "string" else v
        unit = " characters" if t == "string" else " " + unit if unit else ""
        if lo is not None and x < lo:
            return "%s: %s is below the minimum %s%s" % (k, dumps(v), lo, unit)
        if hi is not None and x > hi:
            return "%s: %s is above the maximum %s%s" % (k, dumps(v), hi, unit)


def _num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _result(text, is_error):
    return {"content": [{"type": "text", "text": text}], "isError": is_error}


async def reply(s, msg):
    try:
        await s.t.send(s.id, msg)
    except Exception as e:
        print("send: %r" % e)


def is_notification(payload, method):
    """True if ``payload`` (JSON) is the notification ``method``."""
    try:
        msg = json.loads(payload)
    except Exception:
        return False
    return isinstance(msg, dict) and msg.get("method") == method and "id" not in msg
