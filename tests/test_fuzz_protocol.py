"""Fuzzing the JSON-RPC decoder and the MCP server core (issue 7, part 5).

Claims, for any input:

- ``jsonrpc.decode``/``check`` return one JSON-RPC 2.0 message or raise ``RpcError`` with
  -32700 / -32600, never anything else.
- ``McpServer.handle`` (after ``initialize``) answers every request with exactly one
  well-formed response carrying the request's id, answers nothing to notifications and
  responses, answers a malformed message with one error (id null unless the id could be read),
  never raises, never hangs (each example is bounded by ``asyncio.wait_for``), never lets a tool
  handler see arguments outside its input schema, and still answers ``ping`` afterwards.
  Everything it sends encodes as strict JSON (RFC 8259) and as CBOR.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
from typing import Any

import cbor2
from hypothesis import strategies as st

from edge_agent.core import jsonrpc
from edge_agent.core.jsonrpc import RpcError
from edge_agent.errors import ToolInputError
from edge_agent.mqtt import codec
from edge_agent.server import (
    McpServer,
    Prompt,
    PromptArgument,
    Registry,
    Resource,
    ResourceTemplate,
    ServerInfo,
    Tool,
)
from tests.test_fuzz_common import (
    Property,
    ci_test,
    is_finite_number,
    json_objects,
    json_values,
    strict_json,
)

EXAMPLE_TIMEOUT = 10.0  # s: a hang fails the example instead of stalling the run

# --------------------------------------------------------------------------- oracle


def valid_id(value: Any) -> bool:
    return isinstance(value, (str, int)) and not isinstance(value, bool)


def expected(value: Any) -> tuple[str, Any, bool]:
    """What the server must answer to the decoded message ``value``, written independently of
    ``jsonrpc.check``: (``"none"`` | ``"reply"`` | ``"error"``, id, whether the id is exact;
    when not exact, null is also accepted)."""
    if not isinstance(value, dict):
        return "error", None, True
    has_id = "id" in value
    id_ok = not has_id or valid_id(value["id"])
    readable = value["id"] if has_id and id_ok else None
    if value.get("jsonrpc") != "2.0":
        return "error", readable, False
    if not id_ok:
        return "error", None, True
    if "method" in value:
        method = value["method"]
        if not isinstance(method, str) or not method:
            return "error", readable, False
        if "params" in value and not isinstance(value["params"], dict):
            return "error", readable, False
        return ("reply", value["id"], True) if has_id else ("none", None, True)
    if has_id and ("result" in value or "error" in value):
        return "none", None, True  # a response: this server sent no request, nothing to say
    return "error", readable, False


def check_wire(msg: Any, cbor_session: bool = False) -> None:
    """Anything the server sends: a JSON-RPC 2.0 object that strict JSON (unless the session
    speaks CBOR) and CBOR can carry."""
    assert isinstance(msg, dict) and msg.get("jsonrpc") == "2.0", msg
    try:
        if not cbor_session:
            strict_json(codec.decode(codec.encode(msg)))  # what a client gets off the wire
    except UnicodeEncodeError as exc:
        raise AssertionError(f"K2: the server sent a lone surrogate, which UTF-8 cannot carry ({exc}): {msg!r}") from None
    except (ValueError, TypeError) as exc:
        raise AssertionError(f"the server sent something strict JSON cannot carry ({exc}): {msg!r}") from None
    try:
        cbor2.loads(codec.encode(msg, codec.CBOR))
    except Exception as exc:
        raise AssertionError(f"the server sent something CBOR cannot carry ({exc}): {msg!r}") from None
    if "method" in msg:
        assert isinstance(msg["method"], str) and "id" not in msg, f"the server sent a request: {msg!r}"
        return
    assert "id" in msg and ("result" in msg) != ("error" in msg), f"malformed response {msg!r}"
    assert msg["id"] is None or valid_id(msg["id"]), f"bad response id {msg!r}"
    if "error" in msg:
        err = msg["error"]
        assert isinstance(err, dict) and type(err.get("code")) is int and isinstance(err.get("message"), str), msg
    else:
        assert isinstance(msg["result"], dict), msg


def same_id(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


# --------------------------------------------------------------------------- the server under test

ANGLE = {"type": "number", "minimum": -90, "maximum": 90}
TOOL_SCHEMAS: dict[str, dict[str, Any]] = {
    "servo_set_angle": {"type": "object", "properties": {"angle": ANGLE}, "required": ["angle"],
                        "additionalProperties": False},
    "relay_set": {"type": "object", "properties": {"on": {"type": "boolean"},
                                                   "channel": {"type": "integer", "minimum": 0, "maximum": 7}},
                  "required": ["on"], "additionalProperties": False},
    "pump_run": {"type": "object", "properties": {
        "seconds": {"type": "number", "exclusiveMinimum": 0, "maximum": 30},
        "times": {"type": "integer", "minimum": 1, "maximum": 5, "default": 1},
        "mode": {"enum": ["pulse", "hold"]},
        "label": {"type": "string", "maxLength": 12}},
        "required": ["seconds"]},
    "bus_read": {"type": "object"},
    "slow_sweep": {"type": "object", "properties": {"steps": {"type": "integer", "minimum": 0, "maximum": 3}}},
}
TOOL_NAMES = [*TOOL_SCHEMAS, "no_such_tool", ""]
RESOURCE_URIS = [f"sensor://t{i}/temperature" for i in range(3)] + ["device://health"]
TEMPLATE = "sensor://{driver}/{sensor}/history"
LEVELS = ["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"]
METHODS = ["initialize", "ping", "logging/setLevel", "tools/list", "tools/call", "resources/list",
           "resources/templates/list", "resources/read", "resources/subscribe", "resources/unsubscribe",
           "prompts/list", "prompts/get", "completion/complete"]
NOTIFICATIONS = ["notifications/initialized", "notifications/cancelled", "notifications/progress",
                 "notifications/roots/list_changed", "notifications/disconnected"]


def schema_holds(tool: str, args: dict[str, Any]) -> str | None:
    """The input schema of ``tool`` re-checked by hand (not by jsonschema): None if ``args``
    satisfy it, else why not."""
    def num(x, lo, hi, *, integer=False, exclusive_lo=False):
        if not is_finite_number(x) or (integer and not isinstance(x, int) and not float(x).is_integer()):
            return f"{x!r} is not a finite {'integer' if integer else 'number'}"
        if (x <= lo if exclusive_lo else x < lo) or x > hi:
            return f"{x!r} outside {lo}..{hi}"
        return None

    if tool == "servo_set_angle":
        return num(args.get("angle"), -90, 90)
    if tool == "relay_set":
        if not isinstance(args.get("on"), bool):
            return "on is not a boolean"
        return num(args["channel"], 0, 7, integer=True) if "channel" in args else None
    if tool == "pump_run":
        why = num(args.get("seconds"), 0, 30, exclusive_lo=True)
        if why is None and "times" in args:
            why = num(args["times"], 1, 5, integer=True)
        if why is None and "mode" in args and args["mode"] not in ("pulse", "hold"):
            why = f"mode {args['mode']!r}"
        return why
    return None


def make_server() -> tuple[McpServer, list[str]]:
    """A server like ``tests/test_protocol.py`` builds; the tools record any argument that
    breaks their schema in the returned list (a fuzz failure)."""
    reg = Registry()
    violations: list[str] = []

    def tool(name: str, annotations: dict[str, Any], body):
        async def handler(args, ctx):
            why = schema_holds(name, args)
            if why is not None:
                violations.append(f"{name} ran with {args!r}: {why}")
            return await body(args, ctx)

        reg.add_tool(Tool(name, f"{name} (fuzz)", TOOL_SCHEMAS[name], handler, annotations=annotations))

    async def servo(args, ctx):
        if args["angle"] == 13:
            raise ToolInputError("13 is unlucky")
        return {"angle": args["angle"]}

    async def relay(args, ctx):
        ctx.log("info", f"relay {args.get('channel', 0)} -> {args['on']}")
        return {"on": args["on"]}

    async def pump(args, ctx):
        return f"pumped {args['seconds']} s x{args.get('times', 1)}"

    async def broken(args, ctx):
        raise OSError("I2C bus 1: remote I/O error")

    async def sweep(args, ctx):
        for i in range(1, int(args.get("steps", 2)) + 1):
            ctx.progress(i, 3, f"step {i}")
            await asyncio.sleep(0)
        return None

    destructive = {"readOnlyHint": False, "destructiveHint": True}
    tool("servo_set_angle", destructive, servo)
    tool("relay_set", destructive, relay)
    tool("pump_run", destructive, pump)
    tool("bus_read", {"readOnlyHint": True}, broken)
    tool("slow_sweep", {"readOnlyHint": False}, sweep)

    for i, uri in enumerate(RESOURCE_URIS):
        async def read(i=i):
            return json.dumps({"value": 20.5 + i, "unit": "°C"}, ensure_ascii=False)
        reg.add_resource(Resource(uri, f"r{i}", read))

    async def history(uri, variables):
        if variables["driver"] == "bad":
            raise ValueError("bad window")
        if variables["driver"] not in ("t0", "t1"):
            raise KeyError("no such sensor")
        return json.dumps({"samples": [], "query": variables.get("_query")})

    reg.add_template(ResourceTemplate(TEMPLATE, "history", history,
                                      complete=lambda var, prefix: [x for x in ("t0", "t1") if x.startswith(prefix)]))

    async def render(args):
        if args.get("focus") == "boom":
            raise ValueError("focus must not be boom")
        return "A report", [{"role": "user", "content": {"type": "text", "text": f"focus={args.get('focus')}"}}]

    reg.add_prompt(Prompt("report", "A report", render, [
        PromptArgument("focus", required=True, complete=lambda p: [x for x in ("all", "air", "soil") if x.startswith(p)]),
        PromptArgument("since")]))
    errors: list[tuple[str, BaseException]] = []
    server = McpServer(reg, ServerInfo("edge-agent", "0.0.0-fuzz"), page_size=2,
                       on_tool_error=lambda name, exc: errors.append((name, exc)))
    return server, violations


class Harness:
    """One fresh server and one session; ``out`` collects what the server sends."""

    def __init__(self) -> None:
        self.server, self.violations = make_server()
        self.out: list[dict[str, Any]] = []
        self.session = self.server.open_session("fuzz-client", self.out.append)

    async def settle(self) -> None:
        await settle_all()

    def leaked(self) -> list[Any]:
        """Ids still in the session's in-flight table although their task ended."""
        return [rid for rid, (task, _) in self.session.inflight.items() if task.done()]

    async def feed(self, payload: Any, value: Any) -> list[dict[str, Any]]:
        """Send one message (``payload``: what goes to ``handle``; ``value``: its decoded
        form, or a ``_Undecodable`` marker) and check the answer. Returns the responses."""
        before = len(self.out)
        await self.server.handle(self.session, payload)
        await self.settle()
        sent = self.out[before:]
        assert not self.violations, self.violations
        for msg in sent:
            check_wire(msg)
        responses = [m for m in sent if "method" not in m]
        if isinstance(value, _Undecodable):
            assert len(responses) == 1, f"{len(responses)} answers to undecodable input: {responses}"
            err = responses[0].get("error") or {}
            assert err.get("code") == jsonrpc.PARSE_ERROR and responses[0]["id"] is None, responses
            return responses
        kind, msg_id, exact = expected(value)
        if kind == "none":
            assert not responses, f"answered a notification/response: {responses}"
        else:
            assert len(responses) == 1, f"{len(responses)} answers (want one {kind}): {responses}"
            got = responses[0]
            if kind == "error":
                assert "error" in got, f"an invalid message was accepted: {got}"
                assert got["error"]["code"] in (jsonrpc.INVALID_REQUEST, jsonrpc.PARSE_ERROR), got
            ok = same_id(got["id"], msg_id) or (not exact and got["id"] is None)
            assert ok, f"answer id {got['id']!r}, want {msg_id!r}"
            if "error" in got and kind == "reply":
                assert got["error"]["code"] != jsonrpc.INTERNAL_ERROR, f"internal error for client input: {got}"
        return responses

    async def request(self, method: str, params: dict[str, Any] | None, msg_id: Any) -> dict[str, Any]:
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": msg_id, "method": method}
        if params is not None:
            msg["params"] = params
        (reply,) = await self.feed(json.dumps(msg), msg)
        return reply

    async def initialize(self) -> None:
        r = await self.request("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                              "clientInfo": {"name": "fuzz", "version": "1"}}, "init")
        assert r["result"]["protocolVersion"] == "2025-11-25", r
        await self.feed(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}), {
            "jsonrpc": "2.0", "method": "notifications/initialized"})

    async def still_alive(self) -> None:
        r = await self.request("ping", None, "after-fuzz-ping")
        assert r == {"jsonrpc": "2.0", "id": "after-fuzz-ping", "result": {}}, r


