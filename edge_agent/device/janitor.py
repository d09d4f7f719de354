"""Departed clients are gone for good: a bounded session table, and a janitor for sessions
whose client left without the device noticing.

A client's departure normally arrives as ``notifications/disconnected`` (on its RPC topic or
its presence topic) or as its will (the same notification, published by the broker), and the
endpoint closes the session at once. Three ways it can still be missed:

- the will fired before the device had subscribed to the client's presence topic (the client
  left in the middle of ``initialize``), or while the device itself was offline (presence is
  not retained: a missed will is never seen again);
- the client crashed while the broker crashed too (no will at all);
- a session restored from the store (``persist_sessions``) whose client left while the agent
  was down.

The janitor catches them (every ``interval`` s, on the event loop):

- a session that has not finished ``initialize`` (no ``notifications/initialized``) within
  ``init_grace`` s is closed;
- a session with no traffic from its client for ``probe_idle`` s gets a JSON-RPC ``ping``
  request on its RPC topic (MCP ``basic/utilities/ping``: a client MUST answer it); any message
  from the client counts as an answer; a session whose client stays silent ``probe_timeout`` s
  more is closed (its client presence is gone). With ``persist_sessions`` the probe timeout is
  the link profile's (``unreliable``: one hour), since a client with a persistent MQTT session
  may be away for a while and its ping then waits in the broker.

The session table is bounded (``max_sessions``): a new session beyond it evicts the least
recently used session, those without an authenticated subject (``Session.subject`` None)
first. Every close of the janitor and every eviction is counted (``device://link``:
``sessions.reaped``, ``sessions.evicted``) and logged (at most one WARNING a minute, with the
count since).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger(__name__)

PROBE_ID_PREFIX = "edge-agent-probe-"
"""The ids of the janitor's ``ping`` requests (strings: never confused with a client's ids)."""

LOG_INTERVAL = 60.0


@dataclass
class SessionCounters:
    """``device://link`` ``sessions``: closed by the janitor (``reaped``, by reason) and evicted
    by the bound (``evicted``)."""

    reaped: dict[str, int] = field(default_factory=dict)
    evicted: int = 0
    probes: int = 0

    def as_dict(self, *, live: int, bound: int) -> dict[str, Any]:
        return {"live": live, "max": bound, "evicted": self.evicted, "reaped": dict(self.reaped),
                "probes": self.probes}


class SessionJanitor:
    """Bounds and sweeps the sessions of one endpoint.

    ``sessions()``: the live sessions (client id -> session); ``close(client_id, reason)``: end a
    session (unsubscribe, forget, delete the stored copy); ``send(client_id, message)``: publish
    on the client's RPC topic. Times in seconds (monotonic). See the module docstring.
    """

    def __init__(self, *, sessions: Callable[[], dict[str, Any]], close: Callable[[str, str], None],
                 send: Callable[[str, dict[str, Any]], None], max_sessions: int = 1000, interval: float = 30.0,
                 init_grace: float = 60.0, probe_idle: float = 300.0, probe_timeout: float = 30.0):
        self.sessions, self.close, self.send = sessions, close, send
        self.max_sessions = max(1, max_sessions)
        self.interval, self.init_grace = interval, init_grace
        self.probe_idle, self.probe_timeout = probe_idle, probe_timeout
        self.counters = SessionCounters()
        self.last_seen: dict[str, float] = {}  # client id -> monotonic time of its last message
        self.probed: dict[str, float] = {}  # client id -> when the unanswered ping went out
        self._ids = itertools.count(1)
        self._logged: tuple[float, int] | None = None  # (monotonic, evicted + reaped) at the last warning

    # ------------------------------------------------------------------ activity
    def seen(self, client_id: str) -> None:
        """The client sent something: it is there (and its probe, if any, is answered)."""
        self.last_seen[client_id] = time.monotonic()
        self.probed.pop(client_id, None)

    def forget(self, client_id: str) -> None:
        self.last_seen.pop(client_id, None)
        self.probed.pop(client_id, None)

    @staticmethod
    def is_probe_answer(msg: dict[str, Any]) -> bool:
        """A response to one of our pings (to be swallowed: the server sends no other requests)."""
        return "method" not in msg and str(msg.get("id", "")).startswith(PROBE_ID_PREFIX)

    # ------------------------------------------------------------------ the bound
    def admit(self, client_id: str) -> None:
        """Make room for ``client_id``'s new session: evict until one more fits."""
        live = self.sessions()
        while len(live) >= self.max_sessions and client_id not in live:
            victim = self._victim(live)
            if victim is None:
                return
            self.counters.evicted += 1
            self._warn(f"session of client {victim} evicted: {self.max_sessions} sessions is the bound "
                       f"(link max_sessions)")
            self.close(victim, "evicted")
            live = self.sessions()

    def _victim(self, live: dict[str, Any]) -> str | None:
        """The least recently used session, unauthenticated ones (``subject`` None) first."""
        best: tuple[bool, float] | None = None
        victim = None
        for cid, session in live.items():
            key = (getattr(session, "subject", None) is not None, self.last_seen.get(cid, 0.0))
            if best is None or key < best:
                best, victim = key, cid
        return victim

    # ------------------------------------------------------------------ the sweep
    async def run(self) -> None:
        """Sweep every ``interval`` s until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.sweep()
            except Exception:  # the janitor must outlive a bug
                log.exception("session janitor sweep failed")

    def sweep(self, now: float | None = None) -> None:
        """One pass (see the module docstring)."""
        now = time.monotonic() if now is None else now
        for cid, session in list(self.sessions().items()):
            seen = self.last_seen.setdefault(cid, now)
            if session.state != "ready" and now - seen > self.init_grace:
                self._reap(cid, "never_initialized")
                continue
            probed = self.probed.get(cid)
            if probed is not None:
                if now - probed > self.probe_timeout:
                    self._reap(cid, "presence_gone")
                continue
            if now - seen > self.probe_idle:
                self.probed[cid] = now
                self.counters.probes += 1
                self.send(cid, {"jsonrpc": "2.0", "id": f"{PROBE_ID_PREFIX}{next(self._ids)}", "method": "ping"})
        for cid in [c for c in self.last_seen if c not in self.sessions()]:
            self.forget(cid)

    def _reap(self, client_id: str, reason: str) -> None:
        self.counters.reaped[reason] = self.counters.reaped.get(reason, 0) + 1
        self._warn(f"session of client {client_id} closed: {reason.replace('_', ' ')}")
        self.close(client_id, reason)

    def _warn(self, text: str) -> None:
        total = self.counters.evicted + sum(self.counters.reaped.values())
        now = time.monotonic()
        if self._logged is None or now - self._logged[0] >= LOG_INTERVAL:
            since = total - 1 - (self._logged[1] if self._logged else 0)
            log.warning("%s%s", text, f" ({since} more since the last such line)" if since > 0 else "")
            self._logged = (now, total)
        else:
            log.debug("%s", text)
