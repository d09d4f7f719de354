# The MCP server of the board: tools and resources on the shared protocol core (edge_agent/core,
# built into the board library as edgemcp/core: JSON-RPC framing, the method table, lifecycle,
# in-flight and cancellation rules, argument checks, result shapes). What is here is only what a
# board adds: its declarative tool and resource tables, sensor polling with a deadband, and the
# ``{"value", "unit", "timestamp"}`` reading. Sources: MCP 2025-11-25 server/tools,
# server/resources. Every kilobyte of bytecode is a kilobyte of an ESP32's heap: keep it small.
import gc
import json
import time

from . import unload
from .core import jsonrpc, lifecycle
from .core import tools as _tools
from .core.args import is_number as _num
from .core.dispatch import Dispatcher
from .core.jsonrpc import INTERNAL_ERROR, RpcError
from .core.lifecycle import VERSIONS
from .core.results import resource_updated, tool_error

READ_ONLY, DESTRUCTIVE, IDEMPOTENT = 1, 2, 4  # a tool's annotations as add_tool's flags
jsonrpc.MAX_DEPTH = 32  # json.loads recurses on the C stack: deeper input is -32700 unparsed


def dumps(msg):
    """Compact JSON for the wire (and how client input is quoted in the board's own messages)."""
    return json.dumps(msg, separators=(",", ":"))


def encode(msg):
    """``msg`` (a JSON-RPC message) as the UTF-8 bytes sent. A result already encoded is a
    list of JSON texts (str) that joined are the result (a JSON-RPC result of MCP is always an
    object, never a list): they are spliced into the response (tools/list encodes one tool at
    a time: never every tool's dicts at once, never a second copy of the text)."""
    p = msg.get("result") if isinstance(msg, dict) else None
    if isinstance(p, list):
        p.insert(0, '{"jsonrpc":"2.0","id":%s,"result":' % dumps(msg["id"]))
        p.append("}")
        for i in range(len(p)):
            p[i] = p[i].encode()  # one part at a time: a copy of one tool, not of the list
        p = b"".join(p)
        msg["result"] = None  # (the response stays referenced while it is sent: only the bytes stay)
        return p
    return dumps(msg).encode()


def text(t):
    """A description or name declared as ``(template, argument)`` (kept so: the template stays
    in flash when frozen, the heap holds no formatted copy), formatted; any other ``t`` as is."""
    return t[0] % t[1] if isinstance(t, tuple) else t


class Resource:
    # what most resources keep is a class attribute: an instance's dict holds only the rest
    # (16 bytes of hash table less per resource)
    unit = ""
    poll = 5
    description = ""
    deadband = 0
    last = None  # last value read (reported to subscribers when it moved)
    due = 0  # ticks_ms of the next poll

    def __init__(self, uri, name, unit, read, poll, description, deadband):
        self.uri = uri
        self.name = name  # a str, or (template, argument): see text()
        self.read = read
        if unit:
            self.unit = unit
        if poll != 5:
            self.poll = poll
        if description:
            self.description = description
        if deadband:
            self.deadband = deadband


def schema(params):
    """A tool's ``inputSchema`` from the board's compact table: ``params`` maps an argument to
    ``(type, minimum, maximum, unit, description, default)`` (only the type is required; the
    bounds of a string are lengths; an argument without a default is required)."""
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
    out = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        out["required"] = required
    return out