class _Undecodable:
    """Marks an input that is not JSON: the server must answer one -32700 with id null."""


UNDECODABLE = _Undecodable()

# --------------------------------------------------------------------------- event loop

_loop: asyncio.AbstractEventLoop | None = None
_loop_errors: list[dict[str, Any]] = []
_created: list[asyncio.Task] = []  # every task of the current example (a task factory records them)
_runners: set[asyncio.Task] = set()  # the example's own driver tasks


def _task_factory(loop, coro, **kwargs):
    task = asyncio.Task(coro, loop=loop, **kwargs)
    _created.append(task)
    return task


def known(exc: BaseException) -> str:
    """``"Kn: "`` when ``exc`` is the signature of a known bug a general property may run into
    by itself (the bench then labels the failure), else ``""``."""
    if isinstance(exc, RecursionError):
        return "K1: "
    if isinstance(exc, UnicodeEncodeError) and "surrogates" in str(exc):
        return "K2: "
    return ""


def raise_task_errors() -> None:
    """Fail if any task of the example ended with an exception (a request task that crashed
    sends no answer; the real agent only logs "Task exception was never retrieved")."""
    for task in _created:
        if task.done() and task not in _runners and not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            raise AssertionError(f"{known(exc)}a task spawned by the code under test raised {exc!r}") from exc


