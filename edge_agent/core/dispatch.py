# The request engine of an MCP server: one message in, answers out. It owns the rules every
# server of ours follows, on the Pi and on the board: JSON-RPC checks, the method table,
# "initialize first", requests as tasks (so a slow tool blocks nobody and can be cancelled),
# a request id answered once (a QoS 1 redelivery of an in-flight request is dropped),
# cancellation without a response, and a failing handler that never takes the server down.
# Sources: MCP 2025-11-25 basic/lifecycle, basic/utilities/cancellation; JSON-RPC 2.0.
# Runs on CPython and MicroPython (asyncio.create_task, Task.cancel, CancelledError).
import asyncio

from . import jsonrpc, lifecycle
from .jsonrpc import INTERNAL_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, TOO_MANY_REQUESTS, RpcError
from .methods import MethodTable

Flag = asyncio.Event  # a request's cancelled flag: set() / is_set()


class Request:
    """One request being answered: ``id``, ``method``, ``params`` (dict), ``cancelled`` (a
    flag with ``set()``/``is_set()``: an ``asyncio.Event``, on the Pi a ``threading.Event``
    so tools running in worker threads can see it), ``deadline`` (Unix s after which the transport says it
    expired, or None)."""

    __slots__ = ("id", "method", "params", "cancelled", "deadline")

    def __init__(self, mid, method, params, cancelled, deadline):
        self.id = mid
        self.method = method
        self.params = params
        self.cancelled = cancelled
        self.deadline = deadline