class Server(Dispatcher):
    """Tools and resources of one device, served to any number of sessions.

    ``add_tool(name, description, params, fn, annotations, title, updates)``: ``params`` as
    :func:`schema` takes them; ``description``, a str or ``(template, argument)`` (:func:`text`);
    ``annotations``, a dict or the flags ``READ_ONLY | DESTRUCTIVE | IDEMPOTENT`` (the
    ``readOnlyHint``... of MCP's ToolAnnotations), ``updates`` the URIs the tool changes
    (None: every polled resource). ``fn(**arguments)`` may be ``async``; it returns None, a str, a number or a dict
    (also sent as ``structuredContent``). A ``ValueError`` it raises is the caller's fault: an
    ``isError`` result with its message, like a bad argument. Each session's transport ``t``
    has ``async send(session_id, msg)`` and ``async broadcast(msg)``.
    """

    max_inflight = 4  # per session: one more is answered -32004 at once (core.dispatch)
    max_sessions = 8  # one more initialize over MQTT is answered -32004 (edgemcp/initialize.py)
    done_len = 8  # answers of changing tools/calls kept to answer a redelivery again (see answered)
    done_max = 512  # characters of such an answer at most (the ring holds <= 4 KB); a longer one is not kept

    def __init__(self, name, version, title=None, instructions=None):
        Dispatcher.__init__(self)
        self.server_info = {"name": name, "version": version}
        if title:
            self.server_info["title"] = title
        self._instructions = instructions  # a str, or (template, argument): see text()
        self.tools = {}
        self.resources = {}
        self.after_call = None  # after_call(tool name) after each tools/call: re-read the sensors
        self.log = print
        # (client id, request id, result as JSON text) of the last done_len answered tools/calls
        # that change something (not readOnlyHint): a QoS 1 request whose PUBACK was lost with
        # the link comes back (DUP) after the reconnect, and is answered from here, not run again
        self.done = []
        add = self.table.add
        add("tools/list", self._lists)
        add("tools/call", self._tools_call)
        add("resources/list", self._lists)
        add("resources/read", self._resources_read)
        add("resources/subscribe", self._subscribe)
        add("resources/unsubscribe", self._subscribe)

    @property
    def instructions(self):
        """The initialize result's ``instructions`` (core.dispatch reads it), formatted when asked for."""
        return text(self._instructions)

    def capabilities(self):
        return self.table.capabilities({"tools": {"listChanged": False}, "resources": {"listChanged": False}})

    def add_tool(self, name, description, params, fn, annotations=None, title=None, updates=None):
        # kept as declared (the compact table): the descriptor, its inputSchema and its
        # annotations are built when asked for, so a board's heap holds no dicts of dicts per tool
        self.tools[name] = (description, params or {}, fn, annotations, title, updates)

    def tool(self, name):
        """Tool ``name``'s tools/list entry (a new dict), and its function; KeyError if unknown."""
        description, params, fn, ann, title, _ = self.tools[name]
        d = {"name": name, "description": text(description), "inputSchema": schema(params)}
        if isinstance(ann, int):
            ann = {"readOnlyHint": bool(ann & READ_ONLY), "destructiveHint": bool(ann & DESTRUCTIVE),
                   "idempotentHint": bool(ann & IDEMPOTENT)}  # all three, even when 0 (absent: destructive)
        if ann:
            d["annotations"] = ann
        if title:
            d["title"] = title
        return d, fn

    def add_resource(self, uri, name, unit, read, poll=5, description="", deadband=0):
        self.resources[uri] = r = Resource(uri, name, unit, read, poll, description, deadband)
        return r

    # ------------------------------------------------------------------ sessions
    def open_session(self, sid, t):
        self.close_session(sid)
        self.sessions[sid] = s = lifecycle.Session(sid)
        s.t = t
        return s

    def close_session(self, sid):
        self.done = [d for d in self.done if d[0] != sid]  # a new session may use those ids again
        s = self.sessions.pop(sid, None)
        if s:
            self.cancel_all(s)
        return s is not None

    async def emit(self, s, msg):
        try:
            await s.t.send(s.id, msg)
        except MemoryError:  # too big to encode: this answer is lost, not the link
            gc.collect()
            self.log("no memory to answer")
            await s.t.send(s.id, jsonrpc.error(msg.get("id"), RpcError(INTERNAL_ERROR, "Out of memory")))

    def answered(self, s, msg, reply):
        # core.dispatch hook, before the answer leaves: keep what a changing tool answered
        p = msg.get("params") or {}
        if msg["method"] != "tools/call" or "result" not in reply or p.get("name") not in self.tools:
            return
        if not _read_only(self.tools[p["name"]][3]):
            try:
                text = dumps(reply["result"])
            except MemoryError:
                return
            if len(text) > self.done_max:  # too big to keep (a redelivery of it would run again)
                return
            self.done.append((s.id, msg["id"], text))
            if len(self.done) > self.done_len:
                self.done.pop(0)

    async def replay(self, s, msg):
        # core.dispatch hook for a request not in flight: a redelivery of one already answered
        for sid, mid, text in self.done:
            if sid == s.id and mid == msg["id"] and msg["method"] == "tools/call":
                self.log("%s already answered: its answer sent again, not run again" % dumps(mid))
                await self.emit(s, {"jsonrpc": "2.0", "id": mid, "result": [text]})
                return True
        return False

    def log_error(self, method, exc):
        self.log("%s: %r" % (method, exc))

    async def updated(self, uri):
        """``notifications/resources/updated`` once per transport with a subscriber to ``uri``."""
        done = []
        for s in list(self.sessions.values()):
            if uri in s.subscriptions and s.t not in done:
                done.append(s.t)
                try:
                    await s.t.broadcast(resource_updated(uri))
                except Exception as e:
                    self.log("broadcast: %r" % e)

    # ------------------------------------------------------------------ methods
    async def _lists(self, s, p, req):
        # tools/list, resources/list: edgemcp/lists.py, imported for the request, unloaded again
        from . import lists
        try:
            return lists.answer(self, p, req.method)
        finally:
            unload("lists")

    async def _tools_call(self, s, p, req):
        name, args = _tools.name_and_arguments(p)
        if name not in self.tools:
            raise _tools.unknown(name)
        _, params, fn, ann, _, _ = self.tools[name]
        sch = schema(params)
        refused = _tools.check_arguments(name, sch, args)
        if refused:
            return refused
        late = _late(p, ann)
        if late:  # queued at the broker while the board was away, past the client's deadline
            return tool_error("%s refused: the command arrived %.1f s after its deadline, so it was not executed "
                              "(send it again if it is still wanted)" % (name, late))
        for k, sub in sch["properties"].items():
            if k not in args and "default" in sub:
                args[k] = sub["default"]
        try:
            return await _tools.invoke(name, lambda: fn(**args), self._failed)
        finally:
            if self.after_call:
                self.after_call(name)

    def _failed(self, name, e):
        self.log("tool %s: %r" % (name, e))

    def _resource(self, p):
        uri = p.get("uri")
        r = self.resources.get(uri) if isinstance(uri, str) else None
        if r is None:
            raise jsonrpc.resource_not_found(uri)
        return r

    async def _resources_read(self, s, p, req):
        r = self._resource(p)
        return {"contents": [{"uri": r.uri, "mimeType": "application/json", "text": await self.read(r)}]}

    async def _subscribe(self, s, p, req):
        if req.method == "resources/unsubscribe":
            s.subscriptions.discard(p.get("uri"))
        else:
            s.subscriptions.add(self._resource(p).uri)
        return {}

    # ------------------------------------------------------------------ readings
    async def read(self, r):
        """The JSON text of resource ``r``: ``{"value", "unit", "timestamp"}`` (timestamp once
        the clock is set). A failed read with an earlier value gives that value with
        ``"stale": true`` and the error; without one it is a -32603 error."""
        out = {"unit": r.unit}
        try:
            out["value"] = await self.sample(r)
        except Exception as e:
            if r.last is None:
                raise RpcError(INTERNAL_ERROR, "%s: read failed: %r" % (r.uri, e))
            out["value"] = r.last
            out["stale"] = True
            out["error"] = repr(e)
        ns = time.time_ns()  # the Pi's format: UTC with milliseconds (edge_agent/device/sensors.py)
        t = time.gmtime(ns // 1000000000)
        if t[0] >= 2024:  # set (NTP): an ESP32's clock starts at 2000-01-01
            out["timestamp"] = "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" % (t[:6] + (ns // 1000000 % 1000,))
        return jsonrpc.dumps(out)

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


def _read_only(ann):
    # a tool's readOnlyHint, from its annotations (a dict, or add_tool's flags)
    return ann & READ_ONLY if isinstance(ann, int) else ann and ann.get("readOnlyHint")


def _late(p, ann):
    """Seconds a non-read-only call is past ``_meta["dev.edge-agent/deadline"]`` (Unix s) plus
    2 s for the two wall clocks (the Pi's ``deadline_skew``), or 0; 0 too while the clock is
    not set (the board cannot tell)."""
    dl = (p.get("_meta") or {}).get("dev.edge-agent/deadline")
    if not _num(dl) or _read_only(ann) or time.gmtime()[0] < 2024:
        return 0
    late = time.time() + (946684800 if time.gmtime(0)[0] == 2000 else 0) - dl - 2  # ESP32: epoch 2000
    return late if late > 0 else 0




__all__ = ("VERSIONS", "Server", "dumps", "schema")