async def settle_all() -> None:
    """Wait until every task of the example has finished; re-raise what one raised."""
    for _ in range(200):
        await asyncio.sleep(0)
        raise_task_errors()
        pending = [t for t in _created if not t.done() and t not in _runners]
        if not pending:
            return
        await asyncio.wait(pending)
    raise AssertionError("tasks keep spawning tasks")


def run(coro_fn) -> None:
    """Run ``coro_fn()`` on a long-lived loop, bounded by EXAMPLE_TIMEOUT; fail on errors the
    loop saw (an exception in a task nobody awaited, a callback that raised)."""
    global _loop
    if _loop is None or _loop.is_closed():
        _loop = asyncio.new_event_loop()
        _loop.set_exception_handler(lambda loop, ctx: _loop_errors.append(ctx))
        _loop.set_task_factory(_task_factory)
    _loop_errors.clear()
    _created.clear()
    _runners.clear()

    async def body():
        _runners.add(asyncio.current_task())
        await coro_fn()
        await settle_all()

    async def bounded():
        _runners.add(asyncio.current_task())
        try:
            await asyncio.wait_for(body(), EXAMPLE_TIMEOUT)
        except asyncio.TimeoutError:
            raise AssertionError(f"no answer within {EXAMPLE_TIMEOUT} s: the server hangs") from None

    try:
        _loop.run_until_complete(bounded())
    except (RecursionError, UnicodeEncodeError) as exc:
        if not known(exc):
            raise
        raise AssertionError(f"{known(exc)}raised out of the code under test: {exc!r}") from exc
    finally:
        leftovers = [t for t in _created if not t.done()]
        for task in leftovers:
            task.cancel()
        if leftovers:
            _loop.run_until_complete(asyncio.wait(leftovers))
    if _loop_errors:
        ctx = _loop_errors[0]
        raise AssertionError(f"the event loop saw an error: {ctx.get('message')}: {ctx.get('exception')!r}")


