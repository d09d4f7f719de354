"""The durable reply cache: a non-read-only ``tools/call`` is never executed twice.

Keyed by (mcp-client-id, request id), kept in memory (for the lookup on every request) and in
the state store's ``replies`` table (so it survives an agent crash), bounded by ``max_entries``
and by ``ttl`` seconds (longer than any client's retry window: the link profile's
``reply_ttl``, a day under ``unreliable``).

What it records, for tools whose annotations do not say ``readOnlyHint: true``:

- the reply, when the call is answered, with the ``EDGE-AGENT-SEQ`` it went out with; a
  request that comes again with the same id and the same content (a QoS 1 redelivery after the
  agent crashed before its PUBACK, or a client's retry) gets that reply again, under the same
  sequence number (a client that deduplicates by it sees one answer), instead of a second
  execution;
- for tools that are not idempotent (``idempotentHint`` not true: a toggle, a pulse, a dose),
  a *started* mark, committed to disk before the handler runs. A request whose mark survived a
  crash without a reply was interrupted while it ran: it may or may not have taken effect, so
  it is not executed again; it is answered with a tool error saying so (and that answer is
  recorded like any other). An idempotent tool (a relay ``on``, a servo angle) is simply
  executed again: the same command twice leaves the actuator where once would.

The same id with different content is a new request (the client reused an id): executed, and
its reply replaces the old one.

On disk (the store's ``reply_log``): one row per entry, appended under a growing row number
(lookups are in memory), holding the reply without its ``jsonrpc`` and ``id`` members (put
back when read); entries evicted by the bound are deleted :data:`PRUNE_BATCH` at a time, with
a commit that happens anyway. What an SD card pays per kept answer is one commit of about one
1 KiB page. Spec: MCP 2025-11-25 ``server/tools`` (tool annotations);
JSON-RPC 2.0 (a request id is unique per client while the request is outstanding).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import OrderedDict
from typing import Any

from edge_agent.core.results import tool_error
from edge_agent.device.store import Store

log = logging.getLogger(__name__)

INTERRUPTED = ("{tool} was interrupted by an agent restart while it ran: it may or may not have taken effect, "
               "and it was not executed again (check the device's state, then send a new request if still wanted)")


PRUNE_BATCH = 64
"""Evicted entries whose rows are deleted together (one batch touches a few leaves once instead
of one leaf per commit), at most; a sixteenth of ``max_entries`` if that is less. A crash may
leave that many extra rows, dropped at the next load."""


def _fingerprint(msg: dict[str, Any]) -> str:
    """A short digest of a request's method and params (what makes a repeat the same request)."""
    try:
        text = json.dumps([msg.get("method"), msg.get("params")], sort_keys=True, default=str,
                          separators=(",", ":"))
    except (TypeError, ValueError):  # CBOR maps may have non-string keys
        text = repr([msg.get("method"), msg.get("params")])
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def _key(request_id: Any) -> str:
    return json.dumps(request_id)  # 1 and "1" are different ids