class Dispatcher:
    """Serves the methods of :attr:`table` to :attr:`sessions`.

    Subclasses give :meth:`emit` (send one message to a session) and may override the hooks
    :meth:`authorize`, :meth:`replay`, :meth:`answered`, :meth:`changed`,
    :meth:`on_notification`, :meth:`new_flag` and :meth:`log_error`. ``initialize``, ``ping``
    and ``logging/setLevel`` are served here; the rest is added to :attr:`table`."""

    server_info = {"name": "edge-agent", "version": "0"}
    instructions = None
    # Requests one session may have in flight (being answered, or their answer being sent:
    # the entries of session.inflight); one more is answered at once with TOO_MANY_REQUESTS
    # (-32004). None: unbounded.
    max_inflight = None  # type: int | None

    def __init__(self):
        self.table = MethodTable()
        self.sessions = {}
        self.table.add("initialize", self._initialize)
        self.table.add("ping", self._ping)

    # ------------------------------------------------------------------ hooks
    async def emit(self, session, msg):
        raise NotImplementedError

    def authorize(self, session, method):
        """Raise RpcError(FORBIDDEN) if ``session`` may not call ``method`` (a Method)."""

    async def replay(self, session, msg):
        """True if ``msg`` (a request not in flight) was answered again from a cache."""
        return False

    def answered(self, session, msg, reply):
        """Called with each reply just before it is sent."""

    def changed(self, session, closed=False):
        """What a persisted copy of ``session`` holds changed (or it closed)."""

    def on_notification(self, session, method, params):
        """A notification other than initialized/cancelled (roots/list_changed, progress...)."""

    def new_flag(self):
        return Flag()

    def log_error(self, method, exc):
        print("internal error in %s: %r" % (method, exc))

    def capabilities(self):
        return self.table.capabilities()

    # ------------------------------------------------------------------ sessions
    def cancel_all(self, session):
        """Cancel every in-flight request of ``session`` (no responses are sent)."""
        for task, req in list(session.inflight.values()):
            req.cancelled.set()
            task.cancel()
        session.inflight.clear()

    # ------------------------------------------------------------------ entry point
    async def handle(self, session, payload, deadline=None):
        """Handle one incoming message of ``session``: bytes/str JSON or an already decoded
        value (from CBOR). Never raises for bad input: not JSON -32700, not a JSON-RPC message
        -32600 (answered when its id could be read), unknown method -32601, a request before
        initialize -32600. ``deadline``: Unix time (s) after which the message expired."""
        try:
            msg = jsonrpc.check(payload) if not isinstance(payload, (bytes, bytearray, str)) \
                else jsonrpc.decode(payload)
        except RpcError as err:
            await self.emit(session, jsonrpc.error(jsonrpc.error_id(err), err))
            return
        if "method" not in msg:
            return  # a response: these servers send no requests
        if "id" not in msg:
            self.notification(session, msg)
            return
        mid = msg["id"]
        if mid in session.inflight:
            return  # a QoS 1 redelivery of a request being answered: its answer is on its way
        if await self.replay(session, msg):
            return
        n = self.max_inflight
        if n is not None and len(session.inflight) >= n:
            await self.emit(session, jsonrpc.error(mid, RpcError(
                TOO_MANY_REQUESTS, "Too many requests in flight (%d): retry after an answer" % n)))
            return
        req = Request(mid, msg["method"], msg.get("params") or {}, self.new_flag(), deadline)
        session.inflight[mid] = (asyncio.create_task(self._run(session, msg, req)), req)

    def notification(self, session, msg):
        method = msg["method"]
        params = msg.get("params") or {}
        if method == "notifications/initialized":
            if session.state == lifecycle.INITIALIZING:
                session.state = lifecycle.READY
                self.changed(session)
        elif method == "notifications/cancelled":
            rid = params.get("requestId")
            entry = session.inflight.pop(rid, None) if jsonrpc.is_id(rid) else None
            if entry is not None:  # popped now: a task cancelled before it ran never cleans up
                entry[1].cancelled.set()
                entry[0].cancel()
        else:
            self.on_notification(session, method, params)

    async def _run(self, session, msg, req):
        try:
            reply = await self.answer(session, req)
        except asyncio.CancelledError:
            reply = None
        finally:  # (a MemoryError out of answer() must not keep the request in flight forever)
            entry = session.inflight.get(req.id)
            if entry is not None and entry[1] is req:
                del session.inflight[req.id]  # before replying: the client may reuse the id at once
        if reply is None or req.cancelled.is_set():
            return  # cancelled: no response (basic/utilities/cancellation)
        self.answered(session, msg, reply)
        if self.table.durable(req.method):
            # persisted BEFORE the answer leaves: a client holding the answer (a subscription,
            # an initialized session) can count on it surviving a crash right after
            self.changed(session)
        # while its answer is sent it still counts for max_inflight, under a key that is no id
        session.inflight[req] = entry
        try:
            await self.emit(session, reply)
        except Exception as exc:  # a send failure is the transport's to report
            self.log_error("send", exc)
        finally:
            session.inflight.pop(req, None)

    async def answer(self, session, req):
        """The response to ``req`` (a dict), or None when it was cancelled."""
        try:
            method = self.table.get(req.method)
            if method is None:
                raise RpcError(METHOD_NOT_FOUND, "Method not found: " + jsonrpc.quote(req.method))
            if not session.initialized and not method.before_init:
                raise RpcError(INVALID_REQUEST, "Session not initialized: send initialize before " + req.method)
            self.authorize(session, method)
            result = await method.handler(session, req.params, req)
        except RpcError as err:
            return jsonrpc.error(req.id, err)
        except asyncio.CancelledError:
            return None
        except Exception as exc:  # a bug in a handler must not take the server down
            self.log_error(req.method, exc)
            return jsonrpc.error(req.id, RpcError(INTERNAL_ERROR, "Internal error in %s: %s" % (req.method, exc)))
        return jsonrpc.result(req.id, result)

    # ------------------------------------------------------------------ lifecycle methods
    async def _initialize(self, session, params, req):
        return lifecycle.initialize(session, params, self.server_info, self.capabilities(), self.instructions)

    async def _ping(self, session, params, req):
        return {}

    async def set_level(self, session, params, req):
        """logging/setLevel, for servers that add it to their table."""
        from .loglevel import set_level
        return set_level(session, params)