def decoded(payload: bytes | str) -> Any:
    """What a correct decoder makes of ``payload``: the JSON value, or UNDECODABLE."""
    try:
        return json.loads(payload)
    except (ValueError, RecursionError):
        return UNDECODABLE


def scenario(inputs: list[tuple[Any, Any]]) -> None:
    async def go():
        h = Harness()
        await h.initialize()
        for payload, value in inputs:
            await h.feed(payload, value)
        await h.still_alive()
    run(go)


# --------------------------------------------------------------------------- strategies

ids = st.integers() | st.integers(-2**63, 2**63) | st.text(max_size=12)
# requestId of notifications/cancelled: hashable JSON only (a list/object id is known bug K3).
hashable_json = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
numbers = (st.integers(-200, 200) | st.floats(allow_nan=False) | st.floats(-100, 100, allow_nan=False)
           | st.sampled_from([-90, 90, -90.0000001, 90.0000001, 13, 0, -0.0, 1e308, -1e308]))
anything = json_values


def opt(d: dict[str, st.SearchStrategy]) -> st.SearchStrategy:
    return st.fixed_dictionaries({}, optional=d)


arguments = opt({"angle": numbers | anything, "on": st.booleans() | anything, "channel": numbers | anything,
                 "seconds": numbers | anything, "times": numbers | anything,
                 "mode": st.sampled_from(["pulse", "hold", "PULSE"]) | anything,
                 "label": st.text(max_size=15) | anything, "steps": st.integers(-1, 4) | anything,
                 "extra": anything})