class ReplyJournal:
    """The durable reply cache of one device (see the module docstring).

    ``tools``: tool name -> annotations dict, looked up at record time (a callable, so tools
    added later are covered). ``store``: the SQLite store (None: memory only)."""

    def __init__(self, store: Store | None, tools: Any, *, max_entries: int = 10000, ttl: float = 86400.0,
                 resend: Any = None):
        self.store = store
        self.tools = tools
        # resend(client_id, reply, seq): publish an answer again under seq (None: as a new answer,
        # through the session's sender); returns the seq it went out with, or None
        self.resend = resend
        self.max_entries = max(1, max_entries)
        self.ttl = ttl
        # (client id, request id key) -> (fingerprint, reply or None, created, interrupted, seq,
        # row number in the store or None)
        self.entries: OrderedDict[tuple[str, str],
                                  tuple[str, dict[str, Any] | None, float, bool, int | None, int | None]] = OrderedDict()
        self._evicted: list[int] = []  # rows of evicted entries, deleted PRUNE_BATCH at a time
        self.replayed = 0  # answers given again from here
        self.interrupted = 0  # requests refused because a crash interrupted them

    def load(self) -> int:
        """Read the stored entries (at start); expired ones are deleted. Returns how many were kept."""
        if self.store is None:
            return 0
        cutoff = time.time() - self.ttl
        for client_id, request_id, fingerprint, reply, created, seq, n in self.store.replies():
            try:
                decoded = _unpack(reply, request_id) if reply is not None else None
            except ValueError:
                decoded = None
                created = cutoff - 1
            key = (client_id, request_id)
            old = self.entries.pop(key, None)
            if old is not None and old[5] is not None:
                self.store.reply_delete(old[5])
            if created < cutoff:
                self.store.reply_delete(n)
                continue
            self.entries[key] = (fingerprint, decoded, created, decoded is None, seq, n)
        while len(self.entries) > self.max_entries:
            row = self.entries.popitem(last=False)[1][5]
            if row is not None:
                self.store.reply_delete(row)
        if self.entries:
            log.info("reply cache: %d answer(s) of earlier runs kept", len(self.entries))
        return len(self.entries)

    def _annotations(self, msg: dict[str, Any]) -> dict[str, Any] | None:
        """The annotations of the tool ``msg`` calls, or None if it is not journaled (not a
        tools/call, an unknown tool, a read-only tool)."""
        if msg.get("method") != "tools/call":
            return None
        params = msg.get("params")
        name = params.get("name") if isinstance(params, dict) else None
        tool = self.tools().get(name) if isinstance(name, str) else None
        if tool is None:
            return None
        annotations = tool.annotations or {}
        return None if annotations.get("readOnlyHint") else annotations

    # ------------------------------------------------------------------ the hooks
    def replay(self, client_id: str, msg: dict[str, Any]) -> bool:
        """Answer ``msg`` (a request not in flight) again from here: True if it was (then it
        must not be executed)."""
        entry = self.entries.get((client_id, _key(msg["id"])))
        if entry is None or self.resend is None:
            return False
        fingerprint, reply, created, interrupted, seq, _ = entry
        if fingerprint != _fingerprint(msg) or time.time() - created > self.ttl:
            return False
        if reply is None:
            if not interrupted:
                return False  # started in this run and never answered (cancelled): a new attempt
            name = (msg.get("params") or {}).get("name", "the tool")
            reply = {"jsonrpc": "2.0", "id": msg["id"], "result": tool_error(INTERRUPTED.format(tool=name))}
            self.interrupted += 1
            log.warning("request %r of %s (%s) was interrupted by a restart: refused, not executed again",
                        msg["id"], client_id, name)
            self._put(client_id, msg, reply, None)
            seq = self.resend(client_id, reply, None)  # (the device's sender records it as sent)
            if seq is not None:
                self.sent(client_id, reply, seq)
            return True
        self.replayed += 1
        log.info("request %r of %s answered again from the durable reply cache", msg["id"], client_id)
        self.resend(client_id, reply, seq)
        return True

    async def begin(self, client_id: str, msg: dict[str, Any]) -> None:
        """Before a non-idempotent, non-read-only tool runs: its started mark, on disk."""
        annotations = self._annotations(msg)
        if annotations is None or annotations.get("idempotentHint"):
            return
        self._put(client_id, msg, None, None)
        self._write(client_id, msg["id"])
        if self.store is not None:
            loop = asyncio.get_running_loop()
            done = loop.create_future()
            self.store.after_write(lambda: loop.call_soon_threadsafe(set_done, done), urgent=True)
            await done

    def record(self, client_id: str, msg: dict[str, Any], reply: dict[str, Any]) -> None:
        """``msg`` is answered with ``reply`` (about to be sent): keep it in memory; it is
        written with its sequence number by :meth:`sent`."""
        if self._annotations(msg) is not None:
            self._put(client_id, msg, reply, None)

    def keeps(self, client_id: str, reply: dict[str, Any]) -> bool:
        """True if ``reply`` is an answer recorded here (about to be sent)."""
        entry = self.entries.get((client_id, _key(reply.get("id"))))
        return entry is not None and entry[1] is reply

    def sent(self, client_id: str, reply: dict[str, Any], seq: int | None) -> None:
        """``reply`` went out as ``EDGE-AGENT-SEQ`` ``seq``: if it is a recorded answer, write it
        (queued for the next group commit; the request's PUBACK waits for that commit)."""
        key = (client_id, _key(reply.get("id")))
        entry = self.entries.get(key)
        if entry is None or entry[1] is not reply:
            return
        self.entries[key] = entry[:4] + (seq, entry[5])
        self._write(client_id, reply.get("id"))

    def _write(self, client_id: str, request_id: Any) -> None:
        key = (client_id, _key(request_id))
        entry = self.entries.get(key)
        if entry is not None and self.store is not None:
            fingerprint, reply, created, _, seq, n = entry
            text = _pack(reply) if reply is not None else None
            n = self.store.reply_put(key[0], key[1], fingerprint, text, created, seq, n=n)
            self.entries[key] = entry[:5] + (n,)

    def _put(self, client_id: str, msg: dict[str, Any], reply: dict[str, Any] | None, seq: int | None) -> None:
        key = (client_id, _key(msg["id"]))
        now = time.time()
        fingerprint = _fingerprint(msg)
        old = self.entries.pop(key, None)
        # the same request's started mark, or an old request with this id: its row is replaced
        self.entries[key] = (fingerprint, reply, now, False, seq, old[5] if old is not None else None)
        cutoff = now - self.ttl
        while self.entries:
            oldest_key, oldest = next(iter(self.entries.items()))
            if len(self.entries) <= self.max_entries and oldest[2] >= cutoff:
                break
            del self.entries[oldest_key]
            if oldest[5] is not None:
                self._evicted.append(oldest[5])
        if self.store is not None and len(self._evicted) >= min(PRUNE_BATCH, max(1, self.max_entries // 16)):
            for n in self._evicted:
                self.store.reply_delete(n)
            self._evicted.clear()


def _pack(reply: dict[str, Any]) -> str:
    """A reply as stored: JSON without ``jsonrpc`` and ``id`` (the row has the id)."""
    return json.dumps({k: v for k, v in reply.items() if k not in ("jsonrpc", "id")}, separators=(",", ":"))


def _unpack(text: str, request_id: str) -> dict[str, Any]:
    """The reply :func:`_pack` stored for ``request_id`` (JSON text of the id). Raises ValueError."""
    body = json.loads(text)
    if not isinstance(body, dict):
        raise ValueError("not a stored reply")
    return {"jsonrpc": "2.0", "id": json.loads(request_id), **{k: v for k, v in body.items() if k not in ("jsonrpc", "id")}}


def set_done(fut: asyncio.Future[None]) -> None:
    """Resolve ``fut`` (on its loop; hand it there with ``call_soon_threadsafe``)."""
    if not fut.done():
        fut.set_result(None)
