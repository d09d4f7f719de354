"""An MCP server endpoint: the protocol core (:mod:`edge_agent.server`) bound to the MQTT
transport (:mod:`edge_agent.mqtt.server`).

It owns the mapping mcp-client-id → session and the lifecycle rules of the MQTT binding:
``initialize`` arrives on the control topic and opens (or re-opens) a session; the client's
topics are subscribed before the answer; later traffic comes on the RPC topic;
``notifications/disconnected`` (on the RPC topic or the client's presence) or an empty
presence closes the session. Source: mqtt-ai/mcp-over-mqtt ``mqtt_transport.md``,
"Initialization" and "Shutdown".

With a :class:`~edge_agent.device.store.Store` and ``persist_sessions``, initialized sessions (with
their subscriptions, log level and payload encoding) are written to SQLite and restored at
start, so a client keeps calling across an agent restart without a new ``initialize``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from typing import Any

from edge_agent.core import binding, jsonrpc
from edge_agent.core.jsonrpc import PARSE_ERROR, TOO_MANY_REQUESTS, RpcError
from edge_agent.device import identity
from edge_agent.device.janitor import SessionJanitor
from edge_agent.device.journal import ReplyJournal, set_done
from edge_agent.device.store import Store
from edge_agent.mqtt import codec
from edge_agent.mqtt.server import Incoming, MqttServerTransport
from edge_agent.server import modern
from edge_agent.server.mcp import McpServer, Session

log = logging.getLogger(__name__)


PROTOCOL_VERSIONS = "protocolVersions"
"""Presence meta key (our extension, docs/architecture.md "Session-less MCP over MQTT"): the
MCP versions this server serves; a 2026-07-28 entry says it answers ``server/discover`` and
per-request ``_meta`` requests on its control topic."""


class Endpoint:
    """Serves one :class:`McpServer` over one :class:`MqttServerTransport`.

    Build with :meth:`create`, which constructs the transport with this endpoint's callbacks.
    """

    def __init__(self, server: McpServer, store: Store | None = None, persist_sessions: bool = False,
                 session_max_age: float = 86400):
        self.server = server
        self.store = store
        self.persist = persist_sessions and store is not None
        self.session_max_age = session_max_age
        self.transport: MqttServerTransport | None = None
        self._tasks: set[asyncio.Task] = set()
        self.refused = 0  # initializes refused by a token check (missing, bad, another subject's id)
        self._pending: dict[str, int] = {}  # client id -> its requests being handled (tasks)
        self._refusals = 0  # requests refused at the door by the per-client in-flight bound
        self._answer_acks: dict[tuple[str, str], asyncio.Future[Any]] = {}  # (client, request id) -> PUBACK
        self._unsaved: set[str] = set()  # sessions whose changed copy is not known to be on disk
        self.journal: ReplyJournal | None = None  # the durable reply cache (ack_when_handled)
        self.janitor = SessionJanitor(sessions=lambda: self.server.sessions, close=self._reaped,
                                      send=lambda cid, m: self._sender(cid)(m))

    @classmethod
    def create(cls, server: McpServer, *, store: Store | None = None, **transport_kwargs: Any) -> "Endpoint":
        settings = transport_kwargs.get("settings")
        ep = cls(server, store, persist_sessions=bool(settings and settings.persist_sessions),
                 session_max_age=settings.session_max_age if settings else 86400)
        transport_kwargs.setdefault("collision_hint", identity.collision_hint)
        if isinstance(transport_kwargs.get("meta"), dict):  # our extension: who may skip initialize
            transport_kwargs["meta"].setdefault(PROTOCOL_VERSIONS, modern.all_versions())
        ep.transport = MqttServerTransport(on_control=ep.on_control, on_rpc=ep.on_rpc,
                                           on_client_gone=ep.on_client_gone, store=store, **transport_kwargs)
        server.broadcast = ep.transport.send_capability
        if settings is not None and settings.ack_when_handled and store is not None:
            ep.journal = ReplyJournal(store, lambda: server.registry.tools, max_entries=settings.reply_store_max,
                                      ttl=settings.reply_ttl, resend=ep._resend)
            server.reply_store = ep.journal
        if settings is not None:
            server.deadline_skew = settings.deadline_skew
            server.max_inflight = settings.max_inflight_per_client
            j = ep.janitor
            j.max_sessions, j.init_grace = settings.max_sessions, settings.session_init_grace
            j.probe_idle, j.probe_timeout = settings.session_probe_idle, settings.session_probe_timeout
            j.interval = max(0.05, min(30.0, settings.session_probe_idle / 2, settings.session_init_grace / 2))
        ep.transport.session_counters = lambda: ep.janitor.counters.as_dict(live=len(server.sessions),
                                                                            bound=ep.janitor.max_sessions)
        if ep.persist:
            server.on_session_change = ep._persist
            server.before_send = ep._saved
        return ep

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _sender(self, client_id: str):
        transport = self.transport
        assert transport is not None
        journal = self.journal
        if journal is None:
            return lambda m: transport.send_rpc(client_id, m)

        store = self.store

        def send(message: dict[str, Any]) -> None:
            if "method" in message or store is None or not journal.keeps(client_id, message):
                transport.send_rpc(client_id, message)
                return
            # an answer the durable reply cache keeps: committed there first (its only copy on
            # disk: no outbox row), then sent under its own sequence number; the request is
            # acknowledged after this answer's PUBACK (_handled), so a crash before it makes the
            # broker send the request again and the cache answer it, same seq (no second run)
            seq = transport.next_seq()
            journal.sent(client_id, message, seq)
            acked = self._answer_ack(client_id, message.get("id"))
            loop = asyncio.get_running_loop()
            out = functools.partial(transport.send_rpc, client_id, message, seq=seq, acked=acked)
            store.after_write(lambda: loop.call_soon_threadsafe(out), urgent=True)
        return send

    def _answer_ack(self, client_id: str, request_id: Any) -> asyncio.Future[Any]:
        """A future the PUBACK of the answer to ``request_id`` resolves (see :meth:`_handled`)."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._answer_acks[(client_id, json.dumps(request_id))] = fut
        return fut

    def _resend(self, client_id: str, reply: dict[str, Any], seq: int | None) -> int | None:
        """The durable reply cache answers a repeat: under ``seq`` (the first answer's), or as a new answer."""
        assert self.transport is not None
        if seq is None:
            self._sender(client_id)(reply)
            return None
        return self.transport.send_rpc(client_id, reply, seq=seq, acked=self._answer_ack(client_id, reply.get("id")))

    # ---------------------------------------------------------------- persistence
    def _persist(self, session: Session, closed: bool) -> None:
        assert self.store is not None and self.transport is not None
        if closed:
            self.store.session_delete(session.id)
        elif self.server.sessions.get(session.id) is not session:
            return  # closed meanwhile (its client left): never written back
        elif session.initialized:
            data = session.snapshot()
            data["encoding"] = self.transport.encodings.get(session.id)
            self.store.session_put(session.id, data)
            self._unsaved.add(session.id)

    async def _saved(self, session: Session) -> None:
        """Before an answer leaves: the session's changed copy is on disk (a client holding the
        answer to an initialize or a subscribe can count on it surviving a crash)."""
        if session.id in self._unsaved and self.store is not None:
            self._unsaved.discard(session.id)
            loop = asyncio.get_running_loop()
            done = loop.create_future()
            self.store.after_write(lambda: loop.call_soon_threadsafe(set_done, done), urgent=True)
            await done

    def restore_sessions(self) -> int:
        """Re-create stored sessions and make the transport serve their topics. Returns how many."""
        if not self.persist:
            return 0
        assert self.store is not None and self.transport is not None
        n = 0
        for client_id, data in self.store.sessions(max_age=self.session_max_age):
            self.server.restore_session(client_id, data, self._sender(client_id))
            if data.get("encoding") in codec.ENCODINGS:
                self.transport.encodings[client_id] = data["encoding"]
            self.transport.clients.add(client_id)  # subscribed on connect
            n += 1
        if n:
            log.info("restored %d MCP session(s) from the store", n)
        return n

    # ---------------------------------------------------------------- decoding
    def _decode(self, client_id: str, payload: bytes, incoming: Incoming) -> dict[str, Any] | None:
        """Decode a payload per its Content Type; answer undecodable requests with -32700."""
        try:
            value = codec.decode(payload, incoming.content_type)
        except ValueError as exc:
            assert self.transport is not None
            self.transport.stats.malformed += 1
            self.transport.send_rpc(client_id, jsonrpc.error(None, RpcError(PARSE_ERROR, f"Parse error: {exc}")))
            return None
        try:
            return jsonrpc.check(value)
        except RpcError as err:
            assert self.transport is not None
            msg_id = err.data.get("id") if isinstance(err.data, dict) else None
            err.data = None
            self.transport.send_rpc(client_id, jsonrpc.error(msg_id, err))
            return None

    # ---------------------------------------------------------------- callbacks (event loop)
    def on_control(self, client_id: str, payload: bytes, incoming: Incoming | None = None) -> None:
        incoming = incoming or Incoming()
        work = self._control(client_id, payload, incoming)
        self._spawn(work if incoming.ack is None else self._then_ack(work, incoming))

    async def _control(self, client_id: str, payload: bytes, incoming: Incoming) -> Any:
        # (returns False when its answer was not acknowledged: see _handled and _then_ack)
        transport = self.transport
        assert transport is not None
        if incoming.content_type in codec.ENCODINGS:
            transport.encodings[client_id] = incoming.content_type
        msg = self._decode(client_id, payload, incoming)
        if msg is None:
            return
        live = self.server.sessions.get(client_id)
        if incoming.redelivered and live is not None and live.initialized and binding.opens_session(msg):
            # the broker sent the initialize of a live session again (its PUBACK was lost with a
            # connection, or the agent crashed before it): answer it again, and keep the session
            # and what runs in it (requests redelivered with it must not meet a fresh session)
            await self.server.handle(Session(client_id, self._sender(client_id)), msg)
            return
        sessionless = not binding.opens_session(msg) and modern.is_modern_request(msg)
        if not sessionless and not binding.opens_session(msg):
            refusal = binding.control_refusal(msg)
            if refusal is not None:
                transport.send_rpc(client_id, refusal)
            return
        if incoming.content_type not in codec.ENCODINGS:
            transport.encodings.pop(client_id, None)
        try:  # a signed token in params._meta: role and subject (docs/security.md); before any eviction
            admission = self.server.admit(client_id, msg.get("params"))  # (session-less: that request's token)
        except RpcError as err:
            self._refused(client_id, msg, err)
            return
        self.janitor.admit(client_id)
        self.janitor.seen(client_id)
        session = self.server.sessions.get(client_id) if sessionless else None
        if session is None or not session.modern:  # (a session-less client keeps its listens)
            session = self.server.open_session(client_id, self._sender(client_id), admission=admission)
        elif client_id in transport.clients:
            return await self._handled(session, msg, incoming)  # topics already served
        try:
            await transport.serve_client(client_id)  # subscribe BEFORE answering (spec)
        except Exception as exc:
            log.error("cannot serve client %s: %s", client_id, exc)
            self.server.close_session(client_id)
            return
        if self.server.sessions.get(client_id) is not session:
            return  # the client left (or re-initialized) while we subscribed
        info = (msg.get("params") or {}).get("clientInfo")
        if sessionless:
            info = ((msg.get("params") or {}).get("_meta") or {}).get(modern.CLIENT_INFO_META)
        log.info("client %s %s (%r)", client_id, "session-less, " + msg["method"] if sessionless else "initializing",
                 info.get("name", "?") if isinstance(info, dict) else "?")
        return await self._handled(session, msg, incoming)

    def _refused(self, client_id: str, msg: dict[str, Any], err: RpcError) -> None:
        """An ``initialize`` refused by :meth:`McpServer.admit` (bad or missing token, another
        subject's live session): answered with the error, except when a live session holds
        this client id (a spoofed re-initialize): then dropped, so its owner sees nothing."""
        assert self.transport is not None
        self.refused += 1
        log.warning("initialize from client %s refused: %s", client_id[:64], err.message[:200])
        if client_id not in self.server.sessions:
            self.transport.send_rpc(client_id, jsonrpc.error(msg.get("id"), err))

    def on_rpc(self, client_id: str, payload: bytes, incoming: Incoming | None = None) -> None:
        incoming = incoming or Incoming()
        if not self._rpc(client_id, payload, incoming):
            self._ack_after(incoming)

    def _rpc(self, client_id: str, payload: bytes, incoming: Incoming) -> bool:
        """on_rpc; True if a task was started that acknowledges the message when handled."""
        session = self.server.sessions.get(client_id)
        if session is None:
            return self._unknown_client(client_id, payload, incoming)
        msg = self._decode(client_id, payload, incoming)
        if msg is None:
            return False
        self.janitor.seen(client_id)
        if binding.is_disconnected(msg):
            self.on_client_gone(client_id)
            return False
        if self.janitor.is_probe_answer(msg):
            return False
        bound = self.server.max_inflight
        if bound is not None and "id" in msg and "method" in msg:
            # the per-client in-flight bound, at the door: a flood is refused here, at once,
            # without a task per request (MCP clients see -32004 and retry after an answer). An
            # answer still queued for the broker counts as in flight: a client that sends faster
            # than its answers drain is refused, not queued in our heap; that refusal goes at
            # QoS 0, so it neither waits behind nor adds to the backlog (issue 13 item 4)
            assert self.transport is not None
            queued = self.transport.backlog(client_id)
            in_flight = self._pending.get(client_id, 0) + queued
            # many at once: a broker queue of its own, and on it a bound of busy_lane_after
            bound = self.transport.crowded(client_id, in_flight, bound)
            if in_flight >= bound:
                self._refusals += 1
                self.transport.send_rpc(client_id, jsonrpc.error(msg["id"], RpcError(
                    TOO_MANY_REQUESTS, f"Too many requests in flight ({bound}) from this client: retry after an answer")),
                    qos=0 if queued else None)
                return False
        work = self.server.handle(session, msg, deadline=incoming.deadline) if incoming.ack is None \
            else self._then_ack(self._handled(session, msg, incoming), incoming)
        self._pending[client_id] = self._pending.get(client_id, 0) + 1
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._finished, client_id))
        return incoming.ack is not None

    def _finished(self, client_id: str, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        n = self._pending.get(client_id, 0) - 1
        if n > 0:
            self._pending[client_id] = n
        else:
            self._pending.pop(client_id, None)

    # ---------------------------------------------------------------- acknowledging when handled
    async def _handled(self, session: Session, msg: dict[str, Any], incoming: Incoming) -> bool:
        """``server.handle``; with ``ack_when_handled``, also wait until the request (or the
        copy of it that is in flight) is answered and, for an answer the durable reply cache
        keeps, until the broker acknowledged that answer. False: it did not (the link died):
        the request is then not acknowledged (the broker sends it again after the reconnect)."""
        await self.server.handle(session, msg, deadline=incoming.deadline)
        if incoming.ack is None or "method" not in msg or "id" not in msg:
            return True
        entry = session.inflight.get(msg["id"])
        if entry is not None:
            await asyncio.wait([entry[0]])
        acked = self._answer_acks.pop((session.id, json.dumps(msg["id"])), None)
        if acked is None:
            return True
        assert self.transport is not None
        done, _ = await asyncio.wait([acked], timeout=2.0 * self.transport.settings.keepalive + 1.0)
        return bool(done)

    async def _then_ack(self, work: Any, incoming: Incoming) -> None:
        ok = True
        try:
            ok = (await work) is not False
        finally:
            if ok:
                self._ack_after(incoming)

    def _ack_after(self, incoming: Incoming) -> None:
        """Send the message's PUBACK (``ack_when_handled``) once what its handling queued for
        the store (its answer in the outbox, its reply in the durable reply cache, the session)
        is committed: a crash before that makes the broker send the message again."""
        ack = incoming.ack
        if ack is None:
            return
        if self.store is None:
            ack()
            return
        loop = asyncio.get_running_loop()
        self.store.after_write(lambda: loop.call_soon_threadsafe(ack))

    def _unknown_client(self, client_id: str, payload: bytes, incoming: Incoming) -> bool:
        """A message on an RPC topic of a client without a session (e.g. after the agent
        restarted without persistent sessions): requests get -32600 so the client knows to
        initialize again."""
        try:
            msg = codec.decode(payload, incoming.content_type)
        except ValueError:
            return False
        assert self.transport is not None
        if modern.is_modern_request(msg) and client_id in self.transport.clients:
            # a session-less client needs no session to be served: its topics are (still) ours
            try:  # its own token (params._meta) decides, as for an initialize
                admission = self.server.admit(client_id, msg.get("params"))
            except RpcError as err:
                self._refused(client_id, msg, err)
                return False
            self.janitor.admit(client_id)
            self.janitor.seen(client_id)
            session = self.server.open_session(client_id, self._sender(client_id), admission=admission)
            self._spawn(self._then_ack(self._handled(session, msg, incoming), incoming))
            return True
        refusal = binding.no_session(msg)
        if refusal is not None:
            assert self.transport is not None
            self.transport.send_rpc(client_id, refusal)
        return False

    def on_client_gone(self, client_id: str) -> None:
        """The client left (disconnected notification, will, or empty presence): unsubscribe its
        topics and drop its session."""
        if self.server.close_session(client_id):
            log.info("client %s left", client_id)
        self.janitor.forget(client_id)
        if self.transport is not None:
            self.transport.drop_client(client_id, notify=False)

    def _reaped(self, client_id: str, reason: str) -> None:
        """The janitor or the session bound ends a session: the client is told (if it is still
        there), its topics are unsubscribed, the stored copy is deleted."""
        self.janitor.forget(client_id)
        self.drop(client_id)

    def drop(self, client_id: str) -> None:
        """Server-initiated de-initialize: tell the client, unsubscribe, drop the session."""
        self.server.close_session(client_id)
        if self.transport is not None:
            self.transport.drop_client(client_id, notify=True)

    async def start(self, timeout: float | None = 30.0) -> None:
        assert self.transport is not None
        self.restore_sessions()
        if self.journal is not None:
            self.journal.load()
        self._spawn(self.janitor.run())
        await self.transport.start(timeout)

    async def stop(self) -> None:
        """Clean stop. Without persistent sessions clients are told ``notifications/disconnected``
        and their sessions end; with them, sessions stay in the store for the next start."""
        assert self.transport is not None
        await self.server.end_listens()  # 2026-07-28 subscriptions/listen: a graceful close each
        await self.transport.stop(notify_clients=not self.persist)
        self.server.end_all(forget=not self.persist)
        for task in list(self._tasks):
            task.cancel()