uris = (st.sampled_from(RESOURCE_URIS)
        | st.builds(lambda d, s, q: f"sensor://{d}/{s}/history" + (f"?{q}" if q is not None else ""),
                    st.sampled_from(["t0", "t1", "t9", "bad"]) | st.text(max_size=5), st.text(max_size=5),
                    st.none() | st.text(max_size=8))
        | st.text(max_size=20))
cursors = (st.builds(lambda n: base64.urlsafe_b64encode(str(n).encode()).decode(), st.integers(-3, 12))
           | st.text(max_size=8))
meta = opt({"progressToken": ids, "io.edge-agent/deadline": st.floats(-1e10, 1e10, allow_nan=False)
            | st.integers(-2**40, 2**40) | st.sampled_from(["2000-01-01T00:00:00Z", "2999-01-01T00:00:00+00:00"])
            | st.text(max_size=10), "other": anything})
PARAMS: dict[str, st.SearchStrategy] = {
    "initialize": opt({"protocolVersion": st.sampled_from(["2025-11-25", "2024-11-05", "1999-01-01"]) | anything,
                       "capabilities": json_objects, "clientInfo": opt({"name": st.text(max_size=8),
                                                                         "version": st.text(max_size=4)})}),
    "logging/setLevel": opt({"level": st.sampled_from(LEVELS) | anything}),
    "tools/call": opt({"name": st.sampled_from(TOOL_NAMES) | st.text(max_size=10),
                       "arguments": arguments | st.none() | anything, "_meta": meta | st.none()}),
    "resources/read": opt({"uri": uris | anything}),
    "resources/subscribe": opt({"uri": uris | anything}),
    "resources/unsubscribe": opt({"uri": uris | anything}),
    "prompts/get": opt({"name": st.sampled_from(["report", "nope"]) | st.text(max_size=6),
                        "arguments": st.dictionaries(st.sampled_from(["focus", "since", "x"]),
                                                     st.sampled_from(["all", "boom"]) | st.text(max_size=5), max_size=3)
                        | st.none() | anything}),
    "completion/complete": opt({
        "ref": opt({"type": st.sampled_from(["ref/prompt", "ref/resource", "ref/other"]),
                    "name": st.sampled_from(["report", "nope"]) | st.text(max_size=5),
                    "uri": st.sampled_from([TEMPLATE, "sensor://x"]) | st.text(max_size=5)}),
        "argument": opt({"name": st.sampled_from(["focus", "driver", "x"]) | st.text(max_size=5),
                         "value": st.text(max_size=5)})}),
    "notifications/cancelled": opt({"requestId": hashable_json, "reason": st.text(max_size=8)}),
    "notifications/progress": opt({"progressToken": ids, "progress": numbers}),
}
for _m in ("tools/list", "resources/list", "resources/templates/list", "prompts/list"):
    PARAMS[_m] = opt({"cursor": cursors | st.none()})


@st.composite
def rpc_message(draw) -> dict[str, Any]:
    """A structurally valid JSON-RPC message (request or notification), method-aware params."""
    method = draw(st.sampled_from(METHODS + NOTIFICATIONS) | st.text(min_size=1, max_size=12))
    msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if draw(st.booleans()) or method in METHODS and draw(st.integers(0, 3)):
        msg["id"] = draw(ids)
    choice = draw(st.integers(0, 5))
    if choice == 0:
        pass  # no params
    elif choice == 1:
        msg["params"] = draw(json_objects.filter(lambda d: "requestId" not in d or d["requestId"] is None
                                                 or isinstance(d["requestId"], (str, int, float, bool))))
    else:
        msg["params"] = draw(PARAMS.get(method, opt({"x": anything})))
    return msg


@st.composite
def mutated_message(draw) -> dict[str, Any]:
    """A valid-looking message with its envelope broken in one place."""
    msg = draw(rpc_message())
    key = draw(st.sampled_from(["jsonrpc", "id", "method", "params", "result", "error"]))
    if draw(st.booleans()):
        msg.pop(key, None)
    else:
        msg[key] = draw(anything)
    return msg


ABSENT = object()


@st.composite
def envelopes(draw) -> dict[str, Any]:
    """Every envelope field from a mix of valid and typical invalid values (or absent), so the
    corners of the JSON-RPC rules (bool ids, empty methods, list params...) come up often."""
    fields = {  # (valid or absent, invalid), each drawn half the time
        "jsonrpc": (st.just("2.0"), st.sampled_from(["1.0", "2", 2.0, None, ABSENT])),
        "id": (ids | st.just(ABSENT), st.sampled_from([True, False, None, 1.5, -0.0, [], {}, [1]])),
        "method": (st.sampled_from(METHODS + NOTIFICATIONS + [ABSENT]), st.sampled_from(["", 5, None, ["ping"]])),
        "params": (json_objects | st.just(ABSENT), st.sampled_from([[], [1], "x", 0, None])),
        "result": (st.just(ABSENT), st.sampled_from([{}, None, 1])),
        "error": (st.just(ABSENT), st.sampled_from([{"code": 1, "message": "x"}, None])),
    }
    msg = {k: draw(bad if draw(st.booleans()) else good) for k, (good, bad) in fields.items()}
    return {k: v for k, v in msg.items() if v is not ABSENT}


def as_payload(draw, value: Any) -> Any:
    """``value`` as a transport hands it over: JSON text, UTF-8 bytes, or an already-decoded dict."""
    form = draw(st.integers(0, 2))
    if form == 0 and isinstance(value, dict):
        return value
    text = json.dumps(value, ensure_ascii=draw(st.booleans()))
    return text.encode() if form == 1 else text


@st.composite
def tool_call(draw) -> dict[str, Any]:
    """A tools/call request of a known tool with arguments near and past its schema's bounds
    (a request drawn by rpc_message() reaches a tool with such arguments about once in a
    thousand sequences: too rare to notice a server that stopped validating)."""
    return {"jsonrpc": "2.0", "id": draw(ids), "method": "tools/call",
            "params": {"name": draw(st.sampled_from(TOOL_NAMES)), "arguments": draw(arguments)}}


@st.composite
def message_sequences(draw) -> list[tuple[Any, Any]]:
    values = draw(st.lists(rpc_message() | mutated_message() | envelopes() | anything | tool_call(),
                           min_size=1, max_size=4))
    return [(as_payload(draw, v), v) for v in values]


@st.composite
def json_value_inputs(draw) -> list[tuple[Any, Any]]:
    value = draw(anything | envelopes() | st.dictionaries(
        st.sampled_from(["jsonrpc", "id", "method", "params", "result", "error"]), anything | st.just("2.0"), max_size=6))
    return [(as_payload(draw, value), value)]


def mutate_bytes(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    out = bytearray(data)
    for op, pos, byte in edits:
        if not out:
            out.append(byte)
            continue
        pos %= len(out)
        if op == 0:
            out[pos] = byte
        elif op == 1:
            out.insert(pos, byte)
        else:
            del out[pos]
    return bytes(out)


@st.composite
def raw_bytes(draw) -> bytes:
    """Arbitrary bytes, and near-misses: valid messages with bytes flipped, inserted, deleted."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=200))
    base = json.dumps(draw(rpc_message() | envelopes())).encode()
    edits = draw(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4))
    return mutate_bytes(base, edits)


# --------------------------------------------------------------------------- checks

def check_decode(payload: bytes) -> None:
    try:
        msg = jsonrpc.decode(payload)
    except RpcError as err:
        assert err.code in (jsonrpc.PARSE_ERROR, jsonrpc.INVALID_REQUEST), err.code
        assert isinstance(err.message, str) and err.message
        assert err.data is None or (set(err.data) == {"id"} and valid_id(err.data["id"])), err.data
        return
    assert isinstance(msg, dict) and msg["jsonrpc"] == "2.0"
    assert expected(msg)[0] != "error", f"decode accepted an invalid message {msg!r}"


def check_check(value: Any) -> None:
    kind, msg_id, exact = expected(value)
    try:
        msg = jsonrpc.check(value)
    except RpcError as err:
        assert kind == "error", f"check rejected a valid message {value!r}: {err.message}"
        assert err.code == jsonrpc.INVALID_REQUEST
        got = err.data.get("id") if isinstance(err.data, dict) else None
        assert same_id(got, msg_id) or (not exact and got is None), (got, msg_id)
        return
    assert kind != "error", f"check accepted an invalid message {value!r}"
    assert msg is value


def check_server_bytes(payload: bytes) -> None:
    scenario([(payload, decoded(payload))])


def check_server_inputs(inputs: list[tuple[Any, Any]]) -> None:
    scenario(inputs)


def check_concurrent(batch: tuple[list[dict[str, Any]], list[int]]) -> None:
    """Requests sent without waiting (unique ids), some cancelled at once: every request gets
    at most one answer, and exactly one unless it was cancelled."""
    requests, cancel_idx = batch

    async def go():
        h = Harness()
        await h.initialize()
        cancelled = set()
        for r in requests:
            await h.server.handle(h.session, json.dumps(r))
        for i in cancel_idx:
            rid = requests[i % len(requests)]["id"]
            cancelled.add(rid)
            await h.server.handle(h.session, json.dumps({"jsonrpc": "2.0", "method": "notifications/cancelled",
                                                         "params": {"requestId": rid}}))
        await h.settle()
        for msg in h.out:
            check_wire(msg)
        for r in requests:
            answers = [m for m in h.out if "method" not in m and same_id(m.get("id"), r["id"])]
            assert len(answers) <= 1, f"{len(answers)} answers to {r}"
            if r["id"] not in cancelled:
                assert len(answers) == 1, f"no answer to {r}"
        assert not h.violations, h.violations
        await h.still_alive()
    run(go)


@st.composite
def concurrent_batches(draw):
    msgs = draw(st.lists(rpc_message().filter(lambda m: m["method"] in METHODS),
                         min_size=1, max_size=6))
    for i, m in enumerate(msgs):
        m["id"] = f"r{i}"  # unique: a duplicate in-flight id is dropped on purpose (QoS 1 redelivery)
    return msgs, draw(st.lists(st.integers(0, 5), max_size=3))


# ---- known bugs (each a strict xfail in CI; see the module's report in bench/fuzz.py)

def nested(depth: int, opener: str, wrap: bool) -> bytes:
    """``[[[...1...]]]`` (or ``{"a":{"a":...}}``) ``depth`` deep, alone or inside a request's params."""
    closer = "]" if opener == "[" else "}"
    body = opener * depth + "1" + closer * depth
    if wrap:
        body = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"bus_read","arguments":{"x":' + body + "}}}"
    return body.encode()


# (depth, opener, wrapped in a request): small to print, built in the check
deep_nesting = st.tuples(st.integers(1_000, 200_000), st.sampled_from(["[", '{"a":']), st.booleans())


def check_server_nested(spec: tuple[int, str, bool]) -> None:
    check_server_bytes(nested(*spec))


surrogate_text = st.builds(lambda a, s, b: a + s + b, st.text(max_size=4),
                           st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), st.text(max_size=4))


@st.composite
def surrogate_messages(draw) -> list[tuple[Any, Any]]:
    """A message carrying a lone surrogate (legal as a JSON ``\\udXXX`` escape, not in UTF-8)
    where the server echoes text back: the method, the id, a tool/prompt name, a URI."""
    s = draw(surrogate_text)
    msg = draw(st.sampled_from([
        {"jsonrpc": "2.0", "id": 1, "method": s},
        {"jsonrpc": "2.0", "id": s, "method": "ping"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": s}},
        {"jsonrpc": "2.0", "id": 3, "method": "resources/read", "params": {"uri": s}},
        {"jsonrpc": "2.0", "id": 4, "method": "prompts/get", "params": {"name": "report", "arguments": {"focus": s}}},
        {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "pump_run",
                                                                       "arguments": {"seconds": 1, "label": s}}},
    ]))
    return [(json.dumps(msg), msg)]


def check_nan_never_reaches_a_tool(value: float) -> None:
    """``NaN`` is not JSON, yet Python's json (and any CBOR peer) yields it: it must not pass
    ``minimum``/``maximum`` and reach a servo."""
    msg = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "servo_set_angle",
                                                                        "arguments": {"angle": value}}}
    scenario([(msg, msg)])


def check_unhashable_request_id(request_id: Any) -> None:
    msg = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": request_id}}
    scenario([(json.dumps(msg), msg)])


def check_no_leak_after_cancel(batch: tuple[list[dict[str, Any]], list[int]]) -> None:
    """Cancelling requests (even before their task ran) leaves nothing in the session's
    in-flight table, so the table cannot grow without bound and ids are not blocked."""
    requests, cancel_idx = batch

    async def go():
        h = Harness()
        await h.initialize()
        for r in requests:
            await h.server.handle(h.session, json.dumps(r))
        for i in cancel_idx:
            await h.server.handle(h.session, json.dumps({"jsonrpc": "2.0", "method": "notifications/cancelled",
                                                         "params": {"requestId": requests[i % len(requests)]["id"]}}))
        await h.settle()
        await asyncio.sleep(0)
        assert not h.leaked(), f"cancelled request ids stuck in flight: {h.leaked()}"
    run(go)


@st.composite
def malformed_params(draw) -> list[tuple[Any, Any]]:
    """Params of the right method but the wrong inner type: a client mistake, to be answered
    -32602, not -32603 Internal error (which also logs a traceback per message)."""
    odd = draw(st.lists(st.integers(), max_size=2) | st.text(max_size=3) | st.integers()
               | st.dictionaries(st.text(max_size=2), st.integers(), min_size=1, max_size=1).map(lambda d: [d]))
    msg = draw(st.sampled_from([
        {"jsonrpc": "2.0", "id": 1, "method": "completion/complete", "params": {"ref": odd}},
        {"jsonrpc": "2.0", "id": 1, "method": "completion/complete",
         "params": {"ref": {"type": "ref/prompt"}, "argument": odd}},
        {"jsonrpc": "2.0", "id": 1, "method": "completion/complete",
         "params": {"ref": {"type": "ref/prompt", "name": [odd]}}},
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "servo_set_angle", "arguments": {"angle": 10},
                                                                       "_meta": {"io.edge-agent/deadline": 10 ** 400}}},
    ]))
    return [(msg, msg)]


PROPERTIES = [
    Property("jsonrpc.decode", "bytes decode to one message or RpcError -32700/-32600", raw_bytes(), check_decode, 200),
    Property("jsonrpc.check", "any JSON value: a message or RpcError -32600 with the readable id",
             json_values | mutated_message() | rpc_message() | envelopes(), check_check, 200),
    Property("McpServer.handle", "arbitrary bytes: one -32700/-32600 answer or the message's answer",
             raw_bytes(), check_server_bytes, 100),
    Property("McpServer.handle", "arbitrary JSON values (text, bytes or decoded dict)",
             json_value_inputs(), check_server_inputs, 100),
    Property("McpServer.handle", "valid/mutated JSON-RPC sequences: one answer per request, right id, ping after",
             message_sequences(), check_server_inputs, 150),
    Property("McpServer.handle", "concurrent requests and cancellations: at most one answer each",
             concurrent_batches(), check_concurrent, 50),
    Property("McpServer.handle", "deeply nested JSON is a parse error, not an exception",
             deep_nesting, check_server_nested, 10),
    Property("McpServer.handle", "replies to text with lone surrogates are encodable",
             surrogate_messages(), check_server_inputs, 30),
    Property("McpServer.handle", "NaN never passes a tool's minimum/maximum",
             st.just(math.nan) | st.floats(allow_infinity=False).map(lambda x: math.nan), check_nan_never_reaches_a_tool, 5),
    Property("McpServer.handle", "notifications/cancelled with a list/object requestId",
             st.lists(st.integers(), max_size=2) | st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
             check_unhashable_request_id, 10),
    Property("McpServer.handle", "a cancelled request leaves no in-flight entry",
             concurrent_batches().filter(lambda b: b[1]), check_no_leak_after_cancel, 20),
    Property("McpServer.handle", "wrongly typed params are -32602, never -32603 Internal error",
             malformed_params(), check_server_inputs, 30),
]

for _p in PROPERTIES:
    _name = "test_fuzz_" + "".join(c if c.isalnum() else "_" for c in f"{_p.target}_{_p.name}").lower()[:80]
    globals()[_name] = ci_test(_p)
del _p, _name
